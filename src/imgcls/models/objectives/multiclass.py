"""One label per image (`model.task=multiclass`): softmax over the classes, cross-entropy
(label smoothing, class weights, MixUp/CutMix soft targets), accuracy and the class-averaged
scores an imbalanced split does not flatter, and a temperature: softmax(logits / T) is what the
model says of each class (`model.temperature`: a number, or `fit`, refitted on the validation
split's logits at every validation, so each checkpoint holds its own; models/calibration.py)."""

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from imgcls.models.calibration import FEW_CALIBRATION_IMAGES, TemperatureFit
from imgcls.models.confusion import ClassAveragedScores
from imgcls.models.objectives.base import OBJECTIVES, Objective
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger

log = get_logger(__name__)
# the ratio of the train split's largest class to its smallest from which a run says so
IMBALANCE_RATIO = 10


def accuracy_metrics(num_classes: int, prefix: str, evaluation: bool = True) -> MetricCollection:
    """Top-1 accuracy; for evaluation also balanced accuracy and macro F1 and, where it means
    something (more than 5 classes), top-5 accuracy."""
    # validate_args=False: the input checks read values back to the host (a device sync per
    # step); our own logits and labels need no checking
    metrics = {"acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False)}
    if evaluation:
        metrics["class_averaged"] = ClassAveragedScores(num_classes)  # acc_balanced, f1_macro
        if num_classes > 5:
            metrics["acc_top5"] = MulticlassAccuracy(
                num_classes, top_k=5, average="micro", validate_args=False
            )
    return MetricCollection(metrics, prefix=prefix)


def balanced_class_weights(counts: Tensor) -> list[float]:
    """Inverse class frequency, scaled so a training image weighs 1 on average (sklearn's
    "balanced"): the loss keeps its scale and the lr its meaning. A class with no training
    image weighs 1."""
    counts = counts.double()
    present = counts > 0
    weights = counts.sum() / (present.sum() * counts.clamp(min=1))
    return torch.where(present, weights, 1.0).tolist()


@OBJECTIVES.register("multiclass")
class MulticlassObjective(Objective):
    scores = ("acc", "acc_top5", "acc_balanced", "f1_macro")
    tracked = ("acc", "acc_balanced", "f1_macro")
    headline = "acc"
    fitted_on_validation = ("temperature",)

    def check_options(self, temperature: float | str | None, threshold: float | str) -> None:
        if threshold != 0.5:
            raise UserError(
                f"model.threshold={threshold} applies to model.task=multilabel (a label per class "
                "above it); one label per image is the top class: leave model.threshold=0.5."
            )

    def fitted_buffers(self, temperature: float | str | None, threshold: float | str) -> None:
        fixed = temperature if isinstance(temperature, int | float) else 1.0
        self.register_buffer("temperature", torch.tensor(float(fixed)))
        self.temperature_fit = TemperatureFit() if temperature == "fit" else None
        self.temperature_images: int | None = None  # how many it was fitted on, in this run

    def make_criterion(self) -> nn.Module:
        return nn.CrossEntropyLoss(label_smoothing=self.label_smoothing, reduction="none")

    def make_metrics(self, stage: str) -> MetricCollection:
        # top-1 only on training batches: more there costs a step and tells little
        return accuracy_metrics(self.num_classes, f"{stage}/", evaluation=stage != "train")

    def scored_targets(self, targets: Tensor) -> Tensor:
        # MixUp/CutMix soft targets: accuracy against the dominant class
        return targets.argmax(dim=1) if targets.ndim == 2 else targets

    def update(self, stage: str, logits: Tensor, targets: Tensor, losses: Tensor) -> None:
        super().update(stage, logits, targets, losses)
        if stage == "val" and self.temperature_fit is not None:
            self.temperature_fit.update(logits.detach(), targets)

    def fitted(self, fit: bool) -> dict[str, Tensor]:
        if self.temperature_fit is None:
            return {}
        values = {}
        if fit:
            self.temperature.copy_(self.temperature_fit.compute())
            values["val/temperature"] = self.temperature
            first, self.temperature_images = self.temperature_images, self.temperature_fit.fitted_on
            if first is None and self.temperature_images < FEW_CALIBRATION_IMAGES:
                log.warning(
                    f"The temperature is fitted on {self.temperature_images} validation images: "
                    f"below {FEW_CALIBRATION_IMAGES} the fit is mostly noise and can leave the "
                    "test split worse calibrated; use a larger validation split, or "
                    "model.temperature=null."
                )
        self.temperature_fit.reset()
        return values

    def calibrated(self, logits: Tensor) -> Tensor:
        """Logits whose softmax gives the model's probabilities (divided by its temperature)."""
        return logits / self.temperature

    def probabilities(self, logits: Tensor) -> Tensor:
        return self.calibrated(logits.float()).softmax(dim=1)

    def listed(self, probabilities: Tensor, classes: Tensor, top_k: int) -> Tensor:
        ranks = torch.arange(probabilities.shape[1], device=probabilities.device)
        return (ranks < top_k).expand_as(probabilities)

    def balanced_weights(self, counts: Tensor, total: int) -> list[float]:
        return balanced_class_weights(counts)

    def fit_to_data(
        self, counts: Tensor | None, total: int, sampler: str | None, names: list[str]
    ) -> list[float] | None:
        if not self.weighted and sampler != "balanced":
            say_if_imbalanced(counts, names)
        return super().fit_to_data(counts, total, sampler, names)

    def card(self, class_names: list[str]) -> dict[str, Any]:
        return {
            "output": "logits, one per class (softmax(logits / temperature) for probabilities)",
            "temperature": float(self.temperature),
        }

    def target_names(self, targets: Tensor, class_names: list[str]) -> list[str]:
        # MixUp / CutMix: name the dominant class
        indices = targets.argmax(dim=1) if targets.ndim == 2 else targets
        return [class_names[i] for i in indices.tolist()]


def say_if_imbalanced(counts: Tensor | None, names: list[str]) -> None:
    """One line when the train split's largest class (`counts`) has IMBALANCE_RATIO times the
    images of its smallest or more, and neither the loss nor the draw evens it out."""
    if counts is None or not (counts > 0).any():
        return
    largest = int(counts.argmax())
    smallest = int(torch.where(counts > 0, counts, counts.max() + 1).argmin())
    if counts[largest] < IMBALANCE_RATIO * counts[smallest]:
        return
    log.warning(
        f"The train split is imbalanced: {names[largest]} has {int(counts[largest])} images, "
        f"{names[smallest]} {int(counts[smallest])}. data.sampler=balanced or "
        "model.class_weights=balanced even it out; val/acc_balanced and val/f1_macro measure "
        "it (callbacks.model_checkpoint.monitor=val/acc_balanced)."
    )
