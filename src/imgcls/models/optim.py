"""Optimizer and LR scheduler from plain config dicts (configs/optimizer, configs/scheduler).

Both are torch classes named by `_target_`; the keys below are ours and are consumed here:
- optimizer `no_decay_norm_and_bias`: no weight decay on norm weights and biases (torchvision's
  `--norm-weight-decay 0`), where decay only fights the normalization it rescales.
- model `head_lr_mult`: the classifier head at that multiple of the lr (seed 001 fine-tunes
  with 10), its own param group, so every scheduler scales both groups alike.
- optimizer `norm_lr_mult`: norm layers' parameters at that multiple of the lr, their own group
  (airbench trains its BatchNorm biases 64x faster than the weights).
- optimizer `scale_lr: linear` with `reference_batch` (256): lr x global batch / reference batch
  (Goyal et al. 2017), so a recipe's lr carries over to any number of devices.
- scheduler `interval` (`epoch` or `step`), `warmup_epochs` and `warmup_start_factor` (a LinearLR
  warmup chained before the main scheduler), and a `null` `T_max` / `total_steps`, which means
  "the rest of the run", computed from the trainer once the data is known.
"""

import math
from typing import Any

from hydra.utils import get_class
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LinearLR, LRScheduler, SequentialLR

from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
RUN_LENGTH_KEYS = ("T_max", "total_steps")


def param_groups(
    model: nn.Module,
    exclude_norm_and_bias: bool,
    head: nn.Module | None = None,
    head_lr_mult: float = 1.0,
    lr: float = 0.0,
    norm_lr_mult: float = 1.0,
) -> list[dict[str, Any]]:
    """Backbone, norm-layer and head groups (at `norm_lr_mult` and `head_lr_mult` x lr; one
    backbone group when both are 1), each split into decayed and not-decayed parameters when
    asked. Frozen parameters stay in their group: they have no gradient, so the optimizer skips
    them until they are unfrozen."""
    with_head = head is not None and head_lr_mult != 1
    head_ids = {id(p) for p in head.parameters()} if with_head else set()
    lr_mults = {"backbone": 1.0, "norm": norm_lr_mult, "head": head_lr_mult}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for module in model.modules():
        is_norm = isinstance(module, NORM_LAYERS)
        for name, p in module.named_parameters(recurse=False):
            part = "head" if id(p) in head_ids else "backbone"
            if part == "backbone" and is_norm and norm_lr_mult != 1:
                part = "norm"
            no_decay = exclude_norm_and_bias and (is_norm or name == "bias")
            groups.setdefault((part, no_decay), []).append(p)
    built = []
    for (part, no_decay), params in groups.items():
        group: dict[str, Any] = {"params": params, "name": part + ("_no_decay" if no_decay else "")}
        if no_decay:
            group["weight_decay"] = 0.0
        if lr_mults[part] != 1:
            group["lr"] = lr * lr_mults[part]
        built.append(group)
    if len(built) == 1:  # one group needs no name: its lr curve is plain `lr-<Optimizer>`
        del built[0]["name"]
    return built


def scaled_lr(lr: float, rule: str | None, global_batch: int | None, reference_batch: int) -> float:
    if rule in (None, "none"):
        return lr
    if rule != "linear":
        raise UserError(f"optimizer.scale_lr must be null or 'linear', got {rule!r}")
    if not global_batch:
        raise UserError("optimizer.scale_lr=linear needs the batch size of a datamodule.")
    new_lr = lr * global_batch / reference_batch
    log.info(f"lr {lr:g} x global batch {global_batch} / {reference_batch} = {new_lr:g}")
    return new_lr


def build_optimizer(
    model: nn.Module,
    cfg: dict[str, Any],
    global_batch: int | None = None,
    head: nn.Module | None = None,
    head_lr_mult: float = 1.0,
) -> Optimizer:
    kwargs = dict(cfg)
    optimizer_class = get_class(kwargs.pop("_target_"))
    rule, reference = kwargs.pop("scale_lr", None), kwargs.pop("reference_batch", 256)
    kwargs["lr"] = scaled_lr(kwargs["lr"], rule, global_batch, reference)
    no_decay = kwargs.pop("no_decay_norm_and_bias", False)
    norm_lr_mult = kwargs.pop("norm_lr_mult", 1.0)
    groups = param_groups(model, no_decay, head, head_lr_mult, kwargs["lr"], norm_lr_mult)
    return optimizer_class(groups, **kwargs)


def build_scheduler(
    optimizer: Optimizer, cfg: dict[str, Any] | None, total_steps: int, max_epochs: int
) -> dict[str, Any] | None:
    """A Lightning lr_scheduler_config, or None when `cfg` names no scheduler."""
    if not cfg or not cfg.get("_target_"):
        return None
    kwargs = dict(cfg)
    scheduler_class = get_class(kwargs.pop("_target_"))
    interval = kwargs.pop("interval", "epoch")
    warmup_epochs = kwargs.pop("warmup_epochs", 0)
    warmup_start_factor = kwargs.pop("warmup_start_factor", 0.01)
    if interval not in ("epoch", "step"):
        raise UserError(f"scheduler.interval must be 'epoch' or 'step', got {interval!r}")
    if max_epochs is None or max_epochs < 1:
        raise UserError("The LR schedule needs trainer.max_epochs (>= 1) to know the run's length.")
    steps_per_epoch = total_steps / max_epochs if interval == "step" else 1
    length = max(1, math.ceil(max_epochs * steps_per_epoch))
    warmup = min(length - 1, round(warmup_epochs * steps_per_epoch))
    for key in RUN_LENGTH_KEYS:
        if key in kwargs and kwargs[key] is None:
            kwargs[key] = length - warmup
    if "max_lr" in kwargs and kwargs["max_lr"] is None:  # OneCycleLR: peak at the optimizer's lr
        kwargs["max_lr"] = [group["lr"] for group in optimizer.param_groups]
    scheduler: LRScheduler = scheduler_class(optimizer, **kwargs)
    if warmup > 0:
        ramp = LinearLR(optimizer, start_factor=warmup_start_factor, total_iters=warmup)
        scheduler = SequentialLR(optimizer, [ramp, scheduler], milestones=[warmup])
    return {"scheduler": scheduler, "interval": interval, "frequency": 1}
