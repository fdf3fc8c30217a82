"""The one LightningModule: a net, cross-entropy, torchmetrics accuracy, optimizer and schedule.

Its hyperparameters are plain data (the net's name and kwargs, the optimizer and scheduler
configs, the class names), so a checkpoint loads with `torch.load(weights_only=True)` and
rebuilds the same model with `ImageClassifier.load_from_checkpoint(path)`.
"""

from typing import Any

from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from imgcls.models.backbones import build_net
from imgcls.models.optim import build_optimizer, build_scheduler


def accuracy_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Top-1 and, where it means something (more than 5 classes), top-5 accuracy."""
    metrics = {"acc": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
    if num_classes > 5:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics, prefix=prefix)


class ImageClassifier(LightningModule):
    def __init__(
        self,
        net: dict[str, Any],
        num_classes: int,
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # train.py logs the whole config
        self.net = build_net(num_classes=num_classes, **net)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.train_metrics = accuracy_metrics(num_classes, "train/")
        self.val_metrics = accuracy_metrics(num_classes, "val/")
        self.test_metrics = accuracy_metrics(num_classes, "test/")
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()

    @property
    def class_names(self) -> list[str]:
        names = self.hparams.get("class_names")
        return list(names) if names else [str(i) for i in range(self.hparams.num_classes)]

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.criterion(
            logits, labels
        )  # labels are class indices, or MixUp/CutMix soft targets
        if labels.ndim == 2:
            labels = labels.argmax(dim=1)  # accuracy against the dominant class
        # Metric objects are updated here and computed (and DDP-synced) once, at epoch end:
        # nothing in the step waits on the device.
        mean_loss = getattr(self, f"{stage}_loss")
        mean_loss.update(loss.detach(), weight=labels.shape[0])
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(logits.detach(), labels)
        self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict(metrics, on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._shared_step(batch, "train")
        # A step-level curve for the loggers: read only every trainer.log_every_n_steps steps.
        self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def on_train_start(self) -> None:
        # The sanity-check epoch must not count as the best validation accuracy.
        self.val_acc_best.reset()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best.update(self.val_metrics["acc"].compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.net, self.hparams.optimizer)
        scheduler = build_scheduler(
            optimizer,
            self.hparams.scheduler,
            total_steps=self.trainer.estimated_stepping_batches,
            max_epochs=self.trainer.max_epochs,
        )
        return (
            {"optimizer": optimizer, "lr_scheduler": scheduler}
            if scheduler
            else {"optimizer": optimizer}
        )
