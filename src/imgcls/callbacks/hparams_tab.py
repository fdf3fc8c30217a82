"""TensorBoard's HParams tab: every run's flattened config beside its final metrics, so runs sort
and filter by accuracy across a whole logs/ tree.

The tab pairs a run's hyperparameters (logged by train.py before fitting) with the last value
of each named metric's scalar curve, which the classifier logs anyway. So only the tab's entry
is written here, once, at the start of fitting, and nothing is logged twice.
"""

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

DEFAULT_METRICS = (
    "val/acc_best",
    "val/acc",
    "val/acc_balanced_best",
    "val/map_best",
    "val/loss",
    "test/acc",
    "test/acc_top5",
    "test/acc_balanced",
    "test/f1_macro",
    "test/map",
    "test/loss",
    "train/loss",
)


class HparamsTab(Callback):
    def __init__(self, metrics: tuple[str, ...] | list[str] = DEFAULT_METRICS) -> None:
        self.metrics = list(metrics)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and logger.hparams:
                params = {k: v for k, v in logger.hparams.items() if v is not None}
                # the tab reads each metric's value from its scalar curve; these are just names
                writer = logger.experiment.file_writer  # the run's own event file
                for summary in hparams(params, dict.fromkeys(self.metrics, 0.0)):
                    writer.add_summary(summary)
