"""The step-level training-loss curve (`train/loss_step`) without a host sync per logged step.

Logging a device tensor with `self.log(on_step=True)` makes Lightning read it back to the host
whenever the loggers write (every `trainer.log_every_n_steps` steps): on a GPU each such read
waits for the device to drain its queue. Here the loss of every `log_every_n_steps`-th step
stays on the device and the whole epoch's points are read at once, at the epoch's end (or when
training stops early), and written to every logger at their own step numbers.
"""

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

TAG = "train/loss_step"


class StepLossCurve(Callback):
    def __init__(self) -> None:
        self._pending: list[tuple[int, torch.Tensor]] = []

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step  # steps done, this one included
        if not trainer.loggers or step % trainer.log_every_n_steps:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._pending.append((step, loss.detach()))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.flush(trainer)

    def flush(self, trainer: L.Trainer) -> None:
        if not self._pending:
            return
        steps = [step for step, _ in self._pending]
        values = torch.stack([loss.float() for _, loss in self._pending]).tolist()
        self._pending.clear()
        for logger in trainer.loggers:
            for step, value in zip(steps, values, strict=True):
                logger.log_metrics({TAG: value}, step=step)
