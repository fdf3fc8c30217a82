"""models/divergence.py: a non-finite training loss noted on the device without a read, and the
one line that stops a run: the first bad step, its lr and the last good checkpoint; nothing while
the losses are finite."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from imgcls.models.divergence import DivergenceGuard
from imgcls.utils.errors import UserError
from tests.device_waits import DeviceWaitTrace
from tests.helpers import CLI_QUIET, processes_mentioning, run_cli


def trainer_at(lr: float = 0.1, epoch: int = 2, checkpoints: list | None = None):
    """What raise_if_diverged reads of a Trainer."""
    optimizer = SimpleNamespace(param_groups=[{"lr": lr}])
    return SimpleNamespace(
        optimizers=[optimizer],
        current_epoch=epoch,
        checkpoint_callbacks=checkpoints or [],
        world_size=1,
    )


def noted(losses: list[float]) -> DivergenceGuard:
    """A guard that saw `losses` at steps 1, 2, ..."""
    guard = DivergenceGuard()
    for step, loss in enumerate(losses, start=1):
        guard.note(torch.tensor(loss), step)
    return guard


def diverged_line(guard: DivergenceGuard, trainer, lrs=None) -> str:
    with pytest.raises(UserError) as err:
        guard.raise_if_diverged(trainer, lrs)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_finite_losses_say_nothing() -> None:
    assert DivergenceGuard().raise_if_diverged(trainer_at()) is None  # before any step
    guard = noted([2.3, 1.9, 1e30, -4.0, 0.0])  # large, negative, zero: all finite
    assert guard.raise_if_diverged(trainer_at()) is None
    assert int(guard.first_bad_step) == -1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_the_first_bad_step_is_the_one_named(bad: float) -> None:
    guard = noted([2.3, 1.9, bad, float("nan"), 1.0])  # later bad and good steps change nothing
    assert int(guard.first_bad_step) == 3
    message = diverged_line(guard, trainer_at(lr=0.1, epoch=2))
    assert message.startswith(
        "The training loss became NaN or infinite at step 3 (epoch 2, lr 0.1)"
    )


def test_noting_a_loss_reads_nothing_back_from_the_device() -> None:
    losses = [torch.tensor(1.0), torch.tensor(float("nan")), torch.tensor(2.0)]
    guard = DivergenceGuard()
    with DeviceWaitTrace() as trace:
        for step, loss in enumerate(losses, start=1):
            guard.note(loss, step)
    assert not trace.waits, [str(wait) for wait in trace.waits]
    assert int(guard.first_bad_step) == 2


def test_the_lr_is_the_one_at_the_bad_step_where_known() -> None:
    guard = noted([1.0, float("nan")])
    known = diverged_line(guard, trainer_at(lr=0.001), lrs={1: 0.5, 2: 0.25})
    assert "lr 0.25)" in known
    unknown = diverged_line(guard, trainer_at(lr=0.001), lrs={1: 0.5})
    assert "lr 0.001)" in unknown  # the lr now, where that step's was not kept


def test_the_line_names_the_last_good_checkpoint_that_exists(tmp_path: Path) -> None:
    guard = noted([float("inf")])
    kept = tmp_path / "step=40.ckpt"
    kept.touch()
    last = ModelCheckpoint(dirpath=tmp_path)
    last.last_model_path = str(kept)
    message = diverged_line(guard, trainer_at(checkpoints=[last]))
    assert f"The last good checkpoint is {kept}: resume from it" in message
    best_only = ModelCheckpoint(dirpath=tmp_path)
    best_only.best_model_path = str(kept)
    assert str(kept) in diverged_line(guard, trainer_at(checkpoints=[best_only]))
    gone = ModelCheckpoint(dirpath=tmp_path)
    gone.last_model_path = str(tmp_path / "deleted.ckpt")
    for trainer in (trainer_at(), trainer_at(checkpoints=[gone])):
        message = diverged_line(guard, trainer)
        assert "No checkpoint was written before it: lower optimizer.lr" in message
        assert "deleted.ckpt" not in message


@pytest.mark.slow(seconds=20)
def test_one_ranks_infinite_loss_stops_every_rank_at_one_check_with_the_line(
    tmp_path: Path,
) -> None:
    """Under DDP only rank 1's loss is infinite, at step 4 (the last of epoch 0): both ranks
    raise at the same check, the run ends `failed` with the divergence line in status.json and
    on the console, and rank 1's own log has it too (no rank left waiting, no dead-peer error)."""
    args = [
        "trainer=ddp_sim",
        "model=cifar_quick",
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=4",
        "+trainer.limit_val_batches=1",
        "+callbacks.fault._target_=tests.faults.InfiniteLossOnRank",
        "+callbacks.fault.rank=1",
        "+callbacks.fault.step=3",
        f"hydra.run.dir={tmp_path}",
        *CLI_QUIET,
    ]
    result = run_cli("train.py", args)
    out = result.stdout + result.stderr
    line = "The training loss became NaN or infinite at step 4 (epoch 0"
    assert result.returncode == 1, out[-3000:]
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed"
    assert status["error"].startswith(f"UserError: {line}")
    assert line in out
    assert f"[rank 1] UserError: {line}" in (tmp_path / "train_rank1.log").read_text()
    assert "DDP process died" not in out
    assert "Traceback" not in out
    assert not processes_mentioning(tmp_path)
