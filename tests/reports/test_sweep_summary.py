"""reports/sweep_summary.py: one table for the runs below a dir, from what each run leaves
(.hydra/overrides.yaml and config.yaml, status.json, metrics.json): best first by the optimized
metric, failed jobs last, and the mean and std of jobs that differ only in fold or seed."""

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from imgcls.reports.sweep_summary import (
    SUMMARY_FILE,
    SweepSummaryCallback,
    job_dirs,
    summarize,
    write_summary,
)


def write_run(
    run: Path,
    overrides: list[str],
    status: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    optimized_metric: str | None = "val/acc_best",
) -> Path:
    """A run dir as a real run leaves it: Hydra's record, then status.json and metrics.json."""
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"task_name": "train", "optimized_metric": optimized_metric, "seed": 12345}
    OmegaConf.save(OmegaConf.create(config), run / ".hydra" / "config.yaml")
    if status is not None:
        (run / "status.json").write_text(json.dumps(status, indent=2) + "\n")
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return run


def completed(duration: float = 10.0) -> dict[str, Any]:
    return {"status": "completed", "duration_s": duration}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Two nets x 3 folds, as `-m model.net.name=a,b data.folds=3 data.fold=range(3)` numbers
    them; net b's fold 1 failed."""
    sweep = tmp_path / "multiruns" / "2026-01-01_12-00-00"
    best = {("a", 0): 0.70, ("a", 1): 0.90, ("a", 2): 0.80, ("b", 0): 0.60, ("b", 2): 0.95}
    for job, (net, fold) in enumerate((n, f) for n in "ab" for f in range(3)):
        overrides = [f"model.net.name={net}", "data.folds=3", f"data.fold={fold}"]
        if (net, fold) == ("b", 1):
            failure = {"status": "failed", "error": "UserError: no", "duration_s": 0.5}
            write_run(sweep / str(job), overrides, failure)
            continue
        value = best[net, fold]
        metrics = {"val/acc_best": value, "test/acc": value - 0.1, "lr-SGD": 0.01}
        write_run(sweep / str(job), overrides, completed(10.0 + job), metrics)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def test_job_dirs_are_every_run_below_in_job_number_order(tmp_path: Path) -> None:
    for name in ("10", "2", "1", "0", "named"):
        write_run(tmp_path / name, [])
    write_run(tmp_path / "runs" / "3", [])  # deeper: still a run
    (tmp_path / "9").mkdir()  # no .hydra/overrides.yaml: not a run
    found = [p.relative_to(tmp_path).as_posix() for p in job_dirs(tmp_path)]
    assert found == ["0", "1", "2", "10", "named", "runs/3"]  # numbers as numbers, not text
    assert job_dirs(tmp_path / "0") == [tmp_path / "0"]  # a run dir is its own root


def test_rows_best_first_by_the_optimized_metric_and_failed_jobs_last(sweep: Path) -> None:
    rows, columns, metric = summarize(sweep)
    assert metric == "val/acc_best"  # from the runs' own config
    jobs = [row for row in rows if row["status"] not in ("mean", "std")]
    assert [(r["model.net.name"], r["data.fold"]) for r in jobs] == [
        ("b", "2"),
        ("a", "1"),
        ("a", "2"),
        ("a", "0"),
        ("b", "0"),
        ("b", "1"),
    ]
    failed = jobs[-1]
    assert (failed["job"], failed["status"], failed["error"]) == ("4", "failed", "UserError: no")
    assert failed["val/acc_best"] == ""
    assert [r["duration_s"] for r in jobs[:2]] == [15.0, 11.0]
    # the sort metric first among the metrics; learning-rate curves are not results
    assert columns == [
        "job",
        "status",
        "duration_s",
        "model.net.name",
        "data.folds",
        "data.fold",
        "val/acc_best",
        "test/acc",
        "error",
    ]


def test_jobs_that_differ_only_in_their_fold_get_mean_and_std_rows(sweep: Path) -> None:
    rows, _, _ = summarize(sweep)
    repeats = [row for row in rows if row["status"] in ("mean", "std")]
    assert rows[-len(repeats) :] == repeats  # after every job
    assert [(r["job"], r["model.net.name"], r["data.fold"]) for r in repeats] == [
        ("mean of 3", "a", "*"),
        ("std of 3", "a", "*"),
        ("mean of 2", "b", "*"),  # the failed fold is not averaged in
        ("std of 2", "b", "*"),
    ]
    mean_a, std_a, mean_b, std_b = repeats
    assert mean_a["val/acc_best"] == pytest.approx(0.8)
    assert std_a["val/acc_best"] == pytest.approx(statistics.stdev([0.7, 0.9, 0.8]))  # n - 1
    assert mean_b["test/acc"] == pytest.approx((0.5 + 0.85) / 2)
    assert std_b["val/acc_best"] == pytest.approx(statistics.stdev([0.6, 0.95]))
    assert mean_a["data.folds"] == "3"  # not a repeat key: the group's own value


def test_seeds_are_repeats_and_a_single_job_has_no_statistics(tmp_path: Path) -> None:
    for job, (lr, seed, acc) in enumerate([("0.1", 1, 0.5), ("0.1", 2, 0.7), ("0.2", 1, 0.9)]):
        overrides = [f"optimizer.lr={lr}", f"seed={seed}"]
        write_run(tmp_path / str(job), overrides, completed(), {"val/acc_best": acc})
    rows, _, _ = summarize(tmp_path)
    assert [(r["job"], r["optimizer.lr"], r["seed"]) for r in rows[3:]] == [
        ("mean of 2", "0.1", "*"),
        ("std of 2", "0.1", "*"),
    ]  # lr 0.2 ran once: nothing to average
    assert rows[3]["val/acc_best"] == pytest.approx(0.6)


def test_no_statistics_without_repeat_keys(tmp_path: Path) -> None:
    for job, lr in enumerate(("0.1", "0.2")):
        write_run(tmp_path / str(job), [f"optimizer.lr={lr}"], completed(), {"val/acc_best": 0.5})
    rows, _, _ = summarize(tmp_path)
    assert [r["status"] for r in rows] == ["completed", "completed"]


def test_a_metric_one_repeat_lacks_is_left_blank_in_the_statistics(tmp_path: Path) -> None:
    write_run(tmp_path / "0", ["seed=1"], completed(), {"val/acc_best": 0.5, "test/acc": 0.4})
    write_run(tmp_path / "1", ["seed=2"], completed(), {"val/acc_best": 0.7})
    mean = summarize(tmp_path)[0][2]
    assert mean["val/acc_best"] == pytest.approx(0.6)
    assert mean["test/acc"] == ""  # a mean of one of the two would mislead


def test_a_loss_is_minimized_and_the_order_can_be_asked_for(tmp_path: Path) -> None:
    for job, loss in enumerate((0.3, 0.1, 0.2)):
        metrics = {"val/loss": loss, "val/acc_best": 1 - loss}
        write_run(tmp_path / str(job), [f"seed={job}"], completed(), metrics, "val/loss")
    rows, columns, metric = summarize(tmp_path)
    assert metric == "val/loss"
    assert [r["job"] for r in rows[:3]] == ["1", "2", "0"]  # lowest first
    assert columns[3:5] == ["seed", "val/loss"]
    by_acc, _, _ = summarize(tmp_path, metric="val/acc_best", direction="minimize")
    assert [r["job"] for r in by_acc[:3]] == ["0", "2", "1"]


def test_status_and_metrics_a_run_may_lack(tmp_path: Path) -> None:
    """A run from before status files, one killed before writing any, one whose metric is NaN."""
    write_run(tmp_path / "0", ["optimizer.lr=0.1"], None, {"val/acc_best": 0.4})
    write_run(tmp_path / "1", ["optimizer.lr=0.2"], None, None)
    write_run(tmp_path / "2", ["optimizer.lr=0.3"], completed(), {"val/acc_best": float("nan")})
    write_run(tmp_path / "3", ["optimizer.lr=0.4"], completed(), {"val/acc_best": 0.3})
    rows, _, _ = summarize(tmp_path)
    jobs = {r["job"]: r for r in rows}
    assert jobs["0"]["status"] == "completed"  # metrics, no status: it ended
    assert jobs["1"]["status"] == "unknown"
    assert [r["job"] for r in rows] == ["0", "3", "1", "2"]  # no number ranks last


def test_a_nan_metric_among_repeats_leaves_the_summary_whole(tmp_path: Path) -> None:
    nan = float("nan")
    write_run(tmp_path / "0", ["seed=1"], completed(), {"val/acc_best": 0.5, "val/loss": nan})
    write_run(tmp_path / "1", ["seed=2"], completed(), {"val/acc_best": 0.7, "val/loss": 0.3})
    rows, _, _ = summarize(tmp_path)
    assert [r["status"] for r in rows] == ["completed", "completed", "mean", "std"]
    assert rows[2]["val/acc_best"] == pytest.approx(0.6)
    assert math.isnan(rows[2]["val/loss"])  # a diverged repeat: its mean says so


def test_write_summary_writes_the_rows_and_prints_the_table(
    sweep: Path, capsys: pytest.CaptureFixture
) -> None:
    path, rows = write_summary(sweep)
    assert path == sweep / SUMMARY_FILE
    with open(path, newline="") as f:
        written = list(csv.DictReader(f))
    assert [r["job"] for r in written] == [str(r["job"]) for r in rows]
    assert written[0]["val/acc_best"] == "0.95"
    assert written[-1]["job"] == "std of 2"
    out = capsys.readouterr().out
    assert "6 runs, best first by val/acc_best" in out  # jobs counted, not the statistics rows
    assert "failed" in out
    assert job_dirs(sweep) == [sweep / str(n) for n in range(6)]  # summary.csv adds no run


@pytest.mark.parametrize(("fail_when", "exits"), [("any", True), ("all", False), ("never", False)])
def test_a_sweep_with_a_failed_job_exits_by_its_rule(
    sweep: Path, fail_when: str, exits: bool, capsys: pytest.CaptureFixture
) -> None:
    config = OmegaConf.create(
        {"hydra": {"sweep": {"dir": str(sweep)}}, "optimized_metric": "val/acc_best"}
    )
    callback = SweepSummaryCallback(fail_when)
    if exits:
        with pytest.raises(SystemExit) as exit_:
            callback.on_multirun_end(config)
        assert exit_.value.code == 1
    else:
        callback.on_multirun_end(config)
    assert "1 of 6 jobs failed" in capsys.readouterr().err
    assert (sweep / SUMMARY_FILE).is_file()


def test_an_unknown_fail_when_is_refused() -> None:
    with pytest.raises(ValueError, match="fail_when must be one of"):
        SweepSummaryCallback("some")


def test_an_optuna_search_shows_each_trial_its_state_and_epochs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The sweeper's facts (trial, epochs) as columns, its overrides that reach the study left
    out, a pruned trial ranked after the completed ones with the value it was pruned at, and a
    pruned trial is no failure."""
    reach = ["+callbacks/sweep@callbacks=optuna_pruning", "callbacks.optuna_pruning.trial=0"]
    ends = [
        ({"status": "completed", "trial": 0, "epochs": 3}, {"val/acc_best": 0.9}),
        ({"status": "pruned", "trial": 1, "epochs": 2, "metrics": {"val/acc_best": 0.95}}, None),
        ({"status": "failed", "trial": 2, "error": "RuntimeError: CUDA out of memory"}, None),
    ]
    for job, (status, metrics) in enumerate(ends):
        write_run(tmp_path / str(job), [f"optimizer.lr=0.{job + 1}", *reach], status, metrics)
    rows, columns, _ = summarize(tmp_path)
    assert columns == ["job", "status", "duration_s", "trial", "epochs", "optimizer.lr",
                       "val/acc_best", "error"]  # fmt: skip
    assert [(r["status"], r["trial"], r["epochs"], r["val/acc_best"]) for r in rows] == [
        ("completed", 0, 3, 0.9),
        ("pruned", 1, 2, 0.95),
        ("failed", 2, "", ""),
    ]
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    SweepSummaryCallback("all").on_multirun_end(config)  # no exit: 1 of 3 failed, not all
    assert "1 of 3 jobs failed" in capsys.readouterr().err
