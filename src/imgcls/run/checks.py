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
