"""callbacks/swa.py: the averaged weights are the run's result (swa.ckpt, best.ckpt, its test)."""

from pathlib import Path

import pytest
import torch

from imgcls.train import build_components, fit_and_test, train
from imgcls.utils.errors import UserError
from tests.models.test_pretrained import Snapshots

SWA = [
    "model=cifar_quick",  # no BatchNorm: no extra pass
    "callbacks=[default,swa]",
    "callbacks.swa.swa_lrs=0.01",
    "callbacks.swa.swa_epoch_start=2",
    "callbacks.swa.annealing_epochs=1",
    "trainer.max_epochs=4",
    "+trainer.limit_train_batches=3",
]


def test_the_averaged_weights_are_saved_linked_as_best_and_tested(make_cfg, tmp_path: Path) -> None:
    objects = build_components(make_cfg(*SWA))
    snapshots = Snapshots()
    objects["trainer"].callbacks.append(snapshots)
    metrics, _ = fit_and_test(make_cfg(*SWA), objects)
    # swa_epoch_start=2 is the 2nd epoch (1-based): the weights the 2nd, 3rd and 4th epochs
    # start from, each epoch's end before them, are averaged
    states = snapshots.states
    expected = {k: (states[0][k] + states[1][k] + states[2][k]) / 3 for k in states[0]}
    folder = tmp_path / "run" / "checkpoints"
    saved = torch.load(folder / "swa.ckpt", weights_only=True)["state_dict"]
    for name, value in expected.items():
        torch.testing.assert_close(saved[f"net.{name}"], value)
    assert (folder / "best.ckpt").resolve() == (folder / "swa.ckpt").resolve()
    assert not torch.equal(saved["net.13.weight"], states[3]["13.weight"])
    assert 0 <= metrics["test/acc"] <= 1


def test_swa_and_ema_together_are_refused(make_cfg) -> None:
    with pytest.raises(UserError, match="keep one"):
        train(make_cfg("callbacks=[default,swa,ema]", "trainer.max_epochs=1"))


def test_a_run_stopped_before_the_last_swa_epoch_keeps_its_best(make_cfg, tmp_path: Path) -> None:
    train(make_cfg(*SWA, "+trainer.max_steps=7"))  # stops in the 3rd of 4 epochs
    folder = tmp_path / "run" / "checkpoints"
    assert not (folder / "swa.ckpt").exists()
    assert (folder / "best.ckpt").resolve().name.startswith("epoch_")
