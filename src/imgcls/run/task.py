"""One way to start every entry point: train, eval, predict, export and verify.

`main = task_main("train", run)` turns `run(cfg)` into a command: Hydra composes
`configs/train.yaml` with the command line; then, for every task alike,
- Lightning's DDP children are started into the job's own dir (run/ddp_hydra.py),
- the start-up extras run (the config tree, the tags rule: configs/extras),
- `run(cfg)` runs, and no process group, child rank or wandb run outlives it,
- how it ended goes to the run's status.json (and in a sweep a failure is one failed job),
- a mistake the user can fix (UserError) prints as one line and exits with code 1,
- and after a command line that failed, the keys closest to a misspelt one are named.
"""

import logging
import sys
import warnings
from collections.abc import Callable
from typing import Any

import hydra
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from imgcls import CONFIG_DIR
from imgcls.run import cluster, ddp_hydra
from imgcls.run.hints import with_key_hints
from imgcls.run.record import is_pruned, run_recorded
from imgcls.run.resolvers import register_resolvers
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)


def apply_extras(cfg: DictConfig) -> None:
    """The optional start-of-run chores named in `configs/extras` (the config tree is printed
    once the run has settled its config: run/settle.py)."""
    extras = cfg.get("extras")
    if not extras:
        return
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("enforce_tags") and not cfg.get("tags"):
        raise UserError(
            "This run has no tags and extras.enforce_tags is on: add e.g. tags=[baseline]."
        )


def log_error(message: str, exc_info: bool = False) -> None:
    """`message` in this process's log, on every rank: a DDP child's error reaches its own
    train_rank<N>.log, marked with its rank (the run's logger speaks on rank 0 alone)."""
    rank = rank_zero_only.rank
    if rank == 0:
        log.error(message, exc_info=exc_info)
    else:
        logging.getLogger(__name__).error(f"[rank {rank}] {message}", exc_info=exc_info)


def finish_wandb_run() -> None:
    """End the job's wandb run: it stays open in the process otherwise, and Lightning's
    WandbLogger in the next job of a sweep would log into it (every job in job 0's run)."""
    wandb = sys.modules.get("wandb")  # loaded only where a job used it
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def task_main(config_name: str, run: Callable[[DictConfig], Any]) -> Callable[[], Any]:
    """The command that runs `run` on `configs/<config_name>.yaml` plus the command line; it
    returns what `run` returns (a sweeper optimizes the train task's value)."""

    register_resolvers()  # before Hydra composes (here and in a cluster job's own process)

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
    def hydra_entry(cfg: DictConfig) -> Any:
        def job() -> Any:
            cluster.claim_rank(cfg.get("trainer"))
            ddp_hydra.install()
            apply_extras(cfg)
            try:
                with ddp_hydra.ddp_job_scope():
                    return run(cfg)
            finally:
                finish_wandb_run()

        try:
            return run_recorded(cfg, job)
        except UserError as err:
            log_error(f"{type(err).__name__}: {err}")
            sys.exit(ddp_hydra.USER_ERROR_EXIT if rank_zero_only.rank else 1)
        except Exception as err:
            if rank_zero_only.rank == 0:
                raise
            if is_pruned(err):  # decided on every rank at once: the job's own end
                sys.exit(ddp_hydra.USER_ERROR_EXIT)
            log_error("This DDP process failed:", exc_info=True)  # in its train_rank<N>.log
            sys.exit(1)

    hydra_entry.__doc__ = run.__doc__
    return with_key_hints(config_name, hydra_entry)
