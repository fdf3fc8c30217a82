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
    """At the end of training step `step`, call the handler installed for `signum`, as the
    signal arriving then would."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            signal.getsignal(self.signum)(self.signum, None)


def checkpoint(folder: Path) -> CheckpointWithBestLink:
    return CheckpointWithBestLink(dirpath=folder, save_last=True, save_top_k=0)


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_stops_the_next_step_and_saves_last_at_this_one(
    tmp_path: Path, signum: int
) -> None:
    preemption = PreemptionCheckpoint(signals=["SIGUSR1"])
    model = TinyClassifier()
    trainer = tiny_trainer(
        callbacks=[preemption, SignalledAt(2, signum), checkpoint(tmp_path)],
        enable_checkpointing=True,
        limit_train_batches=5,
    )
    with pytest.raises(SIGTERMException):
        trainer.fit(model, loader(10))
    assert [step for step, _ in model.losses] == [1, 2]  # step 3 never ran
    assert preemption.saved_path == tmp_path / "last.ckpt"
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 2


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


@pytest.mark.xfail(
    reason="bug in src/imgcls/callbacks/preemption.py: setup installs its mark with "
    "signal.signal before Lightning's connector records the handlers to restore, so the mark "
    "stays the process's SIGTERM and SIGUSR1 handler after the fit and after the trainer is "
    "done (a later SIGTERM, e.g. in a sweep's next job or any in-process caller, is swallowed)",
    strict=True,
)
def test_after_the_fit_the_process_handlers_are_back() -> None:
    model, trainer = TinyClassifier(), tiny_trainer(callbacks=[PreemptionCheckpoint()])
    trainer.fit(model, loader())
    assert all(signal.getsignal(signum) is previous_handler for signum in SIGNALS)


@pytest.mark.xfail(
    reason="bug in src/imgcls/callbacks/preemption.py: the trainer's SIGTERM notifier stays the "
    "callback's mark after the fit, so a SIGTERM while testing only marks a callback nothing "
    "reads: the test runs on, where Lightning's own handler stops it",
    strict=True,
)
def test_a_sigterm_while_testing_stops_the_test_as_lightning_does() -> None:
    model = SignalledWhileTesting()
    trainer = tiny_trainer(callbacks=[PreemptionCheckpoint()])
    trainer.fit(model, loader())
    with pytest.raises(SIGTERMException):
        trainer.test(model, loader(), verbose=False)
