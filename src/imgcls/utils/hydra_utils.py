"""Glue between Hydra configs and the objects a run is made of."""

import functools
import json
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from imgcls import CONFIG_DIR
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger
from imgcls.utils.rich_utils import print_config_tree

log = get_logger(__name__)


def instantiate(cfg: DictConfig, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, but a UserError raised by the target reaches the user unwrapped.

    `_convert_="all"` hands targets plain dicts and lists, so whatever they store (hparams in a
    checkpoint) is plain data that loads with `torch.load(weights_only=True)`.
    """
    try:
        return hydra.utils.instantiate(cfg, _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def instantiate_each(group: DictConfig | None) -> list[Any]:
    """Build every entry of a group such as `callbacks` or `logger` that names a `_target_`."""
    if not group:
        return []
    return [
        instantiate(entry)
        for entry in group.values()
        if isinstance(entry, DictConfig) and "_target_" in entry
    ]


def apply_extras(cfg: DictConfig) -> None:
    """The optional start-of-run chores named in `configs/extras`."""
    extras = cfg.get("extras")
    if not extras:
        return
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("enforce_tags") and not cfg.get("tags"):
        raise UserError(
            "This run has no tags and extras.enforce_tags is on: add e.g. tags=[baseline]."
        )
    if extras.get("print_config"):
        print_config_tree(cfg, save_to=Path(cfg.paths.output_dir) / "config_tree.log")


def metric_value(metrics: Mapping[str, float], name: str | None) -> float | None:
    """The value a sweeper optimizes; a missing name is a config mistake, so say which exist."""
    if not name:
        return None
    if name not in metrics:
        logged = ", ".join(sorted(metrics))
        raise UserError(f"optimized_metric={name!r} was not logged. Logged metrics: {logged}")
    return metrics[name]


@rank_zero_only
def save_metrics(metrics: Mapping[str, float], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(metrics.items())), indent=2) + "\n")


def set_in_struct(cfg: DictConfig, key: str, value: Any) -> None:
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False)


def report_user_errors(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Turn a UserError into one red line and exit code 1, instead of a traceback."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except UserError as err:
            log.error(f"{type(err).__name__}: {err}")
            sys.exit(1)

    return wrapped


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Logged tensors as plain floats (JSON, sweepers and tables want numbers, not tensors)."""
    return {name: float(value) for name, value in metrics.items()}


def run_hyperparameters(cfg: DictConfig, model: Any) -> dict[str, Any]:
    """What loggers record for a run: the whole config, flattened, plus the model's size."""
    params = OmegaConf.to_container(cfg, resolve=True)
    flat = dict(_flatten(params))
    flat["model/params_total"] = sum(p.numel() for p in model.parameters())
    flat["model/params_trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return flat


def _flatten(tree: Any, prefix: str = "") -> Any:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}{key}/")
    else:
        yield prefix.rstrip("/"), tree if isinstance(tree, int | float | str | bool) else str(tree)


def compose_config(
    config_name: str = "train", overrides: Sequence[str] = (), output_dir: str | Path | None = None
) -> DictConfig:
    """Compose a config as the command line would, for tests, notebooks and scripts.

    Hydra is initialized as for a single run whose output dir is `output_dir` (or a fresh
    `logs/<task>/runs/<time>/` when None), so `${hydra:...}` and `paths.output_dir` resolve.
    """
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    if output_dir is None:
        output_dir = cfg.hydra.run.dir
    set_in_struct(cfg, "hydra.runtime.output_dir", str(Path(output_dir).resolve()))
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    return cfg
