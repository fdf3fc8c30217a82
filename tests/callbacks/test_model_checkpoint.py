"""callbacks/model_checkpoint.py: best.ckpt a relative link to the best epoch's checkpoint (a
copy where links are not allowed), last.ckpt refreshed at every epoch's end, every validation's
and every `every_n_train_steps` optimizer steps, written once a step."""

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from imgcls.callbacks.model_checkpoint import CheckpointWithBestLink
from tests.callbacks.tiny import TinyClassifier, loader, tiny_trainer

SETTINGS = {
    "filename": "epoch_{epoch:03d}",
    "monitor": "val/acc",
    "mode": "max",
    "save_top_k": 1,
    "save_last": True,
    "auto_insert_metric_name": False,
}


def fit(
    checkpoint: ModelCheckpoint, scores: list[float], batches: int = 2, **trainer_kwargs: Any
) -> list[tuple[str, int]]:
    """Train len(scores) epochs of `batches` steps, epoch e validating to scores[e]: the
    checkpoints written, as (file name, global step), in order."""
    trainer = tiny_trainer(
        callbacks=[checkpoint],
        enable_checkpointing=True,
        max_epochs=len(scores),
        limit_train_batches=batches,
        limit_val_batches=1,
        **trainer_kwargs,
    )
    written = []
    save = trainer.save_checkpoint

    def recorded(path, *args, **kwargs):
        written.append((Path(path).name, trainer.global_step))
        return save(path, *args, **kwargs)

    trainer.save_checkpoint = recorded
    trainer.fit(TinyClassifier(val_scores=scores), loader(2 * batches), loader())
    return written


def step_of(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


def test_best_is_a_relative_link_and_last_is_the_last_epochs(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "checkpoints"
    fit(CheckpointWithBestLink(dirpath=folder, **SETTINGS), scores=[0.5, 0.9, 0.7])
    assert {p.name for p in folder.iterdir()} == {"epoch_001.ckpt", "best.ckpt", "last.ckpt"}
    assert os.readlink(folder / "best.ckpt") == "epoch_001.ckpt"
    assert step_of(folder / "best.ckpt") == 4
    assert step_of(folder / "last.ckpt") == 6  # epoch 2 was no new best: still refreshed
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "run", moved)  # a run dir moved elsewhere keeps a working link
    folder = moved / "checkpoints"
    assert (folder / "best.ckpt").resolve() == folder / "epoch_001.ckpt"


def test_lightnings_own_leaves_last_at_the_last_new_best(tmp_path: Path) -> None:
    """Why the class writes last.ckpt itself: the same run with Lightning's alone."""
    fit(ModelCheckpoint(dirpath=tmp_path, **SETTINGS), scores=[0.5, 0.9, 0.7])
    assert step_of(tmp_path / "last.ckpt") == 4


def test_without_links_best_is_a_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(self, target, target_is_directory=False):
        raise OSError("symbolic links are not allowed here")

    monkeypatch.setattr(Path, "symlink_to", refused)
    fit(CheckpointWithBestLink(dirpath=tmp_path, **SETTINGS), scores=[0.9, 0.5])
    best = tmp_path / "best.ckpt"
    assert not best.is_symlink()
    assert best.read_bytes() == (tmp_path / "epoch_000.ckpt").read_bytes()
    assert {p.name for p in tmp_path.iterdir()} == {"epoch_000.ckpt", "best.ckpt", "last.ckpt"}


def test_every_n_train_steps_refreshes_last_between_epochs(tmp_path: Path) -> None:
    checkpoint = CheckpointWithBestLink(dirpath=tmp_path, every_n_train_steps=2, **SETTINGS)
    written = fit(checkpoint, scores=[0.5, 0.9], batches=5)
    # steps 2 and 4, the end of epoch 0 at step 5, then 6, 8 and the end of epoch 1 at 10 (once:
    # not at its batch's end, then again after the epoch's new best)
    assert [step for name, step in written if name == "last.ckpt"] == [2, 4, 5, 6, 8, 10]
    assert [step for name, step in written if name.startswith("epoch_")] == [5, 10]
    assert step_of(tmp_path / "last.ckpt") == 10
    assert os.readlink(tmp_path / "best.ckpt") == "epoch_001.ckpt"


def test_each_step_writes_last_once(tmp_path: Path) -> None:
    """Epoch 1's new best is saved at the training epoch's end: last.ckpt is written once, after
    it (written at validation's end as well, it was a whole checkpoint twice, the first naming the
    previous best)."""
    written = fit(CheckpointWithBestLink(dirpath=tmp_path, **SETTINGS), scores=[0.5, 0.9])
    assert [step for name, step in written if name == "last.ckpt"] == [2, 4]
    (state,) = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"].values()
    assert Path(state["best_model_path"]).name == "epoch_001.ckpt"  # what a resume keeps


def test_without_top_k_last_is_written_once_at_the_fits_end(tmp_path: Path) -> None:
    """Lightning's on_train_end writes last.ckpt where none of its own saves did."""
    checkpoint = CheckpointWithBestLink(dirpath=tmp_path, save_last=True, save_top_k=0)
    written = fit(checkpoint, scores=[0.5, 0.9])
    assert written == [("last.ckpt", 2), ("last.ckpt", 4)]


def test_a_validation_within_the_epoch_refreshes_last_at_its_end(tmp_path: Path) -> None:
    # validation after batches 2 and 4 of each epoch; only the first (step 2) a new best
    written = fit(
        CheckpointWithBestLink(dirpath=tmp_path, **SETTINGS),
        scores=[0.5, 0.4],
        batches=4,
        val_check_interval=2,
    )
    assert [step for name, step in written if name == "last.ckpt"] == [2, 4, 6, 8]
    assert [name for name, _ in written if name != "last.ckpt"] == ["epoch_000.ckpt"]
    assert step_of(tmp_path / "last.ckpt") == 8


def test_a_step_save_due_at_a_validation_waits_for_its_end(tmp_path: Path) -> None:
    """every_n_train_steps on the validation interval: last.ckpt is written after that
    validation, not before it (a resume from the earlier copy would skip the validation)."""
    checkpoint = CheckpointWithBestLink(dirpath=tmp_path, every_n_train_steps=2, **SETTINGS)
    validating = []

    class Stage(Callback):
        def on_validation_end(self, trainer, pl_module) -> None:
            validating.append(trainer.global_step)

    trainer = tiny_trainer(
        callbacks=[Stage(), checkpoint],
        enable_checkpointing=True,
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=1,
        val_check_interval=2,
    )
    saved_after_validation = []
    save = trainer.save_checkpoint

    def recorded(path, *args, **kwargs):
        if Path(path).name == "last.ckpt":
            saved_after_validation.append(trainer.global_step in validating)
        return save(path, *args, **kwargs)

    trainer.save_checkpoint = recorded
    trainer.fit(TinyClassifier(val_scores=[0.5, 0.4]), loader(8), loader())
    assert saved_after_validation == [True] * 4  # steps 2, 4, 6, 8: each after its validation
