"""run/task.py: the commands as users type them, where only a real process shows the behaviour:
DDP's second process, Hydra's multirun, and what a mistake prints."""

import csv
import json
import os
import sys
import threading
from pathlib import Path

import pytest
import torch

from imgcls import REPO_ROOT
from imgcls.eval import main as eval_main
from imgcls.run import ddp_hydra
from imgcls.train import main as train_main
from tests.helpers import CLI_QUIET, dirs_under, processes_mentioning, run_cli

FAST = ["model=cifar_quick", "trainer.max_epochs=2", *CLI_QUIET]


def assert_ok(result) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow(seconds=30)
def test_an_optuna_ddp_sweep_job_learns_counting_each_test_image_once_a_dead_rank_fails_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two Optuna trials of two processes each, one after the other in one sweep process. The
    first trains in its own dir (the child rank made no sweep of its own: the search config sets
    MULTIRUN, the child runs its one job), a log per rank, completes, and counts each of 359 test
    images once (DistributedSampler would pad them to 360, one counted twice). The second starts
    its two processes after it, and its rank 1 dies at its first step: that trial fails, the
    search goes on to its end and exits 0 (a failed trial is part of a search; a grid sweep's
    failed job exits 1: tests/test_see_runs.py), no process is left. Started as `imgcls-train`,
    the console script `pip install` made, as a user types it. A single DDP run's dir:
    tests/test_scale.py."""
    search = [
        "hparams_search=digits_optuna",
        "hydra.sweeper.params=null",  # the same settings for both trials
        "hydra.sweeper.n_trials=2",
        "trainer=ddp_sim",
        "+callbacks.fault._target_=tests.faults.FailOnRankAfterItsFirstRun",
        "+callbacks.fault.rank=1",  # only the second trial's rank 1 dies
        f"+callbacks.fault.marker={tmp_path / 'a_run_came_before'}",
        "data.test_fraction=0.1995",  # 359 of the 1,797 digits
        *FAST,
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    # the console script's Python finds the fault in tests/ as `python train.py`'s does
    paths = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    result = run_cli("imgcls-train", search)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not processes_mentioning(tmp_path)
    logs = tmp_path / "logs"
    (sweep,) = (logs / "train" / "multiruns").iterdir()  # the children made no sweep of their own
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]  # its two trials
    assert (sweep / "summary.csv").is_file()
    assert {p.name for p in (logs / "train").iterdir()} == {"multiruns"}  # no stray runs/
    for job in ("0", "1"):  # each job ran its own trial's overrides
        assert (
            f"optuna_pruning.trial={job}" in (sweep / job / ".hydra" / "overrides.yaml").read_text()
        )
    statuses = [json.loads((sweep / j / "status.json").read_text()) for j in ("0", "1")]
    assert [s["status"] for s in statuses] == ["completed", "failed"]
    assert "DDP process died" in statuses[1]["error"]

    done = sweep / "0"
    assert dirs_under(done) == {".hydra", "checkpoints", "tensorboard", "csv"}
    assert (done / "train.log").is_file()
    assert (done / "train_rank1.log").is_file()  # the trial ran on two processes
    metrics = json.loads((done / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.3  # 2 epochs of 2 x 64 images per step; chance is 0.1
    ckpt = torch.load(done / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["epoch"] in (0, 1)
    with open(done / "per_class.csv", newline="") as f:
        assert sum(int(row["support"]) for row in csv.DictReader(f)) == 359
    right = metrics["test/acc"] * 359
    assert right == pytest.approx(round(right), abs=1e-3)  # a whole number of the 359
    assert "sync_dist=True" not in result.stderr  # no warning for values already synced


def test_a_mistake_met_in_a_run_is_one_line_from_the_command(
    tmp_path: Path, command_exit, capsys: pytest.CaptureFixture
) -> None:
    """`imgcls-train`'s entry point (the console script runs it: a sweep started by it above),
    in this process, as a user types the command: one line, exit 1, no traceback."""
    args = ["model.net.name=resnet5O", f"paths.log_dir={tmp_path}", *FAST]
    assert command_exit(train_main, "imgcls-train", *args) == 1
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "Unknown model.net.name='resnet5O'. Did you mean resnet50" in out
    assert "Traceback" not in out


def test_the_eval_command_answers_help(command_exit, capsys: pytest.CaptureFixture) -> None:
    """imgcls-eval is installed, and its entry point (in this process) shows its config."""
    assert (Path(sys.executable).parent / "imgcls-eval").is_file()
    assert command_exit(eval_main, "imgcls-eval", "--help") in (0, None)
    assert "ckpt_path" in capsys.readouterr().out


class ExitedChild:
    """A DDP child process that has exited with `code` (what the observer polls); None: still
    running, until the observer's kill (then -9)."""

    def __init__(self, code: int | None) -> None:
        self.returncode = code

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            self.returncode = -9


@pytest.mark.parametrize(
    ("code", "main_leaves", "fails_the_job"),
    [
        (ddp_hydra.USER_ERROR_EXIT, True, False),  # the main process reports the same line
        (ddp_hydra.USER_ERROR_EXIT, False, True),  # it did not meet it: the job fails
        (1, True, True),  # a crash of the child's own
    ],
)
def test_a_child_that_left_on_the_jobs_own_error_does_not_replace_the_mains_line(
    monkeypatch: pytest.MonkeyPatch, code: int, main_leaves: bool, fails_the_job: bool
) -> None:
    """Every rank raises the divergence UserError at the same check; a child exiting first must
    not have the observer raise RankFailedError in the main process over its own line."""
    raised: list[int] = []
    monkeypatch.setattr(ddp_hydra.signal, "pthread_kill", lambda tid, signum: raised.append(signum))
    monkeypatch.setattr(ddp_hydra.os, "kill", lambda pid, signum: None)  # the main's last resort
    monkeypatch.setattr(ddp_hydra._Job, "done", threading.Event())
    monkeypatch.setattr(ddp_hydra._Job.done, "wait", lambda timeout: main_leaves)
    monkeypatch.setattr(ddp_hydra._Job, "failure", None)
    # a sibling still running when the first exits: the observer's own kill is not its cause
    observer = ddp_hydra.ChildRankObserver([ExitedChild(code), ExitedChild(None)])
    observer._terminate_all()
    assert bool(raised) == fails_the_job
    assert (ddp_hydra._Job.failure is not None) == fails_the_job
