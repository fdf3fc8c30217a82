"""A confusion matrix that never makes the host wait, the per-class scores read from it, and
the class-averaged scores (balanced accuracy, macro F1) a run logs from it.

torchmetrics' MulticlassConfusionMatrix, and its per-class precision / recall / F1, count with
`bincount`: on CUDA it reads its input's min and max back to the host at every update, and under
deterministic mode it is replaced by a comparison grid of N x C^2 elements (2 GB a step at 1,000
classes and batch 256). Here an update adds its batch into the C x C counts with one
`index_put_(accumulate=True)` of integers: nothing read back, the same counts in any order
(integer addition), a deterministic CUDA kernel. The counts are summed over devices by
torchmetrics at `compute`, as any metric's state.
"""

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric


class ConfusionMatrix(Metric):
    """Counts of (true class, predicted class): rows true, columns predicted."""

    full_state_update = False
    confusion: Tensor

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        zeros = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.add_state("confusion", default=zeros, dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        """`logits` (N, C), `target` class indices (N,)."""
        cells = target.long() * self.num_classes + logits.argmax(dim=1)
        self.confusion.view(-1).index_put_((cells,), torch.ones_like(cells), accumulate=True)

    def compute(self) -> Tensor:
        return self.confusion


class ClassAveragedScores(ConfusionMatrix):
    """Balanced accuracy (the mean of the classes' recalls) and macro F1, the scores that an
    imbalanced split does not flatter: a net that always answers the majority class of a 20:1
    split has 95% accuracy and 50% balanced accuracy. torchmetrics' own average="macro" scores
    count with `bincount` (see above); these read the same counts."""

    def compute(self) -> dict[str, Tensor]:
        return class_averaged_scores(self.confusion)


def class_averaged_scores(confusion: Tensor) -> dict[str, Tensor]:
    """`acc_balanced`: recall averaged over the classes present (sklearn's balanced accuracy);
    `f1_macro`: F1 averaged over the classes either present or predicted (torchmetrics'
    average="macro")."""
    scores = per_class_scores(confusion)
    present = scores["support"] > 0
    seen = present | (confusion.sum(dim=0) > 0)

    def mean_over(values: Tensor, mask: Tensor) -> Tensor:
        return (values * mask).sum() / mask.sum().clamp(min=1)

    return {
        "acc_balanced": mean_over(scores["recall"], present).float(),
        "f1_macro": mean_over(scores["f1"], seen).float(),
    }


def ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator, 0 where there is nothing to divide by (torchmetrics'
    `zero_division=0`), with no host read."""
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), 0.0)


def per_class_scores(confusion: Tensor) -> dict[str, Tensor]:
    """Support, precision, recall and F1 of every class, from a confusion matrix (rows true);
    a score with nothing to divide by is 0, as torchmetrics' `zero_division=0`."""
    counts = confusion.double()
    right = counts.diag()
    support, predicted = counts.sum(dim=1), counts.sum(dim=0)
    return {
        "support": confusion.sum(dim=1),
        "precision": ratio(right, predicted),
        "recall": ratio(right, support),
        "f1": ratio(2 * right, support + predicted),
    }
