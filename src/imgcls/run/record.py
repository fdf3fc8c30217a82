"""What a run leaves in its dir to say how it went: `status.json` (completed / failed with its
error / preempted / interrupted / pruned by an Optuna search's pruner, and its duration) and
`metrics.json`, and the rule that one failed job never ends a sweep.

In a multirun, a job that raises is logged with its error, recorded as failed, and returns no
value: Hydra's basic sweeper goes on to the next job, and the Optuna sweeper reads status.json
to tell the study how the trial ended (run/optuna_search.py; it ends a search only on a failure
no trial can escape). A raised error would instead end the sweep. A single run still fails
loudly, as before.
"""

import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger
from imgcls.utils.paths import STATUS_FILE

log = get_logger(__name__)
METRICS_FILE = "metrics.json"


class Preempted(Exception):  # noqa: N818 (a state, not an error)
    """A run stopped by SIGTERM / SIGUSR1 after saving last.ckpt: not a failure."""


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@rank_zero_only
def write_status(output_dir: str | Path, status: dict[str, Any]) -> None:
    path = Path(output_dir) / STATUS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(status, indent=2) + "\n")


def is_pruned(err: BaseException) -> bool:
    """Whether `err` is Optuna's TrialPruned (callbacks/optuna_pruning.py raises it in a trial);
    read without importing Optuna, which only a search loads."""
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(err, optuna.TrialPruned)


def run_recorded(cfg: DictConfig, task: Callable[[], float | None]) -> float | None:
    """Run `task`, record how it ended in the run's dir (read at the end: a resumed run moves
    it to the resumed run's); in a sweep, turn its failure into no result."""
    start = time.perf_counter()
    status: dict[str, Any] = {"status": "interrupted"}  # kept if a signal ends the process
    try:
        result = task()
        status = {"status": "completed"}
        return result
    except Preempted as preempted:  # exit 0: a scheduler may requeue the same command
        status = {"status": "preempted", "detail": str(preempted)}
        log.warning(f"Preempted ({preempted}); resume with ckpt_path=last.")
        return None
    except Exception as err:
        if is_pruned(err):  # an Optuna search's pruner stopped this trial: not a failure
            status = {"status": "pruned", "detail": str(err)}
            log.info(f"Pruned ({err}): the run keeps its dir.")
            return None
        status = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        if not in_multirun():
            raise
        log.error(
            f"This job failed; the sweep goes on. {status['error']}",
            exc_info=not isinstance(err, UserError),
        )
        return None
    finally:
        status["duration_s"] = round(time.perf_counter() - start, 3)
        write_status(cfg.paths.output_dir, status)
        if status["status"] == "interrupted" and cfg.get("train"):  # Ctrl-C, a kill signal
            log.warning("Interrupted: resume with the same command and ckpt_path=last.")


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Logged tensors as plain floats (JSON, sweepers and tables want numbers, not tensors)."""
    return {name: float(value) for name, value in metrics.items()}


@rank_zero_only
def save_metrics(metrics: Mapping[str, float], output_dir: str | Path) -> None:
    path = Path(output_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(metrics.items())), indent=2) + "\n")
