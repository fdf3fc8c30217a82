"""loggers.py: a resumed run's metrics.csv continues under its header, earlier rows kept; MLflow
logs with its usage telemetry off."""

import csv
import os
from pathlib import Path

import pytest

from imgcls.loggers import ContinuingCSVLogger, OfflineMLFlowLogger


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_second_logger_in_the_same_dir_appends_under_a_widened_header(tmp_path: Path) -> None:
    first = ContinuingCSVLogger(tmp_path, name="csv", version="")
    first.log_metrics({"train/loss": 1.0}, step=0)
    first.log_metrics({"train/loss": 0.5}, step=1)
    first.save()
    resumed = ContinuingCSVLogger(tmp_path, name="csv", version="")  # as a resume makes it
    resumed.log_metrics({"train/loss": 0.25, "val/acc": 0.9}, step=2)
    resumed.save()
    written = rows(Path(resumed.experiment.metrics_file_path))
    assert [r["step"] for r in written] == ["0", "1", "2"]  # the earlier rows are still there
    assert [r["train/loss"] for r in written] == ["1.0", "0.5", "0.25"]
    assert written[-1]["val/acc"] == "0.9"
    assert written[0]["val/acc"] == ""  # the new key widened the header


def test_mlflow_is_told_not_to_send_usage_telemetry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    OfflineMLFlowLogger(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")  # a user's own choice stands
    OfflineMLFlowLogger(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false"
