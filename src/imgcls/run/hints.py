"""After Hydra refuses a command line, name the keys that do exist.

Hydra stops at an unknown key (`trainer.max_epoch=3`) naming it, but not the keys it could have
meant. When a command exits with an error, each dotted override is checked against the config
its group choices compose, and an unknown one gets the close match and its siblings. This runs
only after a failure, so a good command pays nothing.
"""

import difflib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from imgcls import CONFIG_DIR
from imgcls.run.resolvers import register_resolvers


def key_hints(config_name: str, args: Sequence[str]) -> list[str]:
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    keys = [o.split("=", 1)[0] for o in overrides]
    choices = [o for o, k in zip(overrides, keys, strict=True) if "." not in k and k[0] not in "+~"]
    register_resolvers()
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=choices)
    except Exception:  # the group choices themselves are wrong: Hydra listed the options
        return []
    hints = []
    for key in keys:
        if "." not in key or key[0] in "+~" or key.startswith("hydra."):
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None)
        if not isinstance(node, DictConfig):
            continue
        siblings = sorted(str(k) for k in node)  # keys whose value is ??? included
        if leaf in siblings:
            continue
        close = difflib.get_close_matches(leaf, siblings, n=1)
        guess = f" Did you mean {parent}.{close[0]}?" if close else ""
        hints.append(f"{key} is not a key.{guess} The keys of {parent}: {', '.join(siblings)}.")
    return hints


def with_key_hints(config_name: str, hydra_main: Callable[[], Any]) -> Callable[[], Any]:
    """Wrap a `@hydra.main` function: on a failing exit, print the hints."""

    def run() -> Any:
        try:
            return hydra_main()
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                for hint in key_hints(config_name, sys.argv[1:]):
                    print(hint, file=sys.stderr)
            raise

    return run
