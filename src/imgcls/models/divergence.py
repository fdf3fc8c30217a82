"""No checkpoint of diverged weights: a training loss that became NaN or infinite is noted on the
device without a host read (`note`), and read where a checkpoint is written (the model's
`on_save_checkpoint`, with or without callbacks) and sooner by callbacks.NonFiniteLossStop;
then the run stops with one line naming the first bad step, its lr and the last good
checkpoint."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from imgcls.utils.errors import UserError


class DivergenceGuard:
    """The first step whose training loss was not finite, -1 for none, as a device tensor."""

    def __init__(self) -> None:
        self.first_bad_step: Tensor | None = None

    def note(self, loss: Tensor, step: int) -> None:
        """Fold "is this loss finite" and its `step` into the device tensor: nothing is read."""
        first = self.first_bad_step
        if first is None or first.device != loss.device:
            first = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad_now = ~torch.isfinite(loss.detach()) & (first < 0)
        self.first_bad_step = torch.where(bad_now, step, first)

    def raise_if_diverged(self, trainer: Any, lrs: Mapping[int, float] | None = None) -> None:
        """Stop with one line once a training loss has been NaN or infinite, naming its step,
        the lr then (`lrs`: by step, where known; else the lr now) and the last good
        checkpoint. One host read."""
        if self.first_bad_step is None:
            return
        step = int(self.first_bad_step)
        if step < 0:
            return
        lr = (lrs or {}).get(step, trainer.optimizers[0].param_groups[0]["lr"])
        kept = [
            c.last_model_path or c.best_model_path
            for c in trainer.checkpoint_callbacks
            if isinstance(c, ModelCheckpoint)
        ]
        last_good = next((p for p in kept if p and Path(p).is_file()), None)
        clip = "trainer.gradient_clip_val=1.0"
        raise UserError(
            f"The training loss became NaN or infinite at step {step} (epoch "
            f"{trainer.current_epoch}, lr {lr:.3g}); stopped before writing another checkpoint. "
            + (
                f"The last good checkpoint is {last_good}: resume from it with a lower "
                f"optimizer.lr, gradient clipping ({clip}) or trainer.precision=32-true."
                if last_good
                else f"No checkpoint was written before it: lower optimizer.lr, clip gradients "
                f"({clip}) or use trainer.precision=32-true."
            )
        )
