"""task.py: the commands as users type them, where only a real process shows the behaviour:
DDP's second process, Hydra's multirun, and what a mistake prints."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import run_cli

FAST = [
    "model=cifar_quick",
    "trainer.max_epochs=2",
    "extras.print_config=false",
    "callbacks.rich_progress_bar=null",
]


def tree(root: Path) -> set[str]:
    """Every dir under root, as relative paths (files inside them don't matter here)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()}


def assert_ok(result) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_ddp_sim_trains_in_one_run_dir_and_counts_every_test_image_once(tmp_path: Path) -> None:
    """Two processes, one run: one dir, a log per rank, a net that learns, and each of 359 test
    images counted once (DistributedSampler would pad them to 360, one counted twice)."""
    odd_test_split = "data.test_fraction=0.1995"  # 359 of the 1,797 digits
    args = ["trainer=ddp_sim", odd_test_split, f"paths.log_dir={tmp_path}", *FAST]
    result = run_cli("train.py", args)
    assert_ok(result)
    (run,) = (tmp_path / "train" / "runs").iterdir()
    assert tree(tmp_path) == {
        "train",
        "train/runs",
        run.relative_to(tmp_path).as_posix(),
        *(
            f"{run.relative_to(tmp_path)}/{d}"
            for d in (".hydra", "checkpoints", "tensorboard", "csv")
        ),
    }
    assert (run / "train.log").is_file()
    assert (run / "train_rank1.log").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.3  # 2 epochs of 2 x 64 images per step; chance is 0.1
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["epoch"] in (0, 1)
    with open(run / "per_class.csv", newline="") as f:
        assert sum(int(row["support"]) for row in csv.DictReader(f)) == 359
    right = metrics["test/acc"] * 359
    assert right == pytest.approx(round(right), abs=1e-3)  # a whole number of the 359
    assert "sync_dist=True" not in result.stderr  # no warning for values already synced


@pytest.mark.slow
def test_multirun_with_ddp_makes_one_dir_per_job(tmp_path: Path) -> None:
    args = ["-m", "optimizer.lr=0.01,0.1", "trainer=ddp_sim", f"paths.log_dir={tmp_path}", *FAST]
    result = run_cli("train.py", args)
    assert_ok(result)
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml", "summary.csv"]
    assert {p.name for p in (tmp_path / "train").iterdir()} == {"multiruns"}  # no stray runs/
    for job, lr in (("0", "0.01"), ("1", "0.1")):
        overrides = (sweep / job / ".hydra" / "overrides.yaml").read_text()
        assert f"optimizer.lr={lr}" in overrides
        assert json.loads((sweep / job / "metrics.json").read_text())["test/acc"] > 0
        assert (sweep / job / "train_rank1.log").is_file()
        assert (sweep / job / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.slow
def test_unknown_model_name_is_one_clear_line(tmp_path: Path) -> None:
    result = run_cli("train.py", ["model.net.name=resnet5O", f"paths.log_dir={tmp_path}", *FAST])
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert "Unknown model.net.name='resnet5O'. Did you mean resnet50" in out
    assert "Traceback" not in out


@pytest.mark.slow
def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "imgcls-eval"
    assert script.is_file()
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "ckpt_path" in result.stdout
