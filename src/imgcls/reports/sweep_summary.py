"""One table for a sweep, or for any set of runs: `summary.csv` plus a rich table.

Written after every multirun into the sweep dir (a Hydra callback, configs/hydra/default.yaml),
and rebuilt on demand for any dir holding runs: `imgcls-summary logs/train/multiruns/<time>`,
`imgcls-summary logs/train/runs`. One row per job: its overrides, its status (completed, failed
with the error, interrupted, pruned), its duration and its final metrics, best first by the
optimized metric; failed jobs last. In an Optuna search each row also says its trial's number
and the epochs it trained (a pruned trial: the epoch it was stopped at, and the value it had).

Where jobs differ only in their fold (`data.fold`, k-fold
cross-validation) or seed, two rows follow them: the mean and the standard deviation (n - 1) of
every metric over those completed jobs.
"""

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from imgcls.reports.optuna_study import PRUNING_GROUP, PRUNING_KEY
from imgcls.utils.paths import STATUS_FILE

SUMMARY_FILE = "summary.csv"
# learning rates per param group are curves, not results
SKIPPED_METRIC_PREFIXES = ("lr-",)
# overrides that repeat an experiment rather than change it: their jobs are averaged
REPEAT_KEYS = ("data.fold", "seed")
# the status column of the rows that summarize repeated jobs (not jobs themselves)
REPEAT_STATISTICS = ("mean", "std")
# facts the Optuna sweeper adds to a trial's status.json: columns after the status
TRIAL_FACTS = ("trial", "epochs")
# overrides the Optuna sweeper adds to each trial to reach its study (the trial column says it)
SWEEPER_OVERRIDES = (PRUNING_GROUP.split("=")[0].lstrip("+"), f"{PRUNING_KEY}.")
# how a job may end without failing
ENDED_WELL = ("completed", "pruned")


def job_dirs(root: Path) -> list[Path]:
    """Every run below root (a dir holding `.hydra/overrides.yaml`), in job-number order."""
    found = [p.parent.parent for p in root.rglob(".hydra/overrides.yaml")]

    def order(path: Path) -> tuple:
        parts = path.relative_to(root).parts
        return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)

    return sorted(found, key=order)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def read_job(job: Path, root: Path) -> dict[str, Any]:
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    status = _read_json(job / STATUS_FILE)
    metrics = {
        k: v
        for k, v in (_read_json(job / "metrics.json") or status.get("metrics", {})).items()
        if not k.startswith(SKIPPED_METRIC_PREFIXES)
    }
    if not status:  # a run from before status files, or one killed before writing it
        status = {"status": "completed" if metrics else "unknown"}
    return {
        "job": str(job.relative_to(root)) if job != root else ".",
        "status": status.get("status"),
        "duration_s": status.get("duration_s"),
        "overrides": dict(
            o.lstrip("+").split("=", 1)
            for o in overrides
            if "=" in o and not o.lstrip("+").startswith(SWEEPER_OVERRIDES)
        ),
        **{fact: status[fact] for fact in TRIAL_FACTS if fact in status},
        "metrics": metrics,
        "error": status.get("error", ""),
    }


def optimized_metric(jobs: list[Path]) -> str | None:
    for job in jobs:
        config = job / ".hydra" / "config.yaml"
        if config.is_file():
            metric = OmegaConf.load(config).get("optimized_metric")
            if metric:
                return metric
    return None


def summarize(
    root: str | Path, metric: str | None = None, direction: str | None = None
) -> tuple[list[dict[str, Any]], list[str], str | None]:
    """(rows, columns, sort metric). Rows are flat dicts, ready for csv.DictWriter."""
    root = Path(root)
    jobs = job_dirs(root)
    metric = metric or optimized_metric(jobs)
    direction = direction or ("minimize" if metric and "loss" in metric else "maximize")
    records = [read_job(job, root) for job in jobs]
    override_keys = list(dict.fromkeys(k for r in records for k in r["overrides"]))
    metric_keys = sorted({k for r in records for k in r["metrics"]})
    if metric in metric_keys:
        metric_keys.remove(metric)
        metric_keys.insert(0, metric)

    facts = [fact for fact in TRIAL_FACTS if any(fact in r for r in records)]

    def rank(record: dict[str, Any]) -> tuple[int, float]:
        value = record["metrics"].get(metric)
        if record["status"] not in ENDED_WELL or value is None or math.isnan(value):
            return (2, 0.0)
        return (ENDED_WELL.index(record["status"]), -value if direction == "maximize" else value)

    rows = [
        {
            "job": r["job"],
            "status": r["status"],
            "duration_s": r["duration_s"],
            **{fact: r.get(fact, "") for fact in facts},
            **{k: r["overrides"].get(k, "") for k in override_keys},
            **{k: r["metrics"].get(k, "") for k in metric_keys},
            "error": r["error"],
        }
        for r in sorted(records, key=rank)
    ]
    rows += repeat_rows(records, override_keys, metric_keys)
    columns = ["job", "status", "duration_s", *facts, *override_keys, *metric_keys, "error"]
    return rows, columns, metric


def repeat_rows(
    records: list[dict[str, Any]], override_keys: list[str], metric_keys: list[str]
) -> list[dict[str, Any]]:
    """A mean row and a std row for each set of two or more completed jobs that differ only in
    their fold or seed; their repeat columns read `*`."""
    repeats = [k for k in override_keys if k in REPEAT_KEYS]
    others = [k for k in override_keys if k not in REPEAT_KEYS]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        if repeats and record["status"] == "completed":
            key = tuple(record["overrides"].get(k, "") for k in others)
            groups.setdefault(key, []).append(record)
    rows = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        for name, statistic in zip(
            REPEAT_STATISTICS, (statistics.mean, statistics.stdev), strict=True
        ):
            row = {"job": f"{name} of {len(members)}", "status": name, "duration_s": ""}
            row |= dict(zip(others, key, strict=True)) | dict.fromkeys(repeats, "*")
            for metric in metric_keys:
                values = [m["metrics"].get(metric) for m in members]
                numbers = [v for v in values if isinstance(v, int | float)]
                if len(numbers) != len(values):
                    row[metric] = ""  # a metric some repeat lacks
                elif any(math.isnan(v) for v in numbers):  # a diverged repeat: no statistic
                    row[metric] = math.nan
                else:
                    row[metric] = statistic(numbers)
            rows.append(row | {"error": ""})
    return rows


def write_summary(
    root: str | Path, metric: str | None = None, direction: str | None = None
) -> tuple[Path, list[dict[str, Any]]]:
    """summary.csv in root and the table on the console; returns the file and its rows."""
    rows, columns, metric = summarize(root, metric, direction)
    path = Path(root) / SUMMARY_FILE
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    print_summary(rows, columns, metric, path)
    return path, rows


# metrics worth a column in the console table (summary.csv has all of them)
TABLE_METRICS = ("val/acc_best", "test/acc")
MAX_ERROR_CHARS = 60


def print_summary(rows: list[dict], columns: list[str], metric: str | None, path: Path) -> None:
    """The console view: the overrides that differ between runs and the main metrics."""
    fixed = {"job", "status", "duration_s", "error", *TRIAL_FACTS}
    varying = [
        c
        for c in columns
        if c not in fixed and "/" not in c and len({str(r.get(c)) for r in rows}) > 1
    ]
    metrics = [m for m in dict.fromkeys([metric, *TABLE_METRICS]) if m and m in columns]
    facts = [fact for fact in TRIAL_FACTS if fact in columns]
    shown = ["job", "status", "duration_s", *facts, *varying, *metrics, "error"]
    jobs = sum(row["status"] not in REPEAT_STATISTICS for row in rows)
    table = Table(title=f"{jobs} runs, best first by {metric or '(no metric)'}: {path}")
    for column in shown:
        width = {"job": 3, "status": 9}.get(column)
        table.add_column(column, overflow="ellipsis", no_wrap=column != "error", min_width=width)
    for row in rows:
        cells = []
        for column in shown:
            value = row.get(column, "")
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            cells.append(text[:MAX_ERROR_CHARS] + ("..." if len(text) > MAX_ERROR_CHARS else ""))
        style = {"failed": "red", "pruned": "yellow", "mean": "bold", "std": "bold"}.get(
            row["status"]
        )
        table.add_row(*cells, style=style)
    Console().print(table)


FAIL_WHEN = ("any", "all", "never")


class SweepSummaryCallback(Callback):
    """Hydra calls this once a multirun has run all its jobs: the summary, then the exit code.

    `fail_when`: the sweep exits with code 1 (so CI sees it) when `any` job failed (the default:
    a grid's jobs are all meant to run), when `all` did (a search, where some trials failing is
    part of searching), or `never`. A trial its search pruned did not fail.
    """

    def __init__(self, fail_when: str = "any") -> None:
        if fail_when not in FAIL_WHEN:
            raise ValueError(f"fail_when must be one of {FAIL_WHEN}, got {fail_when!r}")
        self.fail_when = fail_when

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.get("sweeper") or {}
        direction = sweeper.get("direction") if isinstance(sweeper.get("direction"), str) else None
        path, rows = write_summary(
            config.hydra.sweep.dir, config.get("optimized_metric"), direction
        )
        statuses = [row["status"] for row in rows if row["status"] not in REPEAT_STATISTICS]
        failed = sum(status not in ENDED_WELL for status in statuses)
        if not failed:
            return
        message = f"{failed} of {len(statuses)} jobs failed (errors in {path})."
        fails = self.fail_when == "any" or (self.fail_when == "all" and failed == len(statuses))
        Console(stderr=True).print(f"[red]{message}" if fails else message)
        if fails:
            sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description="summary.csv of every run below DIR")
    parser.add_argument("dir", type=Path, help="a sweep dir, or any dir holding runs")
    parser.add_argument("--metric", help="sort by this metric (default: the optimized_metric)")
    parser.add_argument("--direction", choices=["maximize", "minimize"])
    args = parser.parse_args()
    if not job_dirs(args.dir):
        parser.error(f"no runs below {args.dir} (a run dir holds .hydra/overrides.yaml)")
    write_summary(args.dir, args.metric, args.direction)


if __name__ == "__main__":
    main()
