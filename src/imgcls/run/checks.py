"""Values checked before any work starts, each failure one line naming the key, the value and
what is allowed (Hydra checks key names and group options; these are the values).

Only keys a run actually has are checked: `optimizer.momentum` where the optimizer takes one,
`data.batch_size` in train and eval alike.
"""

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from imgcls.run.cluster import as_count, cluster_process
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger
from imgcls.utils.machine import available_cpus


def _whole(minimum: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _number(low: float, high: float | None = None, low_open: bool = False) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        if not isinstance(v, int | float) or isinstance(v, bool) or v != v:  # NaN
            return False
        return (v > low if low_open else v >= low) and (high is None or v < high)

    return check


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _auto_or(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v == "auto" or check(v)


def _epochs(v: Any) -> bool:
    return _whole(-1)(v) and v != 0


def _class_weights(v: Any) -> bool:
    if v is None or v == "balanced":
        return True
    return OmegaConf.is_list(v) and len(v) > 0 and all(_number(0, low_open=True)(w) for w in v)


def _temperature(v: Any) -> bool:
    return v is None or v == "fit" or _number(0, low_open=True)(v)


log = get_logger(__name__)
_ABSENT = object()


# key -> (test, what is allowed)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.batch_size": (_whole(1), "a whole number >= 1 (images per device and step)"),
    "data.eval_batch_size": (_optional(_whole(1)), "a whole number >= 1, or null"),
    "data.num_workers": (_auto_or(_whole(0)), "auto or a whole number >= 0"),
    "data.folds": (_optional(_whole(2)), "a whole number >= 2 (k-fold cross-validation), or null"),
    "data.fold": (_whole(0), "a whole number >= 0, below data.folds"),
    "optimizer.lr": (_number(0, low_open=True), "a number > 0"),
    "optimizer.weight_decay": (_number(0), "a number >= 0"),
    "optimizer.momentum": (_number(0, 1), "a number in [0, 1)"),
    "model.label_smoothing": (_number(0, 1), "a number in [0, 1)"),
    "model.class_weights": (
        _class_weights,
        "null, balanced, or a list of numbers > 0, one per class",
    ),
    "model.temperature": (_temperature, "null, fit, or a number > 0"),
    "model.threshold": (
        lambda v: v == "fit" or (_number(0, 1, low_open=True)(v)),
        "fit, or a number in (0, 1)",
    ),
    "model.probe.enabled": (lambda v: isinstance(v, bool), "true or false"),
    "model.probe.knn_k": (_whole(1), "a whole number >= 1 (nearest train images voting)"),
    "model.probe.knn_temperature": (_number(0, low_open=True), "a number > 0 (DINO's: 0.07)"),
    "model.lora.rank": (_optional(_whole(0)), "null or 0 (off), or a whole number >= 1"),
    "model.lora.alpha": (_number(0, low_open=True), "a number > 0 (the update: alpha / rank x BA)"),
    "model.lora.dropout": (_number(0, 1), "a number in [0, 1)"),
    "model.lora.targets": (
        lambda v: (
            v is None
            or (OmegaConf.is_list(v) and len(v) > 0 and all(isinstance(t, str) and t for t in v))
        ),
        "null (the net's family's layers) or a list of layer names, [attn.qkv,mlp.fc1]",
    ),
    "trainer.max_epochs": (_epochs, "a whole number >= 1, or -1 for no limit"),
    "trainer.min_epochs": (_optional(_whole(0)), "a whole number >= 0, or null"),
    "trainer.accumulate_grad_batches": (_whole(1), "a whole number >= 1"),
    "trainer.log_every_n_steps": (_whole(1), "a whole number >= 1"),
}


def check_values(cfg: DictConfig) -> None:
    for key, (test, allowed) in RULES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
        if value is not _ABSENT and not test(value):  # absent or ???: not this run's to check
            raise UserError(f"{key}={value!r} is not allowed: {allowed}.")
    _check_data_given(cfg)
    _check_fold(cfg)
    _check_cpu_processes(cfg)
    _check_seed_shared(cfg)
    _check_probe(cfg)
    _warn_of_double_balancing(cfg)


def _check_seed_shared(cfg: DictConfig) -> None:
    """The ranks of a job shuffle alike by the run's seed (data/loaders.py). With seed=null one
    is drawn at start, which the DDP processes Lightning starts inherit (train.py); processes
    a cluster's launcher starts (torchrun, srun, several machines) would each draw their own,
    and a resumed run another than its run's."""
    if "seed" not in cfg or cfg.seed is not None:
        return
    trainer = cfg.get("trainer") or {}
    nodes, devices = as_count(trainer.get("num_nodes", 1)), as_count(trainer.get("devices", 1))
    if nodes > 1 or cluster_process(nodes, devices) is not None:
        raise UserError(
            "seed=null is not allowed in a job whose processes a launcher starts (several "
            "machines, torchrun, srun): each would draw its own seed and shuffle its own way; "
            "give one, e.g. seed=12345."
        )
    if cfg.get("ckpt_path") is not None:
        raise UserError(
            "seed=null is not allowed with ckpt_path: a resumed run continues with its run's "
            "seed, which its train.log's first lines give (\"seed=null: this run's seed is N\"): "
            "add seed=N."
        )


def _check_probe(cfg: DictConfig) -> None:
    """A linear probe trains the head on features computed once from un-augmented images
    (data/features.py): what needs images at each step, or several processes, has no place."""
    model = cfg.get("model") or {}
    if not (model.get("probe") or {}).get("enabled") or not cfg.get("train"):
        return

    def refuse(what: str, why: str) -> None:
        raise UserError(f"{what} is not allowed with model.probe.enabled=true: {why}.")

    cached = "the probe trains on features computed once from un-augmented images"
    trainer = cfg.get("trainer") or {}
    if as_count(trainer.get("devices", 1)) > 1 or as_count(trainer.get("num_nodes", 1)) > 1:
        refuse(
            f"trainer.devices={trainer.get('devices')} (num_nodes={trainer.get('num_nodes', 1)})",
            "a frozen backbone's features are computed once and the head trains on them in "
            "seconds, on one device: trainer.devices=1",
        )
    if model.get("task", "multiclass") != "multiclass":
        refuse(f"model.task={model.get('task')}", "it probes one label per image (multiclass)")
    augment = (cfg.get("data") or {}).get("augment") or {}
    if augment.get("preset", "none") != "none":
        refuse(f"data.augment.preset={augment.get('preset')}", f"{cached}: preset=none")
    unaugmented = {
        "policy": (None, "none"),
        "erasing": (None, 0),
        "mixup_alpha": (0,),
        "cutmix_alpha": (0,),
        "repeats": (1,),
    }
    for key, off in unaugmented.items():
        if augment.get(key, off[0]) not in off:
            refuse(f"data.augment.{key}={augment.get(key)}", f"{cached}: leave it at {off[0]}")
    for key in ("tta_flip", "tta_shift"):
        if model.get(key):
            refuse(
                f"model.{key}={model.get(key)}",
                f"{cached}; evaluate best.ckpt with it through eval.py (model.{key}=...)",
            )
    if (model.get("distill") or {}).get("teacher"):
        refuse("model.distill.teacher", "a teacher needs the images at each step")
    if ((model.get("lora") or {}).get("rank") or 0) > 0:
        refuse(f"model.lora.rank={model.lora.rank}", "the backbone is frozen, adapters too")
    callbacks = cfg.get("callbacks") or {}
    if ((callbacks.get("frozen_backbone") or {}).get("unfreeze_at_epoch")) is not None:
        refuse("callbacks.frozen_backbone.unfreeze_at_epoch", "the backbone is never unfrozen")
    if callbacks.get("progressive_resize"):
        refuse("callbacks.progressive_resize", f"{cached}, at the eval crop")


def _warn_of_double_balancing(cfg: DictConfig) -> None:
    """Allowed, and rarely meant: each evens the classes out alone; together a rare class counts
    about its rarity squared."""
    data, model = cfg.get("data") or {}, cfg.get("model") or {}
    if data.get("sampler") == "balanced" and model.get("class_weights") == "balanced":
        log.warning(
            "data.sampler=balanced and model.class_weights=balanced each even the classes out; "
            "together they over-correct (a rare class weighs about its rarity squared): use one."
        )


def _check_data_given(cfg: DictConfig) -> None:
    """A data source's mandatory value (`???`: data=folder's root, data=csv's csv) left unset."""
    data = cfg.get("data")
    for key in data or ():
        if OmegaConf.is_missing(data, key):
            raise UserError(f"data.{key} is not set: give it on the command line, data.{key}=...")


def _check_fold(cfg: DictConfig) -> None:
    data = cfg.get("data") or {}
    folds, fold = data.get("folds"), data.get("fold", 0)
    if folds is None and fold:
        raise UserError(f"data.fold={fold} needs data.folds (how many folds): data.folds=5.")
    if folds is not None and fold >= folds:
        raise UserError(
            f"data.fold={fold} is not allowed with data.folds={folds}: folds are 0 to {folds - 1}."
        )


def _check_cpu_processes(cfg: DictConfig) -> None:
    """DDP on the CPU starts one process per device: more than there are CPUs only thrashes."""
    trainer = cfg.get("trainer") or {}
    devices = trainer.get("devices")
    if trainer.get("accelerator") != "cpu" or not _whole(1)(devices):
        return
    cpus = available_cpus()
    if devices > cpus:
        raise UserError(
            f"trainer.devices={devices} is not allowed with trainer.accelerator=cpu on this "
            f"machine: at most {cpus} (one process per CPU)."
        )
