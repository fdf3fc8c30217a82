"""A run's own dir: unique however many runs start at once, and held by one process at a time.

Hydra names a run's dir after the time, to the second: two commands started in the same second
(a shell loop, a job array) would share one and mix their logs, checkpoints and status. The
`unique_dir` resolver (configs/hydra/default.yaml) creates `<parent>/<name>` with an atomic
`mkdir`, or `<name>_2`, `<name>_3`, ... where another run got there first. Hydra resolves it once
per command (it caches resolved values and copies them into each sweep job's config): the jobs
of a sweep share its dir, and the DDP ranks Lightning starts are handed the dir on their command
line (run/ddp_hydra.py). The processes a cluster launcher starts (srun, torchrun) share one
dir named after their job instead (`run_dir`, run/cluster.py).

While a training runs, `running.lock` in its dir names its process (pid and host), created
atomically: a resume (`ckpt_path=last` or a path) never writes into a run that is still going.
A lock whose process is gone (killed, crashed) is stale and taken over.
"""

import contextlib
import itertools
import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from imgcls.run import cluster
from imgcls.utils.errors import UserError
from imgcls.utils.paths import STATUS_FILE

LOCK_FILE = "running.lock"


def unique_dir(parent: str, name: str) -> str:
    """`parent/name`, or the first free `parent/name_N`, created by this call. A parent that
    cannot be made ends the command with one line (Hydra would print five tracebacks: this runs
    while it resolves its own config, before any of ours)."""
    folder = Path(parent).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for n in itertools.count(1):
            candidate = folder / (name if n == 1 else f"{name}_{n}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            return str(candidate)
    except OSError as err:
        raise SystemExit(
            f"UserError: cannot make a run dir in {folder} ({err.strerror}: {err.filename}): "
            "set paths.log_dir to a folder you can write to."
        ) from None
    raise AssertionError("unreachable")


def run_dir(
    parent: str, name: str, num_nodes: int = 1, devices: object = 1, resuming: object = None
) -> str:
    """A run's dir: `unique_dir(parent, name)`, or for the processes of a cluster job, the one
    dir their job's name gives them all (made by whichever comes first). A dir that already
    holds a run (a reused `--rdzv-id`) is refused, by every rank alike (status.json is written
    when a run ends), unless the command resumes it (`ckpt_path` set, its last.ckpt there):
    finished work is never written over."""
    process = cluster.cluster_process(cluster.as_count(num_nodes), cluster.as_count(devices))
    if process is None:
        return unique_dir(parent, name)
    if process.shared_name is None:
        via = " or torchrun --rdzv-id=<job id>" if process.launcher == "torchrun" else ""
        raise SystemExit(
            f"UserError: the processes started by {process.launcher} need one run dir: add "
            f"hydra.run.dir=<a folder every node can reach> (the same on every node){via}."
        )
    folder = Path(parent).expanduser() / process.shared_name
    resumable = resuming and (folder / "checkpoints" / "last.ckpt").is_file()
    if (folder / STATUS_FILE).exists() and not resumable:
        raise SystemExit(
            f"UserError: {folder} holds an earlier run of the same job name: resume it "
            "(ckpt_path=last), or give this job its own (torchrun --rdzv-id, hydra.run.dir)."
        )
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def holder(run_dir: str | Path) -> dict | None:
    """Who is training in `run_dir` ({"pid", "host"}), or None: no lock, or a stale one (its
    process gone from this host). A lock from another host is taken to be live. Ranks other
    than 0 see no holder: the lock they find is their own rank 0's, which holds the dir for
    them (each rank settles the same command again, a resume included)."""
    if rank_zero_only.rank != 0:
        return None
    try:
        owner = json.loads((Path(run_dir) / LOCK_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if owner.get("host") != socket.gethostname():
        return owner
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, someone else's
        pass
    return owner


def describe(owner: dict, run_dir: str | Path) -> str:
    where = f"pid {owner['pid']} on {owner['host']}"
    return f"{run_dir} is still being trained ({where}; if it is not, delete {LOCK_FILE} there)"


@contextlib.contextmanager
def held(run_dir: str | Path) -> Iterator[None]:
    """Hold `run_dir` for this process's training (rank 0 only: the other ranks are its)."""
    if rank_zero_only.rank != 0:
        yield
        return
    lock = Path(run_dir) / LOCK_FILE
    lock.parent.mkdir(parents=True, exist_ok=True)
    owner = {"pid": os.getpid(), "host": socket.gethostname()}
    # written whole beside it, then linked to its name: atomic, and never seen half-written (an
    # empty lock would read as stale and be taken over)
    staged = lock.with_name(f".{LOCK_FILE}.{owner['pid']}.{uuid.uuid4().hex[:8]}")
    staged.write_text(json.dumps(owner))
    try:
        for _ in range(2):
            try:
                _link(staged, lock)  # one process creates it; the others get FileExistsError
                break
            except FileExistsError:
                live = holder(run_dir)
                if live is not None:
                    raise UserError(describe(live, run_dir)) from None
                lock.unlink(missing_ok=True)  # stale: its process is gone
        else:
            raise UserError(f"Could not take {lock}: another run is starting in {run_dir}.")
    finally:
        staged.unlink(missing_ok=True)  # the lock, where taken, is a name of its own
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _link(staged: Path, lock: Path) -> None:
    """`lock` as a second name of the written `staged` file; on a file system without hard
    links, created exclusively and written (a moment empty)."""
    try:
        os.link(staged, lock)
    except FileExistsError:
        raise
    except OSError:
        with open(lock, "x") as f:
            f.write(staged.read_text())
