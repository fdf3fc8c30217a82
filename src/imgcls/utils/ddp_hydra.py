"""DDP under Hydra: a job's ranks share the job's dir, and sweep jobs do not leak into each other.

Lightning launches ranks 1..N-1 by re-running `sys.argv` with `hydra.run.dir=<run.dir>`. Under a
multirun that re-runs the whole sweep (`-m lr=0.01,0.1`) in every child, and `run.dir` is not the
job's dir, so each child creates stray run/sweep dirs. We rebuild the child's command from the one
job the parent is running: its own overrides, single-run mode, and the parent's output dir.

Lightning also leaves the process group and its rendezvous variables (LOCAL_RANK, MASTER_PORT, ...)
in the parent after fit; the next sweep job would then skip launching its children and wait for
peers that never come. `ddp_job_scope` tears both down after each job.
"""

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence

import torch.distributed
from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
from lightning.pytorch.strategies.launchers import subprocess_script as trainer_launcher

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
        f'hydra.run.dir="{output_dir}"',
        f"hydra.job.name={hydra_cfg.job.name}_rank{local_rank}",
        "hydra.output_subdir=null",
    ]
    return command, get_original_cwd()


def install() -> None:
    """Route Lightning's child-process command through `hydra_child_command` (idempotent)."""
    # The Trainer's launcher imported the function by name, so both modules hold a reference.
    fabric_launcher._hydra_subprocess_cmd = hydra_child_command
    trainer_launcher._hydra_subprocess_cmd = hydra_child_command


_RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextlib.contextmanager
def ddp_job_scope() -> Iterator[None]:
    """Run one job; afterwards leave no process group or rendezvous variables behind."""
    saved = {name: os.environ.get(name) for name in _RENDEZVOUS_VARS}
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
