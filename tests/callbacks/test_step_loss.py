"""callbacks/step_loss.py: train/loss_step gets the loss of every log_every_n_steps-th step, at
that step's number, kept on the device and written once per epoch (or when training stops)."""

from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from imgcls.callbacks.step_loss import TAG, StepLossCurve
from tests.callbacks.tiny import RecordingLogger, TinyClassifier, loader, tiny_trainer


class Probe(Callback):
    """At each training batch's end: how many points the logger holds, and whether every
    pending point is still a tensor (not read to the host)."""

    def __init__(self, curve: StepLossCurve, logger: RecordingLogger) -> None:
        self.curve, self.logger = curve, logger
        self.written: list[int] = []
        self.pending_are_tensors: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.written.append(len(self.logger.points(TAG)))
        self.pending_are_tensors.append(
            all(isinstance(loss, torch.Tensor) for _, loss in self.curve._pending)
        )


def probed_fit(images: int, **trainer_kwargs: Any) -> tuple[TinyClassifier, RecordingLogger, Probe]:
    """A fit on `images` images with the curve, a recording logger and a probe of both, a point
    every 2 steps."""
    curve, logger = StepLossCurve(), RecordingLogger()
    probe, model = Probe(curve, logger), TinyClassifier()
    trainer = tiny_trainer(
        logger=logger, callbacks=[curve, probe], log_every_n_steps=2, **trainer_kwargs
    )
    trainer.fit(model, loader(images))
    return model, logger, probe


def test_every_nth_step_loss_is_written_at_its_step_when_the_epoch_ends() -> None:
    model, logger, probe = probed_fit(10, max_epochs=2, limit_train_batches=5)
    losses = dict(model.losses)
    assert logger.points(TAG) == [
        (step, pytest.approx(float(losses[step]))) for step in (2, 4, 6, 8, 10)
    ]
    # nothing during an epoch; epoch 0's two points (steps 2 and 4) at its end
    assert probe.written == [0] * 5 + [2] * 5
    assert all(probe.pending_are_tensors)


def test_points_pending_when_training_stops_are_written() -> None:
    class FailAtStep5(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == 4:
                raise RuntimeError("stopped on purpose")

    logger = RecordingLogger()
    model = TinyClassifier()
    trainer = tiny_trainer(
        logger=logger,
        callbacks=[StepLossCurve(), FailAtStep5()],
        limit_train_batches=5,
        log_every_n_steps=2,
    )
    with pytest.raises(RuntimeError, match="on purpose"):
        trainer.fit(model, loader(10))
    losses = dict(model.losses)
    assert logger.points(TAG) == [(s, pytest.approx(float(losses[s]))) for s in (2, 4)]


def test_a_run_without_loggers_keeps_no_points() -> None:
    curve = StepLossCurve()
    pending: list[int] = []

    class Count(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            pending.append(len(curve._pending))

    trainer = tiny_trainer(callbacks=[curve, Count()], limit_train_batches=4, log_every_n_steps=1)
    trainer.fit(TinyClassifier(), loader())
    assert pending == [0, 0, 0, 0]


def test_with_gradient_accumulation_each_logged_optimizer_step_gets_one_point() -> None:
    """A logged optimizer step's point is the mean loss of the batches it accumulated, not a
    point per batch (nor one at step 0, before any step) and not Lightning's loss divided by the
    accumulation: the epoch's last step (8) accumulated one batch, whose loss it is."""
    model, logger, probe = probed_fit(
        30,
        limit_train_batches=15,
        accumulate_grad_batches=2,  # 8 optimizer steps, the last of batch 15 alone
    )
    points = logger.points(TAG)
    assert [step for step, _ in points] == [2, 4, 6, 8]
    for step, value in points:
        batches = [float(loss) for s, loss in model.losses if s == step]
        assert len(batches) == (1 if step == 8 else 2)
        assert value == pytest.approx(sum(batches) / len(batches), rel=1e-6)
    assert all(probe.pending_are_tensors)
