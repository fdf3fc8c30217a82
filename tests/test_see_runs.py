"""Seeing runs and sweeps: TensorBoard's scalars, images and hparams, summary.csv after grid and
Optuna sweeps (failed jobs included), and both notebooks executed on real runs."""

import csv
import json
import os
import statistics
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from imgcls import REPO_ROOT
from imgcls.reports.sweep_summary import write_summary
from imgcls.train import train
from tests.helpers import CLI_QUIET, run_cli

QUICK = ["model=cifar_quick", "optimizer.lr=0.05", "+trainer.limit_train_batches=4"]
SWEEP_QUICK = [
    "model=cifar_quick",
    "+trainer.limit_train_batches=4",
    "trainer.max_epochs=1",
    *CLI_QUIET,
]


def run_notebook(name: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """Execute notebooks/<name> top to bottom in a fresh kernel of this Python; any cell that
    raises fails the test. Returns what its cells printed."""
    import nbformat
    from nbclient import NotebookClient

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # the kernel is started as `python`: make it this environment's
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(REPO_ROOT / "notebooks" / name, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells), "commit notebooks stripped"
    client = NotebookClient(notebook, timeout=300, kernel_name="python3")
    client.execute(cwd=str(REPO_ROOT))
    kinds = {out["output_type"] for cell in notebook.cells for out in cell.get("outputs", [])}
    assert "error" not in kinds
    assert "display_data" in kinds  # the plots and tables were drawn
    return "".join(
        out.get("text", "")
        for cell in notebook.cells
        for out in cell.get("outputs", [])
        if out["output_type"] == "stream"
    )


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_tensorboard_holds_curves_pictures_and_hparams(make_cfg, tmp_path: Path, monkeypatch):
    cfg = make_cfg(*QUICK, "trainer.max_epochs=2", "trainer.log_every_n_steps=2")
    train(cfg)
    run = tmp_path / "run"
    assert OmegaConf.load(run / ".hydra" / "config.yaml") == cfg  # the settled config, saved
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/acc_top5",
        "val/acc_best",
        "test/loss",
        "test/acc",
        "test/acc_top5",
        "lr-SGD",
        "perf/images_per_sec",
        "perf/data_wait_share",
    } <= set(tags["scalars"])
    images = set(tags["images"])
    assert {"train/augmented_batch", "val/confusion", "test/confusion"} <= images
    assert "test/misclassified" in images
    assert len(events.Images("val/confusion")) == 2  # one per validation epoch, no sanity check

    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["optimizer/lr"].number_value == pytest.approx(0.05)
    assert hparams["model/net/name"].string_value == "cifar_quick"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metric_tags = {m.name.tag for m in experiment.experiment.metric_infos}
    assert {"val/acc_best", "test/acc"} <= metric_tags  # the tab sorts runs by these

    assert not tags["graph"]  # the graph is off by default
    assert (run / "csv" / "metrics.csv").is_file()
    run_notebook("01_inspect_run.ipynb", monkeypatch, IMGCLS_RUN_DIR=str(run))


@pytest.mark.slow(seconds=20)
def test_the_run_notebook_shows_an_interrupted_run_and_says_what_is_missing(
    make_cfg, tmp_path: Path, monkeypatch
) -> None:
    """Stopped before its test (and before a best checkpoint): the curves are drawn, and the
    missing report and checkpoint are named with the reason, not a FileNotFoundError."""
    train(make_cfg(*QUICK, "trainer.max_epochs=1", "test=false"))
    run = tmp_path / "run"
    (run / "status.json").write_text(json.dumps({"status": "interrupted"}))
    (run / "checkpoints" / "best.ckpt").unlink()
    printed = run_notebook("01_inspect_run.ipynb", monkeypatch, IMGCLS_RUN_DIR=str(run))
    stopped = "the run was stopped (Ctrl-C, a kill) before it got there"
    assert f"Not in this run: per_class.csv, confusion.png ({stopped})" in printed
    assert f"Not in this run: checkpoints/best.ckpt ({stopped})" in printed


@pytest.mark.slow(seconds=25)
def test_five_fold_grid_sweep_goes_past_failed_jobs_into_summary_with_mean_and_std(
    tmp_path: Path, monkeypatch
) -> None:
    """Two nets (one that cannot be built) x 5 folds: the failed jobs are recorded and the
    sweep goes on; the completed folds end the summary with their mean and std rows."""
    grid = ["-m", "model.net.name=cifar_quick,no_such_net", "data.folds=5", "data.fold=range(5)"]
    quick = [
        *SWEEP_QUICK,
        "+trainer.limit_val_batches=2",
        "+trainer.limit_test_batches=2",
        "callbacks.training_batch_grid=null",
        "callbacks.validation_confusion=null",
        f"paths.log_dir={tmp_path}",
    ]
    result = run_cli("train.py", [*grid, *quick])
    assert result.returncode == 1, result.stderr[-3000:]  # so CI sees the failed jobs
    assert "5 of 10 jobs failed" in result.stderr
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    rows = read_rows(sweep / "summary.csv")
    assert len(rows) == 12
    done = [r for r in rows if r["status"] == "completed"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert {r["model.net.name"] for r in done} == {"cifar_quick"}
    assert sorted(r["data.fold"] for r in done) == ["0", "1", "2", "3", "4"]
    assert rows[:5] == done  # completed first, best first
    best = [float(r["val/acc_best"]) for r in done]
    assert best == sorted(best, reverse=True)
    assert len({r["val/acc"] for r in done}) > 1  # each fold validated on its own images
    assert all("Unknown model.net.name='no_such_net'" in r["error"] for r in failed)
    assert all(float(r["duration_s"]) > 0 for r in done + failed)
    mean, std = rows[10:]
    assert (mean["job"], mean["status"], mean["data.fold"]) == ("mean of 5", "mean", "*")
    assert (std["job"], std["status"], std["model.net.name"]) == ("std of 5", "std", "cifar_quick")
    for metric in ("val/acc_best", "val/f1_macro", "test/acc", "test/acc_balanced"):
        values = [float(r[metric]) for r in done]
        assert float(mean[metric]) == pytest.approx(statistics.mean(values)), metric
        assert float(std[metric]) == pytest.approx(statistics.stdev(values)), metric
    assert "val/acc_best" in result.stdout  # the printed table
    assert "10 runs" in result.stdout  # it counts jobs, not the two rows
    assert "failed" in result.stdout

    (sweep / "summary.csv").unlink()  # imgcls-summary rebuilds the same table
    write_summary(sweep)
    assert read_rows(sweep / "summary.csv") == rows
    run_notebook("02_compare_sweep.ipynb", monkeypatch, IMGCLS_SWEEP_DIR=str(sweep))


@pytest.mark.slow(seconds=15)
def test_optuna_records_failed_trials_and_resumes_from_sqlite(tmp_path: Path) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    search = [
        "-m",
        "hparams_search=digits_optuna",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=test",
        "hydra.sweeper.params=null",
        "optimizer.lr=interval(-0.1,0.1)",  # a negative lr fails, before any work
        *SWEEP_QUICK,
        f"paths.log_dir={tmp_path}",
    ]
    result = run_cli("train.py", [*search, "hydra.sweeper.n_trials=3"])
    assert result.returncode == 0, result.stderr[-3000:]  # a search fails only if all trials do
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    rows = read_rows(sweep / "summary.csv")
    assert len(rows) == 3
    for row in rows:
        negative = float(row["optimizer.lr"]) < 0
        assert row["status"] == ("failed" if negative else "completed"), row
        assert ("optimizer.lr=" in row["error"]) == negative
    assert {"failed", "completed"} == {r["status"] for r in rows}  # the seed gives both
    study = optuna.load_study(study_name="test", storage=storage)
    states = sorted(t.state.name for t in study.trials)
    assert states == sorted("FAIL" if r["status"] == "failed" else "COMPLETE" for r in rows)

    # resumed for two more trials that fail whatever their lr (before any work): a search whose
    # every trial failed still ends with its summary, and exits with code 1
    result = run_cli("train.py", [*search, "hydra.sweeper.n_trials=2", "data.batch_size=0"])
    out = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "2 of 2 jobs failed" in out
    assert "data.batch_size=0 is not allowed" in out
    assert len(optuna.load_study(study_name="test", storage=storage).trials) == 5
    (_, resumed) = sorted((tmp_path / "train" / "multiruns").iterdir())
    resumed_rows = read_rows(resumed / "summary.csv")
    assert [r["status"] for r in resumed_rows] == ["failed", "failed"]
    # the seeded sampler goes on from the kept trials instead of repeating the first
    assert not {r["optimizer.lr"] for r in resumed_rows} & {r["optimizer.lr"] for r in rows}


def test_model_graph_on_request(make_cfg, tmp_path: Path) -> None:
    train(make_cfg(*QUICK, "trainer.max_epochs=1", "logger.tensorboard.log_graph=true"))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert events.Tags()["graph"]
