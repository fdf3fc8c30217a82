"""No checkpoint of diverged weights: a training loss that became NaN or infinite is noted on the
device without a host read (`note`), and read where a checkpoint is written (the model's
`on_save_checkpoint`, with or without callbacks) and sooner by callbacks.NonFiniteLossStop;
then the run stops with one line naming the first bad step, its lr and the last good
checkpoint. Under DDP the read is one all-reduce (MIN) of every rank's note: all ranks stop at the
same check with the same line, however few of them saw the bad loss (one rank raising alone
would leave the others waiting in their next collective)."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

from imgcls.utils.errors import UserError

NONE_BAD = torch.iinfo(torch.long).max  # a rank's note, in the all-reduce, when it saw none


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
        checkpoint. One host read (after one all-reduce under DDP: every rank calls this at the
        same points, and all raise or none)."""
        step = self._first_bad_step_of_all_ranks(trainer)
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

    def _first_bad_step_of_all_ranks(self, trainer: Any) -> int:
        first = self.first_bad_step
        if trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
            return -1 if first is None else int(first)
        if first is None:  # no step yet on this rank: it still takes part
            first = torch.full((), -1, dtype=torch.long, device=trainer.strategy.root_device)
        combined = torch.where(first < 0, NONE_BAD, first)
        dist.all_reduce(combined, op=dist.ReduceOp.MIN)
        step = int(combined)
        return -1 if step == NONE_BAD else step
