"""Running the user-facing commands: in a subprocess, or composed for a call in-process."""

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import torch
from omegaconf import DictConfig

from imgcls import REPO_ROOT
from imgcls.run.compose import compose_config

# a command line's run without the config tree and the live progress bar in captured output
CLI_QUIET = ["extras.print_config=false", "callbacks.rich_progress_bar=null"]
# an optimizer config as configs/optimizer/sgd.yaml composes it, for nets built by hand
SGD = {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}


def run_cli(script: str, args: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python <script> args...` from the repo root, as a user would; a script named
    without `.py` (imgcls-train) is the console script that `pip install` made."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}
    if script.endswith(".py"):
        command = [sys.executable, str(REPO_ROOT / script)]
    else:
        command = [str(Path(sys.executable).parent / script)]
    return subprocess.run(
        [*command, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def dirs_under(root: Path) -> set[str]:
    """Every dir under root, as relative paths (files inside them don't matter here)."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir()}


def processes_mentioning(marker: Path) -> list[str]:
    """The command lines of live processes that name `marker` (a test's tmp dir)."""
    found = subprocess.run(["pgrep", "-af", str(marker)], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


def fake_trainer(world_size: int = 1, rank: int = 0, training: bool = True) -> SimpleNamespace:
    """What a datamodule reads of its trainer (DDP rank and size, the device, whether it is
    training, the training batches so far: `at_batch`), without starting a Trainer."""
    strategy = SimpleNamespace(root_device=torch.device("cpu"))
    batches = SimpleNamespace(total=SimpleNamespace(ready=0))  # training batches so far
    fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=batches))
    return SimpleNamespace(
        world_size=world_size,
        global_rank=rank,
        training=training,
        strategy=strategy,
        fit_loop=fit_loop,
    )


def at_batch(trainer: SimpleNamespace, batches: int) -> None:
    """A fake_trainer `batches` training batches into its run."""
    trainer.fit_loop.epoch_loop.batch_progress.total.ready = batches


def compose_task(config_name: str, tmp_path: Path, *overrides: str) -> DictConfig:
    """A quiet config of `config_name` (predict, export, ...) whose run dir is in tmp_path."""
    return compose_config(
        config_name,
        [f"paths.log_dir={tmp_path / 'logs'}", "extras.print_config=false", *overrides],
        output_dir=tmp_path / config_name,
    )


def decoded_on_device(root: Path, batch_size: int = 8) -> list[str]:
    """Overrides for a run on the photo folder `root`, decoded on the device, at toy sizes."""
    return [
        "data=folder",
        f"data.root={root}",
        "data.decode=device",
        "data.train_crop=32",
        "data.eval_resize=36",
        "data.eval_crop=32",
        f"data.batch_size={batch_size}",
        f"++data.eval_batch_size={batch_size}",
        "data.num_workers=1",
        "model=cifar_quick",
    ]
