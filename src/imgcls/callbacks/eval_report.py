"""The test set's report, written next to metrics.json and logged to TensorBoard:

- `per_class.csv`: support, accuracy (the per-class table of PyTorch's CIFAR-10 tutorial; it
  equals the class's recall), precision, recall and F1 of every class;
- `confusion.csv` and `confusion.png`: the confusion matrix (rows true, columns predicted);
- `misclassified.png`: the most confidently wrong test images, with true and predicted names.

Metrics are torchmetrics, synced over devices; the wrong images are those seen by rank 0. All of
it happens in the test stage only, never in training.
"""

import csv
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from imgcls.callbacks.tensorboard_images import add_figure
from imgcls.reports.plots import close_figure, confusion_figure, image_grid_figure, save_figure
from imgcls.utils.logging import get_logger

log = get_logger(__name__)


def per_class_metrics(num_classes: int) -> MetricCollection:
    per_class = {"average": None, "zero_division": 0}
    return MetricCollection(
        {
            "precision": MulticlassPrecision(num_classes, **per_class),
            "recall": MulticlassRecall(num_classes, **per_class),
            "f1": MulticlassF1Score(num_classes, **per_class),
            "confusion": MulticlassConfusionMatrix(num_classes),
        }
    )


class ConfidentMistakes:
    """The k wrong predictions made with the highest confidence, kept on the CPU."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.confidence = torch.empty(0)
        self.images = torch.empty(0, dtype=torch.uint8)
        self.labels = torch.empty(0, dtype=torch.long)
        self.preds = torch.empty(0, dtype=torch.long)

    def update(self, images: Tensor, logits: Tensor, labels: Tensor) -> None:
        confidence, preds = logits.float().softmax(dim=1).max(dim=1)
        wrong = (preds != labels).nonzero().flatten()
        if self.k == 0 or len(wrong) == 0:
            return
        wrong = wrong[confidence[wrong].argsort(descending=True)[: self.k]]
        merged = torch.cat([self.confidence, confidence[wrong].cpu()])
        keep = merged.argsort(descending=True)[: self.k]
        self.confidence = merged[keep]
        self.images = torch.cat([self.images, images[wrong].cpu()])[keep]
        self.labels = torch.cat([self.labels, labels[wrong].cpu()])[keep]
        self.preds = torch.cat([self.preds, preds[wrong].cpu()])[keep]


class EvaluationReport(Callback):
    def __init__(self, output_dir: str, misclassified: int = 16) -> None:
        """`misclassified`: how many of the most confidently wrong images to show (0: none)."""
        self.output_dir = Path(output_dir)
        self.misclassified = misclassified
        self.metrics: MetricCollection | None = None
        self.mistakes = ConfidentMistakes(misclassified)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.metrics = per_class_metrics(pl_module.hparams.num_classes).to(pl_module.device)
        self.mistakes = ConfidentMistakes(self.misclassified)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        images, labels = batch
        logits = outputs["logits"]
        self.metrics.update(logits, labels)
        if trainer.is_global_zero and self.misclassified:
            datamodule = trainer.datamodule
            pixels = datamodule.contract.denormalize(images)
            self.mistakes.update(pixels, logits, labels)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        values = self.metrics.compute()  # synced over devices: every rank takes part
        self.metrics.reset()
        self.write(trainer, pl_module.class_names, {k: v.cpu() for k, v in values.items()})

    @rank_zero_only
    def write(self, trainer: L.Trainer, names: list[str], values: dict[str, Tensor]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        confusion = values["confusion"]
        support = confusion.sum(dim=1)
        with open(self.output_dir / "per_class.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["class", "support", "accuracy", "precision", "recall", "f1"])
            for i, name in enumerate(names):
                recall = values["recall"][i].item()
                scores = [recall, values["precision"][i].item(), recall, values["f1"][i].item()]
                writer.writerow([name, int(support[i]), *(f"{s:.6f}" for s in scores)])
        with open(self.output_dir / "confusion.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["true \\ predicted", *names])
            for name, row in zip(names, confusion.tolist(), strict=True):
                writer.writerow([name, *row])
        figures = {"confusion": confusion_figure(confusion, names)}
        if len(self.mistakes.images):
            m = self.mistakes
            triples = zip(m.labels.tolist(), m.preds.tolist(), m.confidence.tolist(), strict=True)
            captions = [f"{names[t]} → {names[p]}\n{c:.0%}" for t, p, c in triples]
            figures["misclassified"] = image_grid_figure(
                m.images, captions, "most confidently wrong (true → predicted, confidence)"
            )
        for name, fig in figures.items():
            add_figure(trainer, f"test/{name}", fig)
            save_figure(fig, str(self.output_dir / f"{name}.png"))
            close_figure(fig)
        log.info(f"Evaluation report: {self.output_dir}/per_class.csv, confusion.csv/.png")
