"""The step-level training-loss curve (`train/loss_step`) without a host sync per logged step.

Logging a device tensor with `self.log(on_step=True)` makes Lightning read it back to the host
whenever the loggers write (every `trainer.log_every_n_steps` steps): on a GPU each such read
waits for the device to drain its queue. Here the loss of every `log_every_n_steps`-th
optimizer step stays on the device and the whole epoch's points are read at once, at the
epoch's end (or when training stops early), and written to every logger at their own step
numbers.

Under `trainer.accumulate_grad_batches` a step's point is the mean loss of the batches it
accumulated: Lightning hands each batch's loss on divided by the accumulation (what its
backward needs), so it is multiplied back, and added up on the device until the step.
"""

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

TAG = "train/loss_step"


class StepLossCurve(Callback):
    def __init__(self) -> None:
        self._pending: list[tuple[int, torch.Tensor]] = []
        self._last_step = 0  # the global step at the last batch's end
        self._total: torch.Tensor | None = None  # the losses of the step being accumulated
        self._batches = 0  # how many batches `_total` adds up

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step  # where a resumed run starts

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning steps at an epoch's last batch: no accumulation runs into the next epoch
        self._total, self._batches = None, 0

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step  # optimizer steps done, this batch's included if it made one
        stepped, self._last_step = step != self._last_step, step
        towards = step if stepped else step + 1  # the optimizer step this batch counts towards
        if not trainer.loggers or towards % trainer.log_every_n_steps:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float()  # summed in float32 whatever the precision
            if trainer.accumulate_grad_batches > 1:  # undo Lightning's division for the backward
                loss = loss * trainer.accumulate_grad_batches
            self._total = loss if self._total is None else self._total + loss
            self._batches += 1
        if stepped and self._total is not None:
            mean = self._total / self._batches if self._batches > 1 else self._total
            self._pending.append((step, mean))
            self._total, self._batches = None, 0

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
