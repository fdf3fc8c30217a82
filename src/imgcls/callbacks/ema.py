"""Lightning's EMAWeightAveraging, with no host sync per step, and the test that follows training
on the averaged weights.

Per step, torch's AveragedModel asks `n_averaged == 0` of a device tensor (a host sync on a GPU)
and Lightning's EMA averages one tensor at a time. `HostCountedEMA` counts updates on the host
and averages all floating-point tensors in one fused `lerp` (integer buffers such as BatchNorm's
step count are copied): the same average, no sync, a few kernels instead of three per tensor.

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

import itertools
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.optim.swa_utils import AveragedModel


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

    def _tensors(self, model: nn.Module) -> list[torch.Tensor]:
        if self.use_buffers:
            return [t.detach() for t in itertools.chain(model.parameters(), model.buffers())]
        return [p.detach() for p in model.parameters()]

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        averaged, current = self._tensors(self.module), self._tensors(model)
        floating = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        others = [
            (a, c) for a, c in zip(averaged, current, strict=True) if not a.is_floating_point()
        ]
        if self.updates == 0:
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
