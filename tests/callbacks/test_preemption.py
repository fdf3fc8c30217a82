"""callbacks/preemption.py, in-process: SIGTERM and the configured signals only mark the
process; the next training step stops with Lightning's SIGTERMException and last.ckpt is saved at
that step; Lightning's per-step broadcast of rank 0's flag is switched off. No signal is sent
here: the handlers installed are called as the signal would call them (tests/test_faults.py and
tests/test_multinode.py send real ones to training processes)."""

import signal
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from imgcls.callbacks.model_checkpoint import CheckpointWithBestLink
from imgcls.callbacks.preemption import PreemptionCheckpoint
from tests.callbacks.tiny import TinyClassifier, loader, tiny_trainer

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def previous_handler(signum, frame) -> None:
    """What the process had installed before a run (the test's own, so it is recognizable)."""


@pytest.fixture(autouse=True)
def handlers() -> None:
    """This process's handlers of the signals, put back after each test whatever a run left."""
    saved = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, previous_handler)
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


class SignalledAt(Callback):
    """During training step `step` (at its batch's start), call the handler installed for
    `signum`, as the signal arriving then would."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step + 1 == self.step:
            signal.getsignal(self.signum)(self.signum, None)


class FetchCount(Callback):
    """How many training batches were handed to the loop (a batch fetched is a batch a
    resumable loader has given out)."""

    def __init__(self) -> None:
        self.fetched = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.fetched += 1


def checkpoint(folder: Path) -> CheckpointWithBestLink:
    return CheckpointWithBestLink(dirpath=folder, save_last=True, save_top_k=0)


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_stops_at_the_end_of_its_step_and_saves_last_there(
    tmp_path: Path, signum: int
) -> None:
    """Stopped at the batch's end, no batch after it fetched: a resumed loader continues at the
    next one (stopping at the next batch's start lost the batch fetched for it)."""
    preemption, fetches = PreemptionCheckpoint(signals=["SIGUSR1"]), FetchCount()
    model = TinyClassifier()
    trainer = tiny_trainer(
        callbacks=[preemption, SignalledAt(2, signum), fetches, checkpoint(tmp_path)],
        enable_checkpointing=True,
        limit_train_batches=5,
    )
    with pytest.raises(SIGTERMException):
        trainer.fit(model, loader(10))
    assert [step for step, _ in model.losses] == [1, 2]  # step 3 never ran
    assert fetches.fetched == 2
    assert preemption.saved_path == tmp_path / "last.ckpt"
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2
    batches = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]
    assert batches["processed"] == 2  # the loop resumes after the second batch


def test_halfway_through_accumulating_the_stop_waits_for_the_optimizer_step(
    tmp_path: Path,
) -> None:
    preemption, fetches = PreemptionCheckpoint(), FetchCount()
    model = TinyClassifier()
    trainer = tiny_trainer(
        callbacks=[preemption, SignalledAt(1, signal.SIGTERM), fetches, checkpoint(tmp_path)],
        enable_checkpointing=True,
        accumulate_grad_batches=2,
        limit_train_batches=6,
    )
    with pytest.raises(SIGTERMException):
        trainer.fit(model, loader(12))
    assert fetches.fetched == 2  # the first batch's gradients were not thrown away
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 1


def test_the_signals_marked_are_sigterm_and_those_configured() -> None:
    assert set(PreemptionCheckpoint(signals=["SIGUSR1"]).signals) == set(SIGNALS)
    assert PreemptionCheckpoint(signals=["SIGNOPE"]).signals == [signal.SIGTERM]


def test_setup_switches_off_lightnings_per_step_broadcast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broadcasts: list[torch.Tensor] = []
    monkeypatch.setattr(torch.distributed, "broadcast", lambda t, src: broadcasts.append(t))
    lightnings = tiny_trainer()
    lightnings.fit_loop.epoch_loop._broadcast_sigterm_tensor()
    assert len(broadcasts) == 1  # a device tensor read back at every step, in DDP

    preemption, trainer = PreemptionCheckpoint(), tiny_trainer()
    preemption.setup(trainer, TinyClassifier(), "fit")
    trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor()
    assert len(broadcasts) == 1
    assert trainer._signal_connector._sigterm_notifier_fn == preemption._mark
    assert all(signal.getsignal(signum) == preemption._mark for signum in SIGNALS)


def test_outside_fitting_setup_changes_nothing() -> None:
    trainer = tiny_trainer()
    PreemptionCheckpoint().setup(trainer, TinyClassifier(), "test")
    assert "_broadcast_sigterm_tensor" not in vars(trainer.fit_loop.epoch_loop)
    assert "_sigterm_notifier_fn" not in vars(trainer._signal_connector)
    assert all(signal.getsignal(signum) is previous_handler for signum in SIGNALS)


def test_other_exceptions_and_runs_without_checkpoints_save_nothing(tmp_path: Path) -> None:
    class Fails(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == 1:
                raise RuntimeError("not a preemption")

    preemption = PreemptionCheckpoint()
    trainer = tiny_trainer(
        callbacks=[preemption, Fails(), checkpoint(tmp_path)], enable_checkpointing=True
    )
    with pytest.raises(RuntimeError, match="not a preemption"):
        trainer.fit(TinyClassifier(), loader())
    assert preemption.saved_path is None
    assert not (tmp_path / "last.ckpt").exists()

    preemption = PreemptionCheckpoint()
    trainer = tiny_trainer(callbacks=[preemption, SignalledAt(1, signal.SIGTERM)])
    with pytest.raises(SIGTERMException):
        trainer.fit(TinyClassifier(), loader())
    assert preemption.saved_path is None


class SignalledWhileTesting(TinyClassifier):
    """Its first test batch calls the SIGTERM handler installed then, as a SIGTERM would."""

    def test_step(self, batch, batch_idx) -> None:
        if batch_idx == 0:
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)


def test_after_the_fit_the_process_handlers_are_back() -> None:
    model, trainer = TinyClassifier(), tiny_trainer(callbacks=[PreemptionCheckpoint()])
    trainer.fit(model, loader())
    assert all(signal.getsignal(signum) is previous_handler for signum in SIGNALS)


def test_a_sigterm_while_testing_stops_the_test_as_lightning_does() -> None:
    model = SignalledWhileTesting()
    trainer = tiny_trainer(callbacks=[PreemptionCheckpoint()])
    trainer.fit(model, loader())
    with pytest.raises(SIGTERMException):
        trainer.test(model, loader(), verbose=False)


class Ends(Callback):
    """The training epochs ended and the validations run, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        self.events.append(("validated", trainer.global_step))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.events.append(("epoch end", trainer.global_step))


@pytest.mark.parametrize(
    ("settings", "signalled_in", "stopped_at", "events"),
    [
        ({}, 3, 4, [("validated", 3), ("epoch end", 3)]),  # the epoch's last batch
        # a batch before a validation, mid-epoch
        ({"val_check_interval": 2, "limit_train_batches": 4}, 2, 3, [("validated", 2)]),
    ],
    ids=["at an epoch's end", "before a validation"],
)
def test_a_stop_due_before_validation_or_an_epochs_end_waits_for_the_next_batch(
    tmp_path: Path, settings: dict, signalled_in: int, stopped_at: int, events: list
) -> None:
    """Lightning resumes a checkpoint taken at a batch's end as that batch done and skips what
    followed it: the validation and the epoch's end run first, the stop comes after them."""
    preemption, ends = PreemptionCheckpoint(), Ends()
    trainer = tiny_trainer(
        callbacks=[
            preemption,
            SignalledAt(signalled_in, signal.SIGTERM),
            ends,
            checkpoint(tmp_path),
        ],
        enable_checkpointing=True,
        limit_val_batches=1,
        max_epochs=3,
        **({"limit_train_batches": 3} | settings),
    )
    with pytest.raises(SIGTERMException):
        trainer.fit(TinyClassifier(), loader(8), loader(2))
    assert ends.events == events
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == stopped_at


def test_a_signal_in_the_fits_last_step_stops_the_run_before_testing() -> None:
    preemption = PreemptionCheckpoint()
    trainer = tiny_trainer(callbacks=[preemption, SignalledAt(2, signal.SIGTERM)])
    trainer.fit(TinyClassifier(), loader())  # the fit ends: nothing after it to stop
    assert preemption.stopped_after_fit
    quiet = PreemptionCheckpoint()
    tiny_trainer(callbacks=[quiet]).fit(TinyClassifier(), loader())
    assert not quiet.stopped_after_fit


def test_a_save_that_fails_is_kept_for_the_run_and_the_fit_is_torn_down(tmp_path: Path) -> None:
    class Full(TinyClassifier):
        def on_save_checkpoint(self, checkpoint) -> None:
            raise OSError(28, "No space left on device")

    preemption = PreemptionCheckpoint()
    trainer = tiny_trainer(
        callbacks=[preemption, SignalledAt(1, signal.SIGTERM), checkpoint(tmp_path)],
        enable_checkpointing=True,
    )
    with pytest.raises(SIGTERMException):
        trainer.fit(Full(), loader())
    assert isinstance(preemption.save_error, OSError)
    assert preemption.saved_path is None
    assert all(signal.getsignal(signum) is previous_handler for signum in SIGNALS)
