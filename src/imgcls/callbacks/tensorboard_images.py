"""Pictures in TensorBoard's Images tab, off the training hot path and from rank 0 only:

- `TrainingBatchGrid`: the first training batch as the net sees it (augmented, mixed), turned
  back into pixels, with class names (the `imshow(make_grid(images))` of PyTorch's CIFAR-10
  tutorial), once per run;
- `ValidationConfusion`: the validation confusion matrix after every validation epoch.

The test stage's confusion matrix and wrong images come from callbacks.EvaluationReport.
"""

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure

from imgcls.models.confusion import ConfusionMatrix
from imgcls.models.objectives import MulticlassObjective
from imgcls.reports.plots import (
    close_figure,
    confusion_figure,
    image_grid_figure,
    rendered,
    save_png,
)


def add_figure(trainer: L.Trainer, tag: str, fig: Figure, path: str | None = None) -> None:
    """Log a figure to every TensorBoard logger of the run (rank 0), at the current step, and
    write it as a PNG at `path` (where given): drawn once for both."""
    loggers = [
        logger
        for logger in (trainer.loggers if trainer.is_global_zero else [])
        if isinstance(logger, TensorBoardLogger)
    ]
    if not loggers and path is None:
        return
    pixels = rendered(fig)
    for logger in loggers:
        logger.experiment.add_image(tag, pixels, trainer.global_step, dataformats="HWC")
    if path is not None:
        save_png(pixels, path)


class TrainingBatchGrid(Callback):
    def __init__(self, max_images: int = 32) -> None:
        self.max_images = max_images
        self.logged = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.logged or not trainer.is_global_zero or batch[0].ndim != 4:
            return  # once; a linear probe's feature rows are no pictures
        self.logged = True
        images, labels = batch[0][: self.max_images], batch[1][: self.max_images]
        names = pl_module.objective.target_names(labels, pl_module.class_names)
        datamodule = trainer.datamodule
        pixels = datamodule.contract.denormalize(images.detach())
        fig = image_grid_figure(pixels, names, "training batch, augmented (as the net sees it)")
        add_figure(trainer, "train/augmented_batch", fig)
        close_figure(fig)


class ValidationConfusion(Callback):
    def __init__(self) -> None:
        self.confusion: ConfusionMatrix | None = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module.objective, MulticlassObjective):  # no one class to count
            self.confusion = None
            return
        num_classes = pl_module.hparams.num_classes
        self.confusion = ConfusionMatrix(num_classes).to(pl_module.device)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.confusion is not None:
            self.confusion.update(outputs["logits"], batch[1])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.confusion is None:
            return
        confusion = self.confusion.compute()  # synced over devices: every rank takes part
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        fig = confusion_figure(confusion, pl_module.class_names)
        add_figure(trainer, "val/confusion", fig)
        close_figure(fig)
