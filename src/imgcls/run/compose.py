"""Hydra glue: composing a config as the command line would, and building objects from it."""

from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf, open_dict

from imgcls import CONFIG_DIR
from imgcls.run.resolvers import register_resolvers
from imgcls.utils.errors import UserError


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


def set_in_struct(cfg: DictConfig, key: str, value: Any) -> None:
    """Set `key` (dotted) even where the config is closed to new keys."""
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False)


def compose_config(
    config_name: str = "train", overrides: list[str] | tuple[str, ...] = (), output_dir: Any = None
) -> DictConfig:
    """Compose a config as the command line would, for tests, notebooks and scripts.

    Hydra is initialized as for a single run whose output dir is `output_dir` (or a fresh
    `logs/<task>/runs/<time>/` when None), so `${hydra:...}` and `paths.output_dir` resolve.
    """
    register_resolvers()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    if output_dir is None:
        output_dir = cfg.hydra.run.dir
    set_in_struct(cfg, "hydra.runtime.output_dir", str(Path(output_dir).resolve()))
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    # its own dir, not Hydra's global one: composing another config must not move it
    set_in_struct(cfg, "paths.output_dir", str(Path(cfg.paths.output_dir)))
    Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    return cfg
