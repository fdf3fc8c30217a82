"""Processes a cluster launcher starts: which rank each is, and the run dir they all share.

`srun` (SLURM), `torchrun`, or a command typed on each node with Lightning's variables
(`MASTER_ADDR`, `MASTER_PORT`, `NODE_RANK`) start every process of a job themselves, each one a
whole `python train.py`. Hydra would give each its own run dir, named after the second it started
in: one job would write two runs, half a log each. Here every process of such a job derives the
same name from what its launcher shares among them, before Hydra makes the dir:
- SLURM: the job and step id (`slurm-<job>.<step>`; a requeued job adds `_r<restart count>`),
  where srun started several tasks,
- torchrun: its `--rdzv-id` (`torchrun-<id>`); on one node without one, the launcher's own
  start time (every worker is its child),
- Lightning's variables by hand: nothing is shared, so the command must name the dir itself
  (`hydra.run.dir=...`, the same on every node), or it stops at once with one line saying so.
Processes that Lightning starts itself (`trainer.devices=N` on one machine) are handed their
parent's dir (run/ddp_hydra.py) and are not this module's business.

The process of global rank 0 writes the run's config and log as any run; the others log to
`train_rank<N>.log` beside it.
"""

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path


@dataclass(frozen=True)
class ClusterProcess:
    """One process of a job a launcher started: its global rank and the job's run dir name
    (None where the launcher shares nothing that could name it)."""

    rank: int
    launcher: str
    shared_name: str | None


def _int_env(name: str, default: int = 0) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _restart_suffix(count_variable: str) -> str:
    restarts = _int_env(count_variable)
    return f"_r{restarts}" if restarts > 0 else ""


def _parent_start_time() -> str | None:
    """When this process's parent (torchrun's agent) started, to the second: all its workers
    read the same. None where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{os.getppid()}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: start time after boot
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    started = datetime.fromtimestamp(boot) + timedelta(seconds=ticks / os.sysconf("SC_CLK_TCK"))
    return started.strftime("%Y-%m-%d_%H-%M-%S")


def cluster_process(num_nodes: int = 1, devices: int = 1) -> ClusterProcess | None:
    """This process, when a launcher started it as one of several; None otherwise (a process
    on its own, or one whose parent is another of ours and hands it the run dir)."""
    world = _int_env("WORLD_SIZE", 1)
    if os.environ.get("TORCHELASTIC_RUN_ID") is not None and world > 1:
        run_id = os.environ["TORCHELASTIC_RUN_ID"]
        if run_id != "none":
            name = f"torchrun-{run_id}"
        elif _int_env("LOCAL_WORLD_SIZE", world) == world:
            started = _parent_start_time()
            name = None if started is None else f"{started}_torchrun"
        else:
            name = None
        # torchrun restarting its workers, or SLURM requeueing a job that runs torchrun
        suffix = _restart_suffix("TORCHELASTIC_RESTART_COUNT") + _restart_suffix(
            "SLURM_RESTART_COUNT"
        )
        return ClusterProcess(_int_env("RANK"), "torchrun", name and name + suffix)
    slurm_interactive = os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive")
    if _int_env("SLURM_NTASKS", 1) > 1 and not slurm_interactive:
        # the batch script itself is no step of srun's
        job, step = os.environ.get("SLURM_JOB_ID", "0"), os.environ.get("SLURM_STEP_ID", "batch")
        name = f"slurm-{job}.{step}" + _restart_suffix("SLURM_RESTART_COUNT")
        return ClusterProcess(_int_env("SLURM_PROCID"), "srun", name)
    if num_nodes > 1 and "NODE_RANK" in os.environ and "LOCAL_RANK" not in os.environ:
        return ClusterProcess(
            _int_env("NODE_RANK") * devices, "hand on each node (NODE_RANK)", None
        )
    return None


def as_count(value: object) -> int:
    """trainer.num_nodes / trainer.devices as a count ("auto" or a list of device ids: 1)."""
    return value if isinstance(value, int) else 1


def job_log_name(task_name: str, num_nodes: int = 1, devices: object = 1) -> str:
    """`train` for rank 0 (and any process on its own), `train_rank<N>` for the others."""
    process = cluster_process(as_count(num_nodes), as_count(devices))
    return task_name if process is None or process.rank == 0 else f"{task_name}_rank{process.rank}"


def config_subdir(subdir: str, num_nodes: int = 1, devices: object = 1) -> str | None:
    """Where Hydra writes the run's config (`.hydra`): rank 0 only, as for Lightning's ranks."""
    process = cluster_process(as_count(num_nodes), as_count(devices))
    return subdir if process is None or process.rank == 0 else None


def claim_rank(trainer_cfg: object) -> None:
    """Tell Lightning's rank-zero-only writers (status.json, running.lock, the loggers) this
    process's rank before its Trainer does: Lightning reads torchrun's and srun's rank from the
    environment at import, but not a node's started by hand (`NODE_RANK`), which would
    otherwise write as rank 0 into the shared run dir."""
    from lightning.pytorch.utilities import rank_zero_only

    get = getattr(trainer_cfg, "get", lambda key, default: default)
    process = cluster_process(as_count(get("num_nodes", 1)), as_count(get("devices", 1)))
    if process is not None:
        rank_zero_only.rank = process.rank
