"""Runs in company: several at once, resumed, evaluated on several processes, and nothing mixed,
lost or miscounted. Each test reproduces what went wrong before (issue: runs in company)."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from imgcls import REPO_ROOT
from imgcls.data.sources.digits import DigitsDataModule
from imgcls.data.sources.fake import FakeDataModule
from imgcls.run.dirs import LOCK_FILE
from imgcls.run.record import run_recorded
from imgcls.train import train
from imgcls.utils.errors import UserError
from tests.helpers import CLI_QUIET, fake_trainer
from tests.test_hostile import snapshot

# short runs whose schedule does not span the run (a resume may lengthen it)
SHORT = [
    "model=lenet",
    "scheduler=none",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "test=false",
]


def run_in(tmp_path: Path, name: str) -> Path:
    return tmp_path / "logs" / "train" / "runs" / name


def train_as_cli(make_cfg, *overrides: str, run_dir: Path) -> dict[str, float]:
    """train() on the config the command line would compose, with the record of its overrides
    that Hydra's command line keeps (.hydra/overrides.yaml; an in-process run has none)."""
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    metrics, _ = train(make_cfg(*overrides, run_dir=run_dir))
    return metrics


def lock_for(run: Path, pid: int, host: str | None = None) -> None:
    info = {"pid": pid, "host": host or socket.gethostname()}
    (run / LOCK_FILE).write_text(json.dumps(info))


def dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


# -- one dir each -------------------------------------------------------------------------------
# -- resuming the right run ---------------------------------------------------------------------
def test_ckpt_path_last_takes_the_newest_run_of_the_same_command(
    make_cfg, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mine, other = ["optimizer.lr=0.05"], ["optimizer.lr=0.02"]
    train_as_cli(make_cfg, *SHORT, *mine, "trainer.max_epochs=1", run_dir=run_in(tmp_path, "a"))
    train_as_cli(make_cfg, *SHORT, *other, "trainer.max_epochs=1", run_dir=run_in(tmp_path, "b"))
    assert (run_in(tmp_path, "b") / "checkpoints" / "last.ckpt").stat().st_mtime >= (
        run_in(tmp_path, "a") / "checkpoints" / "last.ckpt"
    ).stat().st_mtime  # b is the newest, but of another command

    # a resume may add loggers, callbacks and epochs: still the same command
    cfg = make_cfg(*SHORT, *mine, "trainer.max_epochs=2", "ckpt_path=last", "logger=csv")
    with caplog.at_level("INFO"):
        _, objects = train(cfg)
    assert cfg.paths.output_dir == str(run_in(tmp_path, "a"))
    assert f"resuming {run_in(tmp_path, 'a')}" in caplog.text  # it says which
    assert objects["trainer"].current_epoch == 2

    with pytest.raises(UserError, match=r"no last\.ckpt of this command.*another command is"):
        train(make_cfg(*SHORT, "optimizer.lr=0.01", "ckpt_path=last", run_dir=tmp_path / "c"))


def test_a_run_still_training_is_never_resumed_into(make_cfg, tmp_path: Path) -> None:
    run = run_in(tmp_path, "a")
    train_as_cli(make_cfg, *SHORT, "trainer.max_epochs=1", run_dir=run)
    lock_for(run, os.getppid())  # a live process holds it
    before = snapshot(run)

    last = make_cfg(*SHORT, "trainer.max_epochs=2", "ckpt_path=last", run_dir=tmp_path / "r1")
    with pytest.raises(UserError, match=r"still being trained \(pid"):
        run_recorded(last, lambda: train(last))
    path = make_cfg(
        *SHORT, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", run_dir=tmp_path / "r2"
    )
    with pytest.raises(UserError, match=rf"{LOCK_FILE}"):
        run_recorded(path, lambda: train(path))
    assert snapshot(run) == before  # not a byte of the live run touched
    assert json.loads((tmp_path / "r2" / "status.json").read_text())["status"] == "failed"

    lock_for(run, dead_pid())  # it was killed: resumable
    train(make_cfg(*SHORT, "trainer.max_epochs=2", "ckpt_path=last", run_dir=tmp_path / "r3"))
    assert not (run / LOCK_FILE).exists()


# -- a resumed run keeps its history ------------------------------------------------------------
def epochs_in_csv(run: Path) -> list[int]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return sorted({int(r["epoch"]) for r in rows if r.get("val/acc")})


def test_a_resume_keeps_every_epoch_best_and_checkpoint(make_cfg, tmp_path: Path) -> None:
    run = run_in(tmp_path, "a")
    # mode=min: no epoch after the first is a new "best", so Lightning alone would stop
    # refreshing last.ckpt after epoch 0
    never_better = "callbacks.model_checkpoint.mode=min"
    first, _ = train(make_cfg(*SHORT, never_better, "trainer.max_epochs=2", run_dir=run))
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 6  # written at every epoch

    resumed, _ = train(
        make_cfg(
            *SHORT,
            never_better,
            "trainer.max_epochs=4",
            f"ckpt_path={last}",
            run_dir=tmp_path / "r",
        )
    )
    assert torch.load(last, weights_only=True)["global_step"] == 12
    assert epochs_in_csv(run) == [0, 1, 2, 3]  # the epochs before the resume are kept
    with open(run / "csv" / "metrics.csv", newline="") as f:
        accs = [float(r["val/acc"]) for r in csv.DictReader(f) if r.get("val/acc")]
    assert resumed["val/acc_best"] == pytest.approx(max(accs))  # over all 4 epochs
    assert resumed["val/acc_best"] >= first["val/acc_best"]


def test_a_run_extended_by_an_epoch_trains_it_on_its_stretched_schedule(
    make_cfg, tmp_path: Path
) -> None:
    """lightning-hydra-template's test_train_resume: 1 epoch, then resumed to 2, here with the
    default cosine schedule spanning the run; one with no epoch left is one line before any
    write."""
    run = run_in(tmp_path, "a")
    cosine = [s for s in SHORT if not s.startswith("scheduler")]  # the default: spans the run
    train_as_cli(make_cfg, *cosine, "trainer.max_epochs=2", run_dir=run)
    before = snapshot(run)
    none_left = make_cfg(*cosine, "trainer.max_epochs=1", "ckpt_path=last", run_dir=tmp_path / "r")
    with pytest.raises(UserError, match=r"has trained 2 of its 2 epochs.*max_epochs above 2"):
        run_recorded(none_left, lambda: train(none_left))
    assert snapshot(run) == before
    longer = make_cfg(*cosine, "trainer.max_epochs=3", "ckpt_path=last", run_dir=tmp_path / "s")
    _, objects = train(longer)
    assert objects["trainer"].global_step == 9
    assert epochs_in_csv(run) == [0, 1, 2]
    assert objects["trainer"].optimizers[0].param_groups[0]["lr"] == pytest.approx(0, abs=1e-6)


# -- every image counted once ------------------------------------------------------------------
@pytest.mark.parametrize("source", ["files", "in memory"])
def test_evaluation_under_ddp_counts_every_image_once(source: str) -> None:
    seen, train_sizes = [], []
    for rank in range(2):
        if source == "files":
            dm = FakeDataModule(
                train_size=9, val_size=11, test_size=11, batch_size=4, num_workers=0
            )
        else:
            dm = DigitsDataModule(batch_size=64)
        dm.trainer = fake_trainer(world_size=2, rank=rank)
        dm.setup()
        loader = dm.test_dataloader()
        if source == "files":
            seen += list(loader.sampler)
        else:
            seen += loader.sampler.indices().tolist()
        train_sizes.append(len(dm.train_dataloader().sampler))
    assert sorted(seen) == list(range(len(dm.splits.test)))  # each once, none padded in
    assert len(set(train_sizes)) == 1  # training shares stay equal (padded)


# -- four runs at once from a shell --------------------------------------------------------------
@pytest.mark.slow(seconds=25)
def test_four_runs_at_once_two_of_them_resuming_each_keep_their_own_dir(
    make_cfg, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    base = [
        *SHORT,
        f"paths.log_dir={logs}",
        *CLI_QUIET,
    ]
    commands = {"x": [*base, "optimizer.lr=0.05"], "y": [*base, "optimizer.lr=0.02"]}

    def start(args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "train.py"), *args],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    for name, lr in (("x", "optimizer.lr=0.05"), ("y", "optimizer.lr=0.02")):  # to resume
        train_as_cli(make_cfg, *SHORT, lr, "trainer.max_epochs=1", run_dir=run_in(tmp_path, name))
    first_runs = set((logs / "train" / "runs").iterdir())
    at_once = [
        start([*commands["x"], "trainer.max_epochs=2", "ckpt_path=last"]),
        start([*commands["y"], "trainer.max_epochs=2", "ckpt_path=last"]),
        start([*commands["x"], "trainer.max_epochs=1"]),
        start([*commands["y"], "trainer.max_epochs=1", "model=cifar_quick"]),
    ]
    for process in at_once:
        assert process.wait(timeout=300) == 0, process.stderr.read()[-2000:]

    runs = set((logs / "train" / "runs").iterdir())
    trained = [r for r in runs if (r / "checkpoints").is_dir()]
    assert len(trained) == 4  # two resumed in place, two new ones
    for run in trained:
        status = json.loads((run / "status.json").read_text())
        assert status["status"] == "completed", run
        overrides = (run / ".hydra" / "overrides.yaml").read_text()
        hparams = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        lr = hparams["hyper_parameters"]["optimizer"]["lr"]
        assert f"optimizer.lr={lr}" in overrides  # its checkpoint is its own command's
        epochs = epochs_in_csv(run)
        assert epochs == ([0, 1] if run in first_runs else [0]), run
        assert not (run / LOCK_FILE).exists()


# -- one wandb run per sweep job ------------------------------------------------------------------
def test_each_job_of_a_process_gets_its_own_wandb_run(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sweep jobs run one after another in one process; task_main ends each job's run."""
    from imgcls.run.task import finish_wandb_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    ids = []
    for job in ("0", "1"):
        cfg = make_cfg(*SHORT, "trainer.max_epochs=1", "logger=wandb", run_dir=tmp_path / job)
        _, objects = train(cfg)
        ids.append(objects["logger"][0].experiment.id)
        finish_wandb_run()  # what task_main does after every job
    assert ids[0] != ids[1]
