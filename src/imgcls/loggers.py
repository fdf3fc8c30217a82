"""Loggers as a run needs them: a CSV logger that continues a resumed run's `metrics.csv`, and
MLflow's with its usage telemetry off.

Lightning's CSVLogger deletes an existing `metrics.csv` when it starts ("Previous log files in
this directory will be deleted"): a run resumed into its own dir would keep only the epochs
after the resume, and notebooks/01 would plot half a run. Here the earlier rows stay and the new
ones follow, under the same header (widened, as Lightning does, when new keys appear). A resume
from a step checkpoint logs again the steps between that checkpoint and the interruption; both
records of those steps are kept, in the order they were written.
"""

import csv
import os

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class ContinuingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        """Lightning's deletes metrics.csv here; this reads its header to append under it."""
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])


class ContinuingCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuingWriter(log_dir=self.log_dir)
        return self._experiment


class OfflineMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger; importing mlflow (3.x) otherwise sends a usage request to its
    telemetry server: off, unless the user's environment says otherwise."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        super().__init__(*args, **kwargs)
