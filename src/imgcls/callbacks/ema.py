"""Lightning's EMAWeightAveraging, with no host sync per step, and the test that follows training
on the averaged weights.

Per step, torch's AveragedModel asks `n_averaged == 0` of a device tensor (a host sync on a GPU)
and Lightning's EMA averages one tensor at a time. `HostCountedEMA` counts updates on the host
and averages all floating-point tensors in one fused `lerp` (integer buffers such as BatchNorm's
step count are copied): the same average, no sync, a few kernels instead of three per tensor.
Parameters that never train (a LoRA run's backbone) are not averaged: they are their average.

Checkpoints hold the averaged weights as `state_dict` (what eval, predict and export load) and the
raw ones as `current_model_state` (what a resumed fit continues from). Lightning keeps its averaged
model after fit, so when the same trainer then tests the best checkpoint, its hook loads
`current_model_state`: train's test/acc would be the raw weights' and eval.py's the averaged
ones'. Outside fitting the checkpoint's `state_dict` is left in place.

Values a model fits on its validation split rather than learns (its `fitted_on_validation`
buffers: a temperature, thresholds) are not averaged: the averaged model takes them as they are,
and a checkpoint holds the ones just fitted (on the averaged weights' logits, since validation
runs on those).
"""

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.optim.swa_utils import AveragedModel


def fixed_parameters(model: nn.Module) -> set[int]:
    """The ids of the model's parameters that never train (a LoRA run's backbone, the
    model's `fixed_parameters()`): their average is themselves, so they are not averaged."""
    return {id(p) for p in getattr(model, "fixed_parameters", list)()}


def fitted_buffers(model: nn.Module) -> tuple[str, ...]:
    """The model's buffers fitted on validation, not learned (none for a plain module)."""
    return tuple(getattr(model, "fitted_on_validation", ()))


class HostCountedEMA(AveragedModel):
    """An exponential moving average of a module's parameters and buffers."""

    def __init__(
        self, model: nn.Module, decay: float, device: torch.device | None, use_buffers: bool
    ) -> None:
        super().__init__(model, device=device, use_buffers=use_buffers)
        self.decay = decay
        self.updates = 0  # n_averaged, known on the host
        fixed = fixed_parameters(model)  # by position: the copy's parameters are in the same order
        self.averaged = [id(p) not in fixed for p in model.parameters()]

    def _tensors(self, model: nn.Module, every: bool) -> list[torch.Tensor]:
        """Its parameters (the fixed ones only when `every`), then its buffers where averaged."""
        params = [
            p.detach()
            for p, on in zip(model.parameters(), self.averaged, strict=True)
            if on or every
        ]
        if self.use_buffers:
            return params + [t.detach() for t in model.buffers()]
        return params

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        # the first copies everything: a fixed parameter may have been set since the copy was
        # made (a data-dependent init at the fit's start)
        first = self.updates == 0
        averaged, current = self._tensors(self.module, first), self._tensors(model, first)
        floating = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        others = [
            (a, c) for a, c in zip(averaged, current, strict=True) if not a.is_floating_point()
        ]
        if first:
            torch._foreach_copy_(*map(list, zip(*floating, strict=True)))
        else:
            targets, sources = map(list, zip(*floating, strict=True))
            torch._foreach_lerp_(targets, sources, 1.0 - self.decay)
        for target, source in others:
            target.copy_(source)
        if not self.use_buffers:  # buffers follow the model, as in AveragedModel
            for target, source in zip(self.module.buffers(), model.buffers(), strict=True):
                target.copy_(source)
        for name in fitted_buffers(model):
            self.module.get_buffer(name).copy_(model.get_buffer(name))
        self.n_averaged += 1
        self.updates += 1


class EMA(EMAWeightAveraging):
    def __init__(self, decay: float = 0.999, **kwargs: Any) -> None:
        super().__init__(decay=decay, **kwargs)
        self.decay = decay

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            device = self._device or pl_module.device
            self._average_model = HostCountedEMA(pl_module, self.decay, device, self._use_buffers)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        current = checkpoint.get("current_model_state")
        if current is not None:  # fitted at this validation's end, after the swap back
            for name in fitted_buffers(pl_module):
                checkpoint["state_dict"][name] = current[name]

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
            if isinstance(self._average_model, HostCountedEMA):
                self._average_model.updates = int(self._average_model.n_averaged)
