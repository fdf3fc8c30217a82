"""DDP under Hydra: a job's ranks share the job's dir, and sweep jobs do not leak into each other.

Lightning launches ranks 1..N-1 by re-running `sys.argv` with `hydra.run.dir=<run.dir>`. Under a
multirun that re-runs the whole sweep (`-m lr=0.01,0.1`) in every child, and `run.dir` is not the
job's dir, so each child creates stray run/sweep dirs. We rebuild the child's command from the one
job the parent is running: its own overrides, single-run mode (`hydra.mode=RUN`: a config such as
`hparams_search=...` sets MULTIRUN itself), and the parent's output dir.

When a child rank dies, Lightning's process observer kills the other ranks and then the main
process with SIGKILL: a sweep would lose every job after it, with no status and no summary. Ours
kills the other ranks the same way, then raises `RankFailedError` in the main process, so the job is
recorded as failed and the sweep goes on; should the main process still be inside that job a
minute later (stuck in a collective with the dead rank), it is killed as before.

Lightning also leaves the process group and its rendezvous variables (LOCAL_RANK, MASTER_PORT, ...)
in the parent after fit; the next sweep job would then skip launching its children and wait for
peers that never come. `ddp_job_scope` tears both down after each job.

These hooks replace two private functions of Lightning's launcher; tests/test_lightning_hooks.py
fails loudly on a Lightning version that renames them.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch.distributed
from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
from lightning.pytorch.strategies.launchers import subprocess_script as trainer_launcher
from lightning.pytorch.utilities import rank_zero_only

from imgcls.utils.errors import UserError

# how long the main process may take to leave a job after a rank died, before it is killed
MAIN_EXIT_GRACE_S = 60.0
# a child rank's exit code for a UserError: an error of the job's own (a diverged loss, decided
# on every rank at once), which the main process meets and reports too
USER_ERROR_EXIT = 3
# how long the main process has to meet it before the child's exit fails the job
USER_ERROR_GRACE_S = 30.0
# the signal by which the observer thread raises RankFailedError in the main thread
_RAISE_SIGNAL = signal.SIGUSR2


class RankFailedError(Exception):
    """A DDP child process (rank >= 1) died during the job."""


# argv flags that change what config is composed, with their values; they must reach the child.
_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")


def _config_flags(argv: Sequence[str]) -> list[str]:
    kept = []
    for i, arg in enumerate(argv):
        if arg in _CONFIG_FLAGS and i + 1 < len(argv):
            kept += [arg, argv[i + 1]]
        elif arg.split("=", 1)[0] in _CONFIG_FLAGS and "=" in arg:
            kept.append(arg)
    return kept


def hydra_child_command(local_rank: int) -> tuple[list[str], str]:
    """The command and cwd for DDP rank `local_rank` of the current Hydra job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    import __main__

    hydra_cfg = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, os.path.abspath(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += _config_flags(sys.argv[1:])
    command += list(hydra_cfg.overrides.task)
    output_dir = hydra_cfg.runtime.output_dir.replace("\\", "\\\\").replace('"', '\\"')
    command += [
        "hydra.mode=RUN",
        f'hydra.run.dir="{output_dir}"',
        # the global rank: this node's first (run/cluster.claim_rank) plus the local one
        f"hydra.job.name=${{task_name}}_rank{rank_zero_only.rank + local_rank}",
        "hydra.output_subdir=null",
    ]
    return command, get_original_cwd()


class _Job:
    """The job running in this process (so a late signal never fails the next one) and the
    child ranks it launched."""

    number = 0
    done = threading.Event()
    children: list[subprocess.Popen] = []
    failure: str | None = None  # why a child rank died, for the signal handler to raise


class ChildRankObserver(fabric_launcher._ChildProcessObserver):
    """Lightning's observer, but a dead child fails the job instead of killing this process."""

    def __init__(self, child_processes: list[subprocess.Popen]) -> None:
        super().__init__(main_pid=os.getpid(), child_processes=child_processes)
        self._job = _Job.number

    def _terminate_all(self) -> None:
        own_error = _met_the_jobs_own_error(self._child_processes)  # before the kills' codes
        message = _death_message(self._child_processes)
        for child in self._child_processes:
            child.send_signal(self._termination_signal)
        if self._job != _Job.number or _Job.done.is_set():
            return
        if own_error and _Job.done.wait(USER_ERROR_GRACE_S):
            return  # the main process left with the same line
        if self._job != _Job.number:  # the sweep has moved on to its next job
            return
        _Job.failure = message
        signal.pthread_kill(threading.main_thread().ident, _RAISE_SIGNAL)
        if not _Job.done.wait(MAIN_EXIT_GRACE_S):
            os.kill(self._main_pid, self._termination_signal)  # stuck with the dead rank


def _met_the_jobs_own_error(children: list[subprocess.Popen]) -> bool:
    """Every child that died left on a UserError (USER_ERROR_EXIT)."""
    dead = [c.returncode for c in children if c.poll() not in (0, None)]
    return bool(dead) and all(code == USER_ERROR_EXIT for code in dead)


def _death_message(children: list[subprocess.Popen]) -> str | None:
    dead = [(rank, c.returncode) for rank, c in enumerate(children, 1) if c.poll() not in (0, None)]
    if not dead:
        return None
    codes = ", ".join(f"rank {rank} exited with code {code}" for rank, code in dead)
    return f"A DDP process died ({codes}); its log is train_rank<N>.log in the run dir."


def _raise_rank_failed(signum: int, frame: Any) -> None:
    message, _Job.failure = _Job.failure, None
    if message is not None and not _Job.done.is_set():
        raise RankFailedError(message)


def _launch_observer(child_processes: list[subprocess.Popen]) -> None:
    _Job.children = child_processes
    ChildRankObserver(child_processes).start()


def install() -> None:
    """Route Lightning's child-process command through `hydra_child_command`, and its process
    observer through `ChildRankObserver` (idempotent)."""
    # The Trainer's launcher imported the functions by name, so both modules hold a reference.
    fabric_launcher._hydra_subprocess_cmd = hydra_child_command
    trainer_launcher._hydra_subprocess_cmd = hydra_child_command
    trainer_launcher._launch_process_observer = _launch_observer
    if threading.current_thread() is threading.main_thread():
        signal.signal(_RAISE_SIGNAL, _raise_rank_failed)


def _end_children(kill: bool, wait_s: float = 30.0) -> None:
    """No rank outlives its job: after a failure they are killed; after success they finish
    on their own (killed if they have not within `wait_s`)."""
    for child in _Job.children:
        if not kill:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(wait_s)
        if child.poll() is None:
            child.kill()
            child.wait()


_RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextlib.contextmanager
def ddp_job_scope() -> Iterator[None]:
    """Run one job; afterwards leave no process group or rendezvous variables behind."""
    saved = {name: os.environ.get(name) for name in _RENDEZVOUS_VARS}
    _Job.number += 1
    _Job.done.clear()
    _Job.children, _Job.failure = [], None
    failed = True
    try:
        yield
        failed = False
    except Exception as err:
        _Job.done.set()  # leaving already: a child's exit no longer raises here
        deadline = time.monotonic() + 5  # each rank's own error reaches its log before a kill
        for child in _Job.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(max(0.0, deadline - time.monotonic()))
        message = _death_message(_Job.children)
        # rank 0 often fails first with the collective's "connection closed": name the cause,
        # unless its own error is one every rank met (a UserError: the divergence line)
        if message and not isinstance(err, UserError | RankFailedError):
            raise RankFailedError(message) from err
        raise
    finally:
        _Job.done.set()
        _end_children(kill=failed)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
