"""The test set's report, written next to metrics.json and logged to TensorBoard. One label per
image:

- `per_class.csv`: support, accuracy (the per-class table of PyTorch's CIFAR-10 tutorial; it
  equals the class's recall), precision, recall and F1 of every class;
- `confusion.csv` and `confusion.png`: the confusion matrix (rows true, columns predicted);
- `misclassified.png`: the most confidently wrong test images, with true and predicted names;
- `explanations.png`: those images beside their Grad-CAM maps (models/explain.py) for the
  predicted and for the true class; a net it cannot explain is said in one logged line;
- `calibration.csv` and `reliability.png`: the expected calibration error (also logged as
  `test/ece`) and the reliability diagram, of the net's softmax and, where the model has a
  temperature (model.temperature), of its calibrated probabilities (`test/ece_calibrated`).

Several labels per image (model.task=multilabel): `per_class.csv` with each class's support,
average precision, and precision, recall and F1 at its threshold (no wrong images, so no
explanations).

The counts are a torchmetrics metric (models/confusion.py), synced over devices; the wrong images
are those seen by rank 0. Nothing is read back to the host until the test epoch ends.
"""

import csv
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure
from torch import Tensor

from imgcls.callbacks.tensorboard_images import add_figure
from imgcls.models.calibration import ReliabilityBins
from imgcls.models.confusion import ConfusionMatrix, per_class_scores
from imgcls.models.explain import Explainer, NotExplainableError
from imgcls.models.objectives import MulticlassObjective, MultilabelObjective
from imgcls.models.objectives.multilabel import PerClassScores
from imgcls.reports.plots import (
    close_figure,
    confusion_figure,
    explanation_figure,
    image_grid_figure,
    reliability_figure,
)
from imgcls.utils.logging import get_logger

log = get_logger(__name__)


class ConfidentMistakes:
    """The k wrong predictions made with the highest confidence: a running top-k kept where the
    batches are (nothing read back per batch), moved to the host once, by `wrong()`."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.kept: tuple[Tensor, ...] | None = None  # score, image, label, prediction

    def update(self, images: Tensor, logits: Tensor, labels: Tensor) -> None:
        """`images` normalized as the net saw them (only the kept ones are denormalized)."""
        if self.k == 0:
            return
        confidence, preds = logits.float().softmax(dim=1).max(dim=1)
        score = torch.where(preds != labels, confidence, -1.0)  # right ones rank last
        candidates = self._top((score, images, labels, preds))
        if self.kept is not None:
            merged = (torch.cat(pair) for pair in zip(self.kept, candidates, strict=True))
            candidates = self._top(tuple(merged))
        self.kept = candidates

    def _top(self, columns: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        top = columns[0].topk(min(self.k, len(columns[0]))).indices
        return tuple(column.index_select(0, top) for column in columns)

    def wrong(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(confidence, normalized images, labels, preds) of the kept wrong predictions, most
        confident first, on the CPU."""
        if self.kept is None:
            return torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0)
        score, images, labels, preds = (t.cpu() for t in self.kept)
        wrong = score >= 0
        return score[wrong], images[wrong], labels[wrong], preds[wrong]


class EvaluationReport(Callback):
    """The test split's report, by the model's task: TestReport for one label per image,
    MultilabelReport for several (REPORTS)."""

    def __init__(self, output_dir: str, misclassified: int = 16, explain: bool = True) -> None:
        """`misclassified`: how many of the most confidently wrong images to show (0: none);
        `explain`: their class-activation maps too (a forward and backward of those images)."""
        self.output_dir = Path(output_dir)
        self.misclassified = misclassified
        self.explain = explain
        self.report: TestReport | MultilabelReport | None = None

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        objective = pl_module.objective
        make = REPORTS[type(objective)]
        report = make(objective, self.output_dir, self.misclassified, self.explain)
        self.report = report.to(pl_module.device)

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
        self.report.update(images, outputs["logits"], labels, trainer.is_global_zero)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for name, value in self.report.finish(trainer, pl_module.class_names).items():
            pl_module.log(name, value)  # the same on every rank
        self.report = None  # its metric states and kept images: not held after the test


class TestReport:
    """One label per image: per-class scores, the confusion matrix, the most confidently wrong
    images, and the reliability of the probabilities (of the softmax, "raw", and of the
    calibrated ones where the model has a temperature)."""

    def __init__(
        self,
        objective: MulticlassObjective,
        output_dir: Path,
        misclassified: int,
        explain: bool = True,
    ) -> None:
        self.objective, self.output_dir = objective, output_dir
        self.explain = explain  # the wrong images' class-activation maps too
        self.confusion = ConfusionMatrix(objective.num_classes)
        self.mistakes = ConfidentMistakes(misclassified)
        self.temperature = float(objective.temperature)
        # how many validation images fitted it, where this run fitted it (not a loaded model)
        self.fitted_on: int | None = getattr(objective, "temperature_images", None)
        kinds = ["raw", "calibrated"] if self.temperature != 1.0 else ["raw"]
        self.reliability = {kind: ReliabilityBins() for kind in kinds}

    def to(self, device: torch.device) -> "TestReport":
        self.confusion.to(device)
        for bins in self.reliability.values():
            bins.to(device)
        return self

    def update(self, images: Tensor, logits: Tensor, labels: Tensor, rank_zero: bool) -> None:
        self.confusion.update(logits, labels)
        for kind, bins in self.reliability.items():
            calibrated = self.objective.calibrated(logits) if kind == "calibrated" else logits
            bins.update(calibrated, labels)
        # the wrong images are those seen by rank 0; a linear probe's feature rows are none
        if rank_zero and images.ndim == 4:
            self.mistakes.update(images, logits, labels)

    def finish(self, trainer: L.Trainer, names: list[str]) -> dict[str, Tensor]:
        """Write the report; the values to log. Every rank takes part (synced over devices)."""
        confusion = self.confusion.compute().cpu()
        calibration = {
            kind: {k: v.cpu() for k, v in bins.compute().items()}
            for kind, bins in self.reliability.items()
        }
        self.write(trainer, names, confusion)
        self.write_calibration(trainer, calibration, self.temperature)
        return {
            "test/ece" if kind == "raw" else "test/ece_calibrated": values["ece"].float()
            for kind, values in calibration.items()
        }

    @rank_zero_only
    def write_calibration(
        self, trainer: L.Trainer, calibration: dict[str, dict[str, Tensor]], temperature: float
    ) -> None:
        with open(self.output_dir / "calibration.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                ["probabilities", "bin_low", "bin_high", "count", "confidence", "accuracy", "ece"]
            )
            for kind, values in calibration.items():
                bins = len(values["count"])
                for i in range(bins):
                    cells = [values[k][i].item() for k in ("count", "confidence", "accuracy")]
                    writer.writerow(
                        [
                            kind,
                            f"{i / bins:.4f}",
                            f"{(i + 1) / bins:.4f}",
                            int(cells[0]),
                            *(f"{c:.6f}" for c in cells[1:]),
                            f"{values['ece'].item():.6f}",
                        ]
                    )
        fig = reliability_figure(calibration, temperature, self.fitted_on)
        add_figure(trainer, "test/reliability", fig, str(self.output_dir / "reliability.png"))
        close_figure(fig)
        eces = ", ".join(f"{kind} {v['ece'].item():.4f}" for kind, v in calibration.items())
        fitted = f", fitted on {self.fitted_on} validation images" if self.fitted_on else ""
        log.info(f"Expected calibration error: {eces} (temperature {temperature:.3g}{fitted})")

    @rank_zero_only
    def write(self, trainer: L.Trainer, names: list[str], confusion: Tensor) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        scores = per_class_scores(confusion)
        with open(self.output_dir / "per_class.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["class", "support", "accuracy", "precision", "recall", "f1"])
            for i, name in enumerate(names):
                recall = scores["recall"][i].item()
                values = [recall, scores["precision"][i].item(), recall, scores["f1"][i].item()]
                writer.writerow([name, int(scores["support"][i]), *(f"{v:.6f}" for v in values)])
        with open(self.output_dir / "confusion.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["true \\ predicted", *names])
            for name, row in zip(names, confusion.tolist(), strict=True):
                writer.writerow([name, *row])
        figures = {"confusion": confusion_figure(confusion, names)}
        confidence, images, labels, preds = self.mistakes.wrong()
        if len(images):
            triples = zip(labels.tolist(), preds.tolist(), confidence.tolist(), strict=True)
            captions = [f"{names[t]} → {names[p]}\n{c:.0%}" for t, p, c in triples]
            pixels = trainer.datamodule.contract.denormalize(images)
            figures["misclassified"] = image_grid_figure(
                pixels, captions, "most confidently wrong (true → predicted, confidence)"
            )
            explained = self.explain and explain_mistakes(
                trainer.lightning_module, images, pixels, labels, preds, captions, names
            )
            if explained:
                figures["explanations"] = explained
        for name, fig in figures.items():
            add_figure(trainer, f"test/{name}", fig, str(self.output_dir / f"{name}.png"))
            close_figure(fig)
        pictures = "".join(f", {name}.png" for name in figures if name != "confusion")
        log.info(
            f"Evaluation report: {self.output_dir}/per_class.csv, confusion.csv/.png, "
            f"calibration.csv, reliability.png{pictures}"
        )


def explain_mistakes(
    model: L.LightningModule,
    images: Tensor,
    pixels: Tensor,
    labels: Tensor,
    preds: Tensor,
    captions: list[str],
    names: list[str],
) -> Figure | None:
    """The wrong images beside the Grad-CAM maps of their predicted and true classes, all in
    one forward and backward of the model's own net (not a DDP wrapper: rank 0 alone, no
    collective); None, with the reason logged, for a net that cannot be explained."""
    head = getattr(model, "head", None)  # an exported file's net has none by that name
    normalized = images.to(model.device)
    try:
        explainer = Explainer(model.net, normalized[:1], head)
    except NotExplainableError as err:
        log.warning(f"No explanations.png: {err}")
        return None
    maps = explainer(torch.cat([normalized, normalized]), torch.cat([preds, labels]))
    predicted, true = maps.split(len(images))
    return explanation_figure(
        pixels,
        predicted,
        true,
        captions,
        [names[p] for p in preds.tolist()],
        [names[t] for t in labels.tolist()],
    )


class MultilabelReport:
    """Several labels per image: each class's support, average precision, and precision,
    recall and F1 at its threshold."""

    def __init__(
        self,
        objective: MultilabelObjective,
        output_dir: Path,
        misclassified: int,
        explain: bool = True,
    ) -> None:
        """`misclassified`, `explain`: a multiclass report's; none here (no one wrong class)."""
        self.objective, self.output_dir = objective, output_dir
        self.per_label = PerClassScores(objective.num_classes)

    def to(self, device: torch.device) -> "MultilabelReport":
        self.per_label.to(device)
        return self

    def update(self, images: Tensor, logits: Tensor, labels: Tensor, rank_zero: bool) -> None:
        self.per_label.update(logits, labels)

    def finish(self, trainer: L.Trainer, names: list[str]) -> dict[str, Tensor]:
        self.per_label.thresholds = self.objective.thresholds
        scores = {k: v.cpu() for k, v in self.per_label.compute().items()}  # every rank
        self.write_per_label(names, scores, self.objective.thresholds.cpu())
        return {}

    @rank_zero_only
    def write_per_label(
        self, names: list[str], scores: dict[str, Tensor], thresholds: Tensor
    ) -> None:
        """Several labels per image: each class's average precision, and its precision, recall
        and F1 at its threshold."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        columns = ("ap", "precision", "recall", "f1")
        with open(self.output_dir / "per_class.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["class", "support", *columns, "threshold"])
            for i, name in enumerate(names):
                values = [scores[c][i].item() for c in columns] + [thresholds[i].item()]
                writer.writerow([name, int(scores["support"][i]), *(f"{v:.6f}" for v in values)])
        log.info(f"Evaluation report: {self.output_dir}/per_class.csv (average precision by class)")


# the report of each task's objective
REPORTS = {MulticlassObjective: TestReport, MultilabelObjective: MultilabelReport}
