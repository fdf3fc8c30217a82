"""The resolvers the configs use (`${unique_dir:...}`, `${project_root:}`, ...), registered by
whatever composes a config: a command (run/task.py), `compose_config` (tests, notebooks) and the
key hints after a failed command line. Registering them is idempotent."""

import os

from omegaconf import OmegaConf

from imgcls import REPO_ROOT
from imgcls.run import cluster
from imgcls.run.dirs import run_dir, unique_dir


def project_root() -> str:
    """configs/paths' root: $PROJECT_ROOT where a user points it elsewhere, else the checkout
    this package runs from, wherever the command was started."""
    return os.environ.get("PROJECT_ROOT", str(REPO_ROOT))


RESOLVERS = {
    "project_root": project_root,
    "unique_dir": unique_dir,
    "run_dir": run_dir,
    "rank_log_name": cluster.job_log_name,
    "rank_zero_subdir": cluster.config_subdir,
}


def register_resolvers() -> None:
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver, use_cache=True)
