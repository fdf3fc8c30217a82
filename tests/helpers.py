"""Running the user-facing commands in a subprocess."""

import os
import subprocess
import sys
from collections.abc import Sequence
from types import SimpleNamespace

import torch

from imgcls import REPO_ROOT


def run_cli(script: str, args: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python <script> args...` from the repo root, as a user would."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / script), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def fake_trainer(world_size: int = 1, rank: int = 0, training: bool = True) -> SimpleNamespace:
    """What a datamodule reads of its trainer (DDP rank and size, the device, whether it is
    training), without starting a Trainer."""
    strategy = SimpleNamespace(root_device=torch.device("cpu"))
    return SimpleNamespace(
        world_size=world_size, global_rank=rank, training=training, strategy=strategy
    )
