"""Stop at a NaN or infinite training loss, say where, and keep the last good checkpoint.

The check costs no host sync per step: each step only folds "was this loss finite" and its step
number into a device tensor. The host reads it every `check_every_n_steps` steps, at every step
that writes a checkpoint, before each validation (whose end writes last.ckpt) and at the end of
each epoch, always before the checkpoint callbacks run (Lightning orders those last), so a
checkpoint never holds the diverged weights. The step
named is the first bad one, however late the read.
"""

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from imgcls.utils.errors import UserError


class NonFiniteLossStop(Callback):
    def __init__(self, check_every_n_steps: int = 50) -> None:
        self.check_every_n_steps = check_every_n_steps
        self._first_bad: torch.Tensor | None = None  # step of the first non-finite loss, or -1
        self._lrs: dict[int, float] = {}  # the lr of each step since the last check

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        step = trainer.global_step  # this batch's step, counted from 1
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad_now = ~torch.isfinite(loss.detach()) & (self._first_bad < 0)
        self._first_bad = torch.where(bad_now, step, self._first_bad)
        self._lrs[step] = trainer.optimizers[0].param_groups[0]["lr"]
        if step % self.check_every_n_steps == 0 or self._saves(trainer):
            self.check(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:  # its end writes last.ckpt
            self.check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

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

    def check(self, trainer: L.Trainer) -> None:
        if self._first_bad is None:
            return
        step = int(self._first_bad)
        if step < 0:
            self._lrs.clear()
            return
        kept = [
            c.last_model_path or c.best_model_path
            for c in trainer.checkpoint_callbacks
            if isinstance(c, ModelCheckpoint)
        ]
        last_good = next((p for p in kept if p), None)
        raise UserError(
            f"The training loss became NaN or infinite at step {step} (epoch "
            f"{trainer.current_epoch}, lr {self._lrs.get(step, float('nan')):.3g}); stopped "
            "before writing another checkpoint. "
            + (
                f"The last good checkpoint is {last_good}: resume from it with a lower "
                "optimizer.lr, gradient clipping (trainer.gradient_clip_val=1.0) or "
                "trainer.precision=32-true."
                if last_good
                else "No checkpoint was written before it: lower optimizer.lr, clip gradients "
                "(trainer.gradient_clip_val=1.0) or use trainer.precision=32-true."
            )
        )
