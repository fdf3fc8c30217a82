"""callbacks/nonfinite.py: a NaN training loss stops the run at the next read of the model's
note (every check_every_n_steps steps, at a step that writes a checkpoint, before validation,
at an epoch's end), before any checkpoint of that step, naming the first bad step and its lr."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from imgcls.callbacks.model_checkpoint import CheckpointWithBestLink
from imgcls.callbacks.nonfinite import NonFiniteLossStop
from imgcls.utils.errors import UserError
from tests.callbacks.tiny import TinyClassifier, loader, tiny_trainer


class Validated(Callback):
    """Counts the validation batches run."""

    def __init__(self) -> None:
        self.batches = 0

    def on_validation_batch_end(self, *args, **kwargs) -> None:
        self.batches += 1


def test_the_run_stops_at_the_next_check_naming_the_first_bad_step() -> None:
    trainer = tiny_trainer(
        callbacks=[NonFiniteLossStop(check_every_n_steps=3)], limit_train_batches=6
    )
    with pytest.raises(UserError, match=r"NaN or infinite at step 2 \(epoch 0, lr 0\.1\)"):
        trainer.fit(TinyClassifier(lr=0.1, nan_from_step=2), loader(12))
    assert trainer.global_step == 3  # the check at step 3, not the end of the epoch
    unchecked = tiny_trainer(limit_train_batches=6)
    unchecked.fit(TinyClassifier(lr=0.1, nan_from_step=2), loader(12))  # nothing stops it
    assert unchecked.global_step == 6


def test_a_step_that_writes_a_checkpoint_is_checked_first(tmp_path: Path) -> None:
    def run(callbacks: list[Callback], folder: Path) -> CheckpointWithBestLink:
        checkpoint = CheckpointWithBestLink(
            dirpath=folder, every_n_train_steps=2, save_last=True, save_top_k=0
        )
        # listed first: Lightning runs the checkpoint callbacks after every other
        trainer = tiny_trainer(
            callbacks=[checkpoint, *callbacks], enable_checkpointing=True, limit_train_batches=6
        )
        trainer.fit(TinyClassifier(nan_from_step=3), loader(12))
        return checkpoint

    with pytest.raises(UserError, match=r"at step 3 .*last good checkpoint is .*last\.ckpt"):
        run([NonFiniteLossStop(check_every_n_steps=50)], tmp_path / "checked")
    saved = torch.load(tmp_path / "checked" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())
    # without it, this model (no guard of its own) writes the diverged weights at step 4
    run([], tmp_path / "unchecked")
    written = torch.load(tmp_path / "unchecked" / "last.ckpt", weights_only=True)["state_dict"]
    assert not torch.isfinite(written["net.5.weight"]).all()


def test_validation_does_not_start_on_diverged_weights(tmp_path: Path) -> None:
    validated = Validated()
    checkpoint = CheckpointWithBestLink(dirpath=tmp_path, monitor="val/acc", save_last=True)
    trainer = tiny_trainer(
        callbacks=[NonFiniteLossStop(check_every_n_steps=50), checkpoint, validated],
        enable_checkpointing=True,
        limit_val_batches=1,
    )
    model = TinyClassifier(nan_from_step=2, val_scores=[0.5])
    with pytest.raises(UserError, match=r"at step 2 .*No checkpoint was written before it"):
        trainer.fit(model, loader(), loader())
    assert validated.batches == 0
    assert not list(tmp_path.iterdir())


def test_the_end_of_an_epoch_is_checked() -> None:
    trainer = tiny_trainer(callbacks=[NonFiniteLossStop(check_every_n_steps=50)], max_epochs=3)
    with pytest.raises(UserError, match=r"at step 2 \(epoch 0,"):
        trainer.fit(TinyClassifier(nan_from_step=2), loader())
    assert trainer.global_step == 2  # the next epoch never started


@pytest.mark.parametrize(
    ("interval", "batches", "used"),
    [("step", 6, "0.1"), ("epoch", 2, "1")],
    ids=["per-step schedule", "per-epoch schedule, last step of the epoch"],
)
def test_the_lr_named_is_the_one_the_bad_step_used(interval: str, batches: int, used: str) -> None:
    model = TinyClassifier(lr=1.0, schedule=lambda k: 10.0**-k, interval=interval, nan_from_step=2)
    trainer = tiny_trainer(
        callbacks=[NonFiniteLossStop(check_every_n_steps=3)],
        limit_train_batches=batches,
        max_epochs=3,
    )
    with pytest.raises(UserError, match=rf"at step 2 \(epoch 0, lr {used}\)"):
        trainer.fit(model, loader(12))
