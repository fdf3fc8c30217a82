"""Values that follow from other values or from the machine, worked out from a composed config
without changing it (run/settle.py writes them into it, with the rest of what a run derives):

- `optimizer.imgcls.scale_lr=linear`: `optimizer.lr` is the lr for `reference_batch` images a
  step (Goyal et al. 2017) and becomes lr x global batch / reference_batch, the global batch being
  data.batch_size x devices x nodes x gradient accumulation;
- `trainer.sync_batchnorm` with CPU processes: off, with a warning (torch's SyncBatchNorm needs
  GPUs);
- `trainer.deterministic`: cuDNN's autotuner (`trainer.benchmark`) off, as it picks kernels by
  timing them, which differs between runs;
- `model.task`: the checkpoint, early-stopping and sweep metrics left at another task's headline
  score (val/acc(_best)) become this task's (val/map(_best)); a score the task does not log is
  refused (each objective names its scores: models/objectives/).
"""

from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from imgcls.models.objectives import OBJECTIVES
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)
SCALE_RULES = (None, "none", "linear")


# the task the configs' metrics (val/acc, val/acc_best) are written for
DEFAULT_TASK = "multiclass"
# the metrics that pick the checkpoint, stop early and are a sweep's, kept to the model's task
METRIC_KEYS = (
    "callbacks.model_checkpoint.monitor",
    "callbacks.early_stopping.monitor",
    "optimized_metric",
)


def derived_values(cfg: DictConfig) -> dict[str, Any]:
    """{dotted key: the value the run uses}, for each value that differs from the config's."""
    derived: dict[str, Any] = task_metrics(cfg)
    trainer = cfg.get("trainer")
    if trainer is None:
        return derived
    if trainer.get("deterministic") and trainer.get("benchmark"):
        derived["trainer.benchmark"] = False
        log.info("trainer.deterministic is on: cuDNN's autotuner (trainer.benchmark) is off.")
    if trainer.get("sync_batchnorm") and not on_gpu(trainer):
        derived["trainer.sync_batchnorm"] = False
        log.warning(
            "trainer.sync_batchnorm needs CUDA devices (torch's SyncBatchNorm): kept per-process "
            "BatchNorm on the CPU."
        )
    ours = (cfg.get("optimizer") or {}).get("imgcls") or {}
    rule = ours.get("scale_lr")
    if rule not in SCALE_RULES:
        raise UserError(f"optimizer.imgcls.scale_lr must be null or 'linear', got {rule!r}")
    if rule == "linear":
        batch = cfg.data.batch_size * device_count(trainer) * trainer.get("num_nodes", 1)
        batch *= trainer.get("accumulate_grad_batches", 1)
        derived["optimizer.lr"] = scaled_lr(
            cfg.optimizer.lr, batch, ours.get("reference_batch", 256)
        )
        derived["optimizer.imgcls.scale_lr"] = None  # done: the lr above is the run's
    return derived


def task_metrics(cfg: DictConfig) -> dict[str, Any]:
    """The checkpoint, early-stopping and sweep metrics of the model's task: where they are left
    at the configs' default, the default task's headline (val/acc, val/acc_best), they become
    this task's (val/map for several labels per image); a score only another task logs is
    refused now rather than after an epoch (or a whole run)."""
    task = (cfg.get("model") or {}).get("task", DEFAULT_TASK)
    ours, default = OBJECTIVES[task], OBJECTIVES[DEFAULT_TASK]
    others = [objective for name, objective in OBJECTIVES.items() if name != task]
    derived = {}
    for key in METRIC_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if not isinstance(value, str) or not value.startswith("val/"):
            continue
        score, best = value.removeprefix("val/").removesuffix("_best"), value.endswith("_best")
        if score in ours.scores:
            continue
        if score == default.headline:
            derived[key] = f"val/{ours.headline}" + ("_best" if best else "")
            log.info(f"model.task={task}: {key}={derived[key]} (it has no {value})")
        elif any(score in other.scores for other in others):
            shown = ", ".join(f"val/{name}" for name in ours.scores)
            raise UserError(
                f"{key}={value} is not logged with model.task={task}: use one of {shown} "
                "(or val/loss; _best for a sweep's optimized_metric)."
            )
    return derived


def scaled_lr(lr: float, global_batch: int, reference_batch: int) -> float:
    new_lr = lr * global_batch / reference_batch
    log.info(f"lr {lr:g} x global batch {global_batch} / {reference_batch} = {new_lr:g}")
    return new_lr


def on_gpu(trainer: Any) -> bool:
    accelerator = trainer.get("accelerator", "auto")
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def device_count(trainer: Any) -> int:
    """How many devices (processes per node) Lightning will use for `trainer.devices`."""
    devices = trainer.get("devices", "auto")
    if isinstance(devices, list | ListConfig):
        return len(devices)
    if devices in ("auto", -1, "-1"):
        return max(1, torch.cuda.device_count()) if on_gpu(trainer) else 1
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    return int(devices)
