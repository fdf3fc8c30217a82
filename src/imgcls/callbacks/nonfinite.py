"""Stop at a NaN or infinite training loss soon after it happens, and say where.

The model notes each step's loss on the device without a host read (models/divergence.py)
and refuses to write a checkpoint once one was not finite, with or without
this callback. This callback reads the note sooner: every `check_every_n_steps` steps, at every
step that writes a checkpoint, before each validation (whose end writes last.ckpt) and at the
end of each epoch, always before the checkpoint callbacks run (Lightning orders those last), and
it names the lr of the bad step. The step named is the first bad one, however late the read.
"""

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class NonFiniteLossStop(Callback):
    def __init__(self, check_every_n_steps: int = 50) -> None:
        self.check_every_n_steps = check_every_n_steps
        self._lrs: dict[int, float] = {}  # the lr of each step since the last check

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # the lr this batch's step uses: read before the step, as its end comes after the
        # schedulers have moved on to the next step's
        self._lrs[trainer.global_step + 1] = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step  # this batch's step, counted from 1
        if step % self.check_every_n_steps == 0 or self._saves(trainer):
            self.check(pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:  # its end writes last.ckpt
            self.check(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(pl_module)

    @staticmethod
    def _saves(trainer: L.Trainer) -> bool:
        step = trainer.global_step
        for callback in trainer.checkpoint_callbacks:
            # Lightning's ModelCheckpoint keeps its step interval private (no public accessor);
            # tests/test_lightning_hooks.py fails on a version that renames it
            every = getattr(callback, "last_every_n_steps", 0) or getattr(
                callback, "_every_n_train_steps", 0
            )
            if every and step % every == 0:
                return True
        return False

    def check(self, pl_module: L.LightningModule) -> None:
        pl_module.divergence.raise_if_diverged(pl_module.trainer, self._lrs)
        self._lrs.clear()
