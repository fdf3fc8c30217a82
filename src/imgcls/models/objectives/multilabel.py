"""Several labels per image (`model.task=multilabel`): one sigmoid per class, its loss, its
scores, and the threshold at which a label counts as present (`model.threshold`: a number, or
`fit`: each class's F1-best threshold on the validation split, refitted at every validation).

The scores are torchmetrics' (mean average precision over classes, F1 micro and macro), computed
once per epoch from the split's probabilities and targets: its multilabel metric classes check
their inputs' range with a host read at every update (`if not torch.all(0 <= preds <= 1)`), so
the step only gathers (a list state, concatenated over devices), as the calibration fit does.
"""

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.functional.classification import (
    multilabel_average_precision,
    multilabel_f1_score,
    multilabel_precision_recall_curve,
)
from torchmetrics.utilities import dim_zero_cat

from imgcls.models.confusion import ratio
from imgcls.models.objectives.base import OBJECTIVES, Objective
from imgcls.utils.errors import UserError


class MultiHotLoss(nn.Module):
    """Binary cross-entropy with logits per class, averaged over the classes: one loss per image.
    `pos_weight` (class weights) weighs each class's positives; label smoothing moves targets
    towards 1/C as timm's BinaryCrossEntropy does."""

    def __init__(self, num_classes: int, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        self.pos_weight: Tensor | None
        self.register_buffer("pos_weight", None)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        # in float32 whatever the logits' dtype: bf16 would quantize smoothed and mixed targets
        targets = targets.float()
        if self.label_smoothing:
            off = self.label_smoothing / self.num_classes
            targets = targets * (1 - self.label_smoothing) + off
        pos_weight = None if self.pos_weight is None else self.pos_weight.float()
        losses = F.binary_cross_entropy_with_logits(
            logits.float(), targets, pos_weight=pos_weight, reduction="none"
        )
        return losses.mean(dim=1)


def balanced_pos_weights(positives: Tensor, total: int) -> list[float]:
    """Each class's negatives over its positives (BCE's pos_weight): a class's positives weigh as
    much as its negatives. A class with no positive image weighs 1."""
    positives = positives.double()
    weights = (total - positives) / positives.clamp(min=1)
    return torch.where(positives > 0, weights, 1.0).tolist()


class MultilabelScores(Metric):
    """`map` (mean average precision over the classes present), `f1_micro` and `f1_macro` with
    each class's label present where its probability reaches its threshold. `thresholds` is
    the model's, set before `compute`; with `fit_thresholds` (set by the model for the
    validations that fit them), `compute` first moves them (in place) to each class's F1-best
    threshold on this split."""

    full_state_update = False

    def __init__(self, num_classes: int, fit_thresholds: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.fit_thresholds = num_classes, fit_thresholds
        self.thresholds: Tensor | None = None
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, logits: Tensor, targets: Tensor) -> None:
        self.probs.append(logits.float().sigmoid())
        self.targets.append(targets.round().int())

    def gathered(self) -> tuple[Tensor, Tensor]:
        """(probabilities, 0/1 targets) of every image seen (call within `compute`)."""
        return dim_zero_cat(self.probs), dim_zero_cat(self.targets)

    def compute(self) -> dict[str, Tensor]:
        probs, targets = self.gathered()
        if self.fit_thresholds:
            self.thresholds.copy_(f1_best_thresholds(probs, targets))
        return multilabel_scores(probs, targets, self.thresholds)


class PerClassScores(MultilabelScores):
    """`per_class_scores` of the split at the model's thresholds (the eval report's table)."""

    def compute(self) -> dict[str, Tensor]:
        probs, targets = self.gathered()
        return per_class_scores(probs, targets, self.thresholds)


def multilabel_scores(probs: Tensor, targets: Tensor, thresholds: Tensor) -> dict[str, Tensor]:
    classes = probs.shape[1]
    present = (probs >= thresholds).int()
    return {
        "map": multilabel_average_precision(probs, targets, classes, average="macro"),
        "f1_micro": multilabel_f1_score(present, targets, classes, average="micro"),
        "f1_macro": multilabel_f1_score(present, targets, classes, average="macro"),
    }


def per_class_scores(probs: Tensor, targets: Tensor, thresholds: Tensor) -> dict[str, Tensor]:
    """Per class: support (positives), average precision, and precision, recall and F1 at the
    class's threshold (0 where there is nothing to divide by)."""
    classes = probs.shape[1]
    present = probs >= thresholds
    right = (present & (targets > 0)).sum(dim=0).double()
    support, predicted = targets.sum(dim=0).double(), present.sum(dim=0).double()
    return {
        "support": targets.sum(dim=0),
        "ap": multilabel_average_precision(probs, targets, classes, average=None),
        "precision": ratio(right, predicted),
        "recall": ratio(right, support),
        "f1": ratio(2 * right, support + predicted),
    }


def f1_best_thresholds(probs: Tensor, targets: Tensor) -> Tensor:
    """Each class's threshold with the best F1 on these images (0.5 for a class with no
    positive), from torchmetrics' precision-recall curves."""
    precision, recall, thresholds = multilabel_precision_recall_curve(
        probs, targets, probs.shape[1]
    )
    best = []
    for p, r, t, positives in zip(precision, recall, thresholds, targets.sum(dim=0), strict=True):
        f1 = 2 * p[:-1] * r[:-1] / (p[:-1] + r[:-1]).clamp(min=1e-12)
        best.append(t[f1.argmax()] if positives > 0 and len(t) else torch.tensor(0.5))
    return torch.stack([b.to(probs.device, probs.dtype) for b in best])


@OBJECTIVES.register("multilabel")
class MultilabelObjective(Objective):
    scores = ("map", "f1_micro", "f1_macro")
    tracked = ("map", "f1_macro")
    headline = "map"
    fitted_on_validation = ("thresholds",)
    class_weight_name = "pos_weight"

    def check_options(self, temperature: float | str | None, threshold: float | str) -> None:
        if threshold != "fit" and not (isinstance(threshold, int | float) and 0 < threshold < 1):
            raise UserError(f"model.threshold={threshold!r} is not allowed: fit, or in (0, 1).")
        if temperature is not None:
            raise UserError(
                "model.temperature scales a softmax; model.task=multilabel has a sigmoid per "
                "class and a threshold each (model.threshold=fit): set model.temperature=null."
            )

    def fitted_buffers(self, temperature: float | str | None, threshold: float | str) -> None:
        self.fit_thresholds = threshold == "fit"
        start = 0.5 if threshold == "fit" else float(threshold)
        self.register_buffer("thresholds", torch.full((self.num_classes,), start))

    def use_thresholds(self, by_name: Mapping[str, float], class_names: list[str]) -> None:
        """Each class's threshold as a model card or a pushed model's config names it (fitted
        where the model was trained)."""
        missing = [name for name in class_names if name not in by_name]
        if missing:
            raise UserError(f"The model's thresholds name no threshold for {', '.join(missing)}.")
        self.thresholds.copy_(torch.tensor([float(by_name[name]) for name in class_names]))

    def make_criterion(self) -> nn.Module:
        return MultiHotLoss(self.num_classes, self.label_smoothing)

    def make_metrics(self, stage: str) -> MetricCollection | None:
        if stage == "train":  # MixUp'd multi-hot targets: the loss says enough
            return None
        return MetricCollection({"scores": MultilabelScores(self.num_classes)}, prefix=f"{stage}/")

    def prepare_scores(self, stage: str, fit: bool) -> None:
        """Scored (and, fitting, moved) at the model's thresholds: refitted at validation, never
        on a sanity check's couple of batches."""
        scores = getattr(self, f"{stage}_metrics")["scores"]
        scores.thresholds = self.thresholds
        scores.fit_thresholds = stage == "val" and self.fit_thresholds and fit

    def probabilities(self, logits: Tensor) -> Tensor:
        return logits.float().sigmoid()

    def listed(self, probabilities: Tensor, classes: Tensor, top_k: int) -> Tensor:
        return probabilities >= self.thresholds[classes]

    def balanced_weights(self, counts: Tensor, total: int) -> list[float]:
        return balanced_pos_weights(counts, total)  # counts: each class's positives

    def card(self, class_names: list[str]) -> dict[str, Any]:
        return {
            "output": "logits, one per class (sigmoid for each label's probability; a label "
            "is present where it reaches its class's threshold)",
            "thresholds": dict(zip(class_names, self.thresholds.tolist(), strict=True)),
        }

    def target_names(self, targets: Tensor, class_names: list[str]) -> list[str]:
        # every label at least half present (MixUp / CutMix)
        return ["+".join(class_names[c] for c in row.nonzero()) for row in targets.cpu() >= 0.5]
