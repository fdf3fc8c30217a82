"""Optimizer and LR scheduler from plain config dicts (configs/optimizer, configs/scheduler).

Each config names a torch class (`_target_`) and its arguments; our own settings sit in one
block, `imgcls`, and are consumed here:
- optimizer `imgcls.no_decay_norm_and_bias`: no weight decay on 1-D parameters (biases and norm
  scales, timm's rule; torchvision's `--norm-weight-decay 0`), where decay only fights the
  normalization it rescales, nor on what a net names in its `no_weight_decay()` (timm's ViTs:
  position embeddings and class token);
- optimizer `imgcls.lr_mult`: the lr of the classifier `head` and of norm layers (`norm`) as
  multiples of the lr, each its own param group, so every scheduler scales them alike
  (experiment=finetune_folder trains the head at 10x; airbench trains BatchNorm biases at 64x);
- optimizer `imgcls.layer_decay`: layer-wise lr decay (BEiT, MAE and ConvNeXt fine-tuning),
  timm's grouping: the head trains at lr, each block below at `layer_decay` times the one above,
  the stem lowest; no decay on 1-D parameters and on what the net names (position embeddings,
  class token). For timm nets, whose blocks timm knows (`group_matcher`);
- optimizer `imgcls.scale_lr` / `reference_batch`: settled with the config, before training
  (run/derived.py);
- under 16-mixed precision the optimizer is torch's fused one where it exists (no host read of
  the GradScaler's state per step), unless the config sets `fused` / `foreach` or clips
  gradients;
- scheduler `imgcls.interval` (`epoch` or `step`), `imgcls.warmup_epochs` and
  `imgcls.warmup_start_factor` (a LinearLR warmup chained before the main scheduler); a `null`
  `T_max` / `total_steps` means "the rest of the run", computed once the data is known;
- a resume whose run is longer or shorter than the checkpoint's (trainer.max_epochs, max_steps,
  the data's size) stretches such a schedule over its own length (`StretchOnLoad`).
"""

import copy
import functools
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from hydra.utils import get_class
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torch.optim import SGD, Adam, AdamW, Optimizer
from torch.optim.lr_scheduler import LinearLR, LRScheduler, SequentialLR

from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
RUN_LENGTH_KEYS = ("T_max", "total_steps")
INTERVALS = ("epoch", "step")
FUSED = (SGD, Adam, AdamW)
# a stand-in optimizer (build_scheduler's `fresh`) takes a group's hyperparameters, not its
# kernel choice
STAND_IN_DROPS = ("params", "initial_lr", "fused", "foreach", "capturable")
# what torch's schedulers set in a param group as they step (OneCycleLR cycles momentum or betas)
SCHEDULED = ("lr", "momentum", "betas")


def param_groups(
    model: nn.Module,
    lr: float,
    head: nn.Module | None = None,
    lr_mult: dict[str, float] | None = None,
    no_decay_norm_and_bias: bool = False,
    fixed: Iterable[nn.Parameter] = (),
) -> list[dict[str, Any]]:
    """Backbone, norm-layer and head groups (the latter two at their `lr_mult` x lr; one
    backbone group when both are 1), each split into decayed and not-decayed parameters when
    asked. Frozen parameters stay in their group: they have no gradient, so the optimizer skips
    them until they are unfrozen. `fixed` parameters never train (a LoRA run's backbone): in no
    group, so no optimizer state either."""
    fixed_ids = {id(p) for p in fixed}
    mults = {"backbone": 1.0, "head": 1.0, "norm": 1.0, **(lr_mult or {})}
    head_ids = (
        {id(p) for p in head.parameters()} if head is not None and mults["head"] != 1 else set()
    )
    skip = set()  # what the net itself says to keep from decay (timm: position embeddings, ...)
    if no_decay_norm_and_bias and hasattr(model, "no_weight_decay"):
        named = dict(model.named_parameters())
        skip = {id(named[name]) for name in model.no_weight_decay() if name in named}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) in fixed_ids:
                continue
            part = "head" if id(p) in head_ids else "backbone"
            if part == "backbone" and mults["norm"] != 1 and isinstance(module, NORM_LAYERS):
                part = "norm"
            free = no_decay_norm_and_bias and (p.ndim <= 1 or id(p) in skip)
            groups.setdefault((part, free), []).append(p)
    built = []
    for (part, no_decay), params in groups.items():
        group: dict[str, Any] = {"params": params, "name": part + ("_no_decay" if no_decay else "")}
        if no_decay:
            group["weight_decay"] = 0.0
        if mults[part] != 1:
            group["lr"] = lr * mults[part]
        built.append(group)
    if len(built) == 1:  # one group needs no name: its lr curve is plain `lr-<Optimizer>`
        del built[0]["name"]
    return built


def layer_decay_groups(
    model: nn.Module,
    kwargs: dict[str, Any],
    ours: dict[str, Any],
    fixed: Iterable[nn.Parameter] = (),
) -> list[dict[str, Any]]:
    """timm's layer-decay param groups (`param_groups_layer_decay`), each at its scale times the
    lr, so every scheduler scales them alike. Frozen parameters (callbacks.FrozenBackbone) are
    grouped too: timm leaves them out, and they could then never train once unfrozen; `fixed`
    ones (a LoRA run's backbone) are left out: a LoRA adapter takes its block's scale."""
    decay = ours["layer_decay"]
    if not 0 < decay <= 1:
        raise UserError(f"optimizer.imgcls.layer_decay={decay} must be in (0, 1] (0.65: MAE's).")
    if any(m != 1 for m in (ours.get("lr_mult") or {}).values()):
        raise UserError(
            "optimizer.imgcls.layer_decay sets every layer's lr multiple itself: leave "
            "optimizer.imgcls.lr_mult at 1."
        )
    if not ours.get("no_decay_norm_and_bias", False):
        raise UserError(
            "optimizer.imgcls.layer_decay groups as timm does, with no weight decay on biases, "
            "norms and embeddings: set optimizer.imgcls.no_decay_norm_and_bias=true."
        )
    if not hasattr(model, "group_matcher"):
        raise UserError(
            f"optimizer.imgcls.layer_decay needs a net whose blocks timm knows; "
            f"{type(model).__name__} has none: use a timm/ net (timm/vit_small_patch16_224, "
            "timm/convnext_tiny, ...) or optimizer.imgcls.layer_decay=null."
        )
    from timm.models import group_parameters
    from timm.optim import param_groups_layer_decay

    fixed_ids = {id(p) for p in fixed}
    frozen = [p for p in model.parameters() if not p.requires_grad and id(p) not in fixed_ids]
    for p in frozen:
        p.requires_grad_(True)
    try:
        skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
        groups = param_groups_layer_decay(
            model, kwargs.get("weight_decay", 0.0), skip, layer_decay=decay
        )
    finally:
        for p in frozen:
            p.requires_grad_(False)
    # named by timm's layer id: 0 the stem, the highest the head (counted over every parameter:
    # a LoRA run's stem has none in the groups)
    below = [round(math.log(g["lr_scale"], decay)) if decay < 1 else 0 for g in groups]
    top = max(group_parameters(model, model.group_matcher(coarse=False), reverse=True).values())
    top = top if decay < 1 else 0
    built = []
    for group, depth in sorted(zip(groups, below, strict=True), key=lambda pair: pair[1]):
        scale = group.pop("lr_scale")
        group.pop("param_names", None)
        kind = "no_decay" if group["weight_decay"] == 0 else "decay"
        name = f"layer{top - depth}_{kind}"
        built.append(group | {"lr": kwargs["lr"] * scale, "name": name})
    return built


def build_optimizer(
    model: nn.Module,
    cfg: dict[str, Any],
    head: nn.Module | None = None,
    grad_scaler: bool = False,
    clipping: bool = False,
    fixed: Iterable[nn.Parameter] = (),
) -> Optimizer:
    """`grad_scaler`: the run scales its loss (16-mixed), so the optimizer is a fused one where
    torch has it (`fused_for_grad_scaler`); `clipping`: gradients are clipped; `fixed`:
    parameters that never train (a LoRA run's backbone), in no param group."""
    kwargs = dict(cfg)
    optimizer_class = get_class(kwargs.pop("_target_"))
    ours = dict(kwargs.pop("imgcls", None) or {})
    if ours.get("layer_decay") is not None:
        groups = layer_decay_groups(model, kwargs, ours, fixed)
    else:
        groups = param_groups(
            model,
            kwargs["lr"],
            head,
            ours.get("lr_mult"),
            ours.get("no_decay_norm_and_bias", False),
            fixed,
        )
    fused = grad_scaler and fused_for_grad_scaler(optimizer_class, kwargs, clipping)
    optimizer = optimizer_class(groups, **({"fused": True} | kwargs if fused else kwargs))
    if fused and optimizer.defaults.get("momentum"):
        # torch's fused SGD takes the first step's momentum buffers uninitialized when that
        # step is skipped (GradScaler found inf/NaN, common at the first scale): start them at
        # zero, which gives the same first step (dampening 0) and no garbage after a skip. Every
        # parameter gets one, frozen ones too (fused SGD cannot mix parameters with and without):
        # the memory a momentum buffer takes anyway once the parameter trains.
        for group in optimizer.param_groups:
            for p in group["params"]:
                optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
    return optimizer


def fused_for_grad_scaler(optimizer_class: type, kwargs: dict[str, Any], clipping: bool) -> bool:
    """Whether to ask for torch's fused kernel. With a GradScaler (16-mixed), a non-fused
    optimizer makes the host read the scaler's found-inf flag before every step, waiting for the
    device; a fused one (SGD, Adam, AdamW) unscales and skips on the device. Not when the config
    chooses `fused` / `foreach` itself, and not with gradient clipping: Lightning must unscale
    before clipping, which fused optimizers refuse."""
    if "fused" in kwargs or "foreach" in kwargs:
        return bool(kwargs.get("fused"))
    name = optimizer_class.__name__
    # FUSED: fused CPU and CUDA kernels in every torch we support; with dampening, zero
    # momentum buffers (below) would change SGD's first step
    if not issubclass(optimizer_class, FUSED) or kwargs.get("dampening"):
        log.warning(
            f"{name} is not fused here: under 16-mixed precision the host reads the "
            "GradScaler's inf check every step (bf16-mixed needs no scaler)."
        )
        return False
    if clipping:
        log.warning(
            f"Gradient clipping under 16-mixed keeps {name} unfused: the GradScaler's inf check is "
            "read on the host every step (bf16-mixed needs no scaler and clips without it)."
        )
        return False
    return True


def build_scheduler(
    optimizer: Optimizer, cfg: dict[str, Any] | None, total_steps: int, max_epochs: int
) -> dict[str, Any] | None:
    """A Lightning lr_scheduler_config, or None when `cfg` names no scheduler."""
    if not cfg or not cfg.get("_target_"):
        log_schedule(optimizer, None, 1, "none: constant")
        return None
    kwargs = dict(cfg)
    scheduler_class = get_class(kwargs.pop("_target_"))
    ours = dict(kwargs.pop("imgcls", None) or {})
    interval = ours.get("interval", "epoch")
    if interval not in INTERVALS:
        raise UserError(f"scheduler.imgcls.interval must be 'epoch' or 'step', got {interval!r}")
    if max_epochs is None or max_epochs < 1:
        raise UserError("The LR schedule needs trainer.max_epochs (>= 1) to know the run's length.")
    steps_per_epoch = total_steps / max_epochs if interval == "step" else 1
    length = max(1, math.ceil(max_epochs * steps_per_epoch))
    warmup = min(length - 1, round(ours.get("warmup_epochs", 0) * steps_per_epoch))
    for key in RUN_LENGTH_KEYS:
        if key in kwargs and kwargs[key] is None:
            kwargs[key] = length - warmup

    def make(target: Optimizer) -> "StretchOnLoad":
        args = dict(kwargs)
        if "max_lr" in args and args["max_lr"] is None:  # OneCycleLR: peak at each group's lr
            args["max_lr"] = [group["lr"] for group in target.param_groups]
        if warmup == 0:
            return stretching(scheduler_class)(target, **args)
        start = ours.get("warmup_start_factor", 0.01)
        ramp = LinearLR(target, start_factor=start, total_iters=warmup)
        main = scheduler_class(target, **args)
        return stretching(SequentialLR)(target, [ramp, main], milestones=[warmup])

    # the groups as configured, before a schedule sets their lr: what a stand-in starts from
    configured = [
        {k: v for k, v in group.items() if k not in STAND_IN_DROPS}
        for group in optimizer.param_groups
    ]

    def fresh() -> LRScheduler:
        """The schedule at its first step on a stand-in optimizer holding one scalar per group
        (a few microseconds a step): run to read its lr, the real optimizer untouched."""
        scalars = [{"params": [torch.zeros(1, requires_grad=True)]} for _ in configured]
        return make(type(optimizer)([g | p for g, p in zip(configured, scalars, strict=True)]))

    ramp = f" after a {warmup}-{interval} linear warm-up" if warmup else ""
    what = f"{scheduler_class.__name__}{ramp}, per {interval}"
    log_schedule(optimizer, fresh, length, what)
    scheduler = make(optimizer)
    scheduler.fresh, scheduler.what = fresh, what
    return {"scheduler": scheduler, "interval": interval, "frequency": 1}


def run_length(state: dict[str, Any]) -> int | None:
    """The steps a scheduler's state_dict is laid over (`T_max`, `total_steps`, after a warm-up's
    steps for a SequentialLR), or None for a schedule without an end (StepLR, MultiStepLR)."""
    for key in RUN_LENGTH_KEYS:
        if key in state:
            return state[key]
    if "_schedulers" in state:  # SequentialLR: the main schedule after the warm-up's milestone
        main = run_length(state["_schedulers"][-1])
        return None if main is None else state["_milestones"][-1] + main
    return None


class StretchOnLoad(LRScheduler):
    """A schedule that, on a resume with a run of another length (trainer.max_epochs or
    max_steps, the data's size), stretches over its own length instead of taking the
    checkpoint's back. Lightning loads the checkpoint's optimizer state (momentum, Adam's
    moments), then each scheduler's state_dict into the scheduler configure_optimizers built
    for this run: loaded as it is, a CosineAnnealingLR's `T_max`, a OneCycleLR's `total_steps`,
    a warm-up's milestone would bring the old length back (the schedule would restart or end
    before the run does). Here a state of another length is not loaded: this schedule, built for
    the new length, is put at the checkpoint's step, its lr (and the momentum OneCycleLR
    cycles) set in the restored optimizer. The lr goes on from the new curve's value at that
    step, as timm's scheduler rebuilt for a new epoch count does: from a finished schedule, the
    usual extension, continuing from the old lr (the end, 0 for a cosine) would train no
    further. Refused, one line, where the checkpoint is at or past the new schedule's end."""

    # set by build_scheduler: how it makes this schedule afresh on a stand-in, and its name
    fresh: Callable[[], LRScheduler]
    what: str

    def state_dict(self) -> dict[str, Any]:
        """The schedule's state, without what rebuilds it (a checkpoint holds data only)."""
        return {k: v for k, v in super().state_dict().items() if k not in ("fresh", "what")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved, length = run_length(state_dict), run_length(self.state_dict())
        if saved is None or saved == length:
            super().load_state_dict(state_dict)
            return
        step = state_dict["last_epoch"]
        if step >= length:
            raise UserError(
                f"The checkpoint is at step {step} of its {saved}-step LR schedule ({self.what}): "
                f"this run's is {length} steps long, nothing of it left to train. Resume with a "
                "longer trainer.max_epochs, or the data and batch size it was trained with."
            )
        at_step = self.fresh()
        with warnings.catch_warnings():  # stepping a schedule without optimizer steps
            warnings.simplefilter("ignore")
            for _ in range(step):
                at_step.step()
            super().load_state_dict(copy.deepcopy(at_step.state_dict()))
            for group, stand_in in zip(
                self.optimizer.param_groups, at_step.optimizer.param_groups, strict=True
            ):
                group.update({key: stand_in[key] for key in SCHEDULED if key in stand_in})
            for _ in range(step, length - 1):  # on to the lr of its last step, for the log
                at_step.step()
        first = self.optimizer.param_groups[0]
        which = f" of {first['name']}" if "name" in first else ""
        log.info(
            f"LR schedule stretched from {saved} to {length} steps ({self.what}): the lr{which}, "
            f"{state_dict['_last_lr'][0]:.4g} at step {step}, goes on at {first['lr']:.4g} (the "
            f"new schedule's at step {step}) to {at_step.get_last_lr()[0]:.4g} at step "
            f"{length - 1}"
        )


@functools.cache
def stretching(scheduler_class: type[LRScheduler]) -> type[StretchOnLoad]:
    """`scheduler_class` that stretches a state of another length over its own (StretchOnLoad),
    under its own name."""
    return type(scheduler_class.__name__, (StretchOnLoad, scheduler_class), {})


@rank_zero_only  # one log per run, and the stand-in schedule run on one process
def log_schedule(
    optimizer: Optimizer,
    fresh: Callable[[], LRScheduler] | None,
    length: int,
    what: str,
) -> None:
    """Log each param group's lr at the first step, at its peak and at the last step, and its
    weight decay: the numbers a recipe really trains with (scaled lr, lr_mult, warm-up, div
    factors), read instead of derived, from the schedule run on a stand-in (`fresh`)."""
    groups = optimizer.param_groups
    if fresh is None:
        points = [f"lr {group['lr']:.4g}" for group in groups]
        header = f"LR schedule ({what})"
    else:
        scheduler = fresh()  # at the first step's lr
        stand_in = scheduler.optimizer
        first = [group["lr"] for group in stand_in.param_groups]
        peak, peak_step = list(first), [0] * len(first)
        with warnings.catch_warnings():  # stepping a schedule without optimizer steps
            warnings.simplefilter("ignore")
            for step in range(1, length):
                scheduler.step()
                for g, group in enumerate(stand_in.param_groups):
                    if group["lr"] > peak[g]:
                        peak[g], peak_step[g] = group["lr"], step
        last = [group["lr"] for group in stand_in.param_groups]
        points = [
            f"{first[g]:.4g} -> {peak[g]:.4g} (step {peak_step[g]}) -> {last[g]:.4g}"
            for g in range(len(groups))
        ]
        header = f"LR schedule ({what}, {length} steps): first -> peak (at step) -> last"
    lines = [header]
    for group, point in zip(groups, points, strict=True):
        name = group.get("name", "all")
        lines.append(f"  {name}: {point}, weight decay {group.get('weight_decay', 0):g}")
    log.info("\n".join(lines))
