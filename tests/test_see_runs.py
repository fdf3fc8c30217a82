"""Seeing runs and sweeps: TensorBoard's scalars, images and hparams, summary.csv after grid and
Optuna sweeps (failed and pruned jobs included, two searches sharing one study), and both
notebooks executed on real runs."""

import copy
import csv
import json
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
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


def run_notebook(name: str, monkeypatch: pytest.MonkeyPatch, *passes: dict[str, str]) -> list[str]:
    """Execute notebooks/<name> top to bottom once per pass, each with its environment variables
    (`passes`), in one fresh kernel of this Python: its namespace is reset before each pass, so
    a pass runs as in a kernel of its own, but for the imports, paid once. Any cell that raises
    fails the test. Returns what each pass's cells printed."""
    import nbformat
    from nbclient import NotebookClient

    # the kernel is started as `python`: make it this environment's
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(REPO_ROOT / "notebooks" / name, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells), "commit notebooks stripped"
    passes_run = nbformat.v4.new_notebook(metadata=notebook.metadata)
    spans = []
    for env in passes:
        start = f"%reset -f\nimport os\nos.environ.update({env!r})"
        passes_run.cells.append(nbformat.v4.new_code_cell(start))
        first = len(passes_run.cells)
        passes_run.cells += copy.deepcopy(notebook.cells)
        spans.append(passes_run.cells[first:])
    client = NotebookClient(passes_run, timeout=300, kernel_name="python3")
    client.execute(cwd=str(REPO_ROOT))
    printed = []
    for cells in spans:
        outputs = [out for cell in cells for out in cell.get("outputs", [])]
        kinds = {out["output_type"] for out in outputs}
        assert "error" not in kinds
        assert "display_data" in kinds  # the plots and tables were drawn
        printed.append(
            "".join(out.get("text", "") for out in outputs if out["output_type"] == "stream")
        )
    return printed


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow(seconds=15)
def test_tensorboard_holds_curves_pictures_and_hparams_the_notebook_shows_it_and_an_interrupted_run(
    make_cfg, tmp_path: Path, monkeypatch
):
    """A run's TensorBoard events: its curves, pictures and hparams. The run notebook shows
    that run, and one stopped before its test (and before a best checkpoint): its curves are
    drawn, and the missing report and checkpoint are named with the reason, not a
    FileNotFoundError."""
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

    stopped = tmp_path / "stopped"
    train(make_cfg(*QUICK, "trainer.max_epochs=1", "test=false", run_dir=stopped))
    (stopped / "status.json").write_text(json.dumps({"status": "interrupted"}))
    (stopped / "checkpoints" / "best.ckpt").unlink()
    _, printed = run_notebook(
        "01_inspect_run.ipynb",
        monkeypatch,
        {"IMGCLS_RUN_DIR": str(run)},
        {"IMGCLS_RUN_DIR": str(stopped)},
    )
    why = "the run was stopped (Ctrl-C, a kill) before it got there"
    assert f"Not in this run: per_class.csv, confusion.png ({why})" in printed
    assert f"Not in this run: checkpoints/best.ckpt ({why})" in printed


@pytest.mark.slow(seconds=22)
def test_three_fold_grid_sweep_goes_past_failed_jobs_into_summary_with_mean_and_std(
    tmp_path: Path, monkeypatch
) -> None:
    """Two nets (one that cannot be built) x 3 folds: the failed jobs are recorded and the
    sweep goes on; the completed folds end the summary with their mean and std rows."""
    grid = ["-m", "model.net.name=cifar_quick,no_such_net", "data.folds=3", "data.fold=range(3)"]
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
    assert "3 of 6 jobs failed" in result.stderr
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    assert (sweep / "multirun.yaml").is_file()
    rows = read_rows(sweep / "summary.csv")
    assert len(rows) == 8
    done = [r for r in rows if r["status"] == "completed"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert {r["model.net.name"] for r in done} == {"cifar_quick"}
    assert sorted(r["data.fold"] for r in done) == ["0", "1", "2"]
    assert rows[:3] == done  # completed first, best first
    best = [float(r["val/acc_best"]) for r in done]
    assert best == sorted(best, reverse=True)
    assert len({r["val/acc"] for r in done}) > 1  # each fold validated on its own images
    assert all("Unknown model.net.name='no_such_net'" in r["error"] for r in failed)
    assert all(float(r["duration_s"]) > 0 for r in done + failed)
    mean, std = rows[6:]
    assert (mean["job"], mean["status"], mean["data.fold"]) == ("mean of 3", "mean", "*")
    assert (std["job"], std["status"], std["model.net.name"]) == ("std of 3", "std", "cifar_quick")
    for metric in ("val/acc_best", "val/f1_macro", "test/acc", "test/acc_balanced"):
        values = [float(r[metric]) for r in done]
        assert float(mean[metric]) == pytest.approx(statistics.mean(values)), metric
        assert float(std[metric]) == pytest.approx(statistics.stdev(values)), metric
    assert "val/acc_best" in result.stdout  # the printed table
    assert "6 runs" in result.stdout  # it counts jobs, not the two rows
    assert "failed" in result.stdout

    (sweep / "summary.csv").unlink()  # imgcls-summary rebuilds the same table
    write_summary(sweep)
    assert read_rows(sweep / "summary.csv") == rows
    run_notebook("02_compare_sweep.ipynb", monkeypatch, {"IMGCLS_SWEEP_DIR": str(sweep)})


@pytest.mark.slow(seconds=25)
def test_two_optuna_searches_at_once_share_one_study_each_trial_once(tmp_path: Path) -> None:
    """Two sweep processes started together on one journal study: one runs its 2 trials at once
    (n_jobs=2, a process each) and its pruner stops them after their first epoch; the other
    cannot succeed (a fixed batch size of 0) and stops after its first trial with that line.
    Every trial ran once, with its own parameters and run dir."""
    import optuna

    from imgcls.reports.optuna_study import open_storage, sweep_study

    storage = tmp_path / "study.journal"
    search = [
        "-m",
        "hparams_search=digits_optuna",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=test",
        "hydra.sweeper.params=null",
        "optimizer.lr=tag(log,interval(0.01,0.1))",
        *SWEEP_QUICK,
        "trainer.max_epochs=2",  # a trial the pruner missed would train on and test
        "callbacks.eval_report=null",
    ]
    pruning = [
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra/sweeper/pruner=threshold",
        "hydra.sweeper.pruner.lower=1.01",  # val/acc_best never reaches it
        "hydra.sweeper.pruner.n_warmup_steps=0",
        f"paths.log_dir={tmp_path / 'a'}",
    ]
    hopeless = ["hydra.sweeper.n_trials=3", "data.batch_size=0", f"paths.log_dir={tmp_path / 'b'}"]
    with ThreadPoolExecutor(2) as pool:
        started = [
            pool.submit(run_cli, "train.py", [*search, *extra]) for extra in (pruning, hopeless)
        ]
        pruned, stopped = (job.result() for job in started)

    assert pruned.returncode == 0, pruned.stderr[-3000:]  # a pruned trial did not fail
    (sweep,) = (tmp_path / "a" / "train" / "multiruns").iterdir()
    rows = read_rows(sweep / "summary.csv")
    assert [(r["status"], r["epochs"]) for r in rows] == [("pruned", "1"), ("pruned", "1")]
    assert all(float(r["val/acc_best"]) < 1.01 for r in rows)  # the value it was pruned at
    for row in rows:  # its run dir kept, and no test after the pruning
        run = sweep / row["job"]
        assert json.loads((run / "status.json").read_text())["status"] == "pruned"
        assert (run / "train.log").is_file()
        assert not (run / "metrics.json").exists()
        assert (run / "console.log").is_file()  # a process of its own

    out = stopped.stdout + stopped.stderr
    assert stopped.returncode == 1
    assert "The search stops: trial" in out
    assert "data.batch_size=0 is not allowed" in out
    assert "1 of 1 jobs failed" in out
    assert "Traceback" not in out
    (hopeless_sweep,) = (tmp_path / "b" / "train" / "multiruns").iterdir()
    (row,) = read_rows(hopeless_sweep / "summary.csv")
    assert row["status"] == "failed"

    study = optuna.load_study(study_name="test", storage=open_storage(str(storage)))
    assert len(sweep_study(sweep).trials) == 3  # as notebooks/02_compare_sweep.ipynb finds it
    trials = {t.number: t for t in study.trials}
    assert sorted(trials) == [0, 1, 2]  # each trial once
    assert sorted(int(r["trial"]) for r in [*rows, row]) == [0, 1, 2]
    assert len({t.params["optimizer.lr"] for t in trials.values()}) == 3  # its own parameters
    assert sorted(t.state.name for t in trials.values()) == ["FAIL", "PRUNED", "PRUNED"]


def test_model_graph_on_request(make_cfg, tmp_path: Path) -> None:
    train(make_cfg(*QUICK, "trainer.max_epochs=1", "logger.tensorboard.log_graph=true"))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert events.Tags()["graph"]
