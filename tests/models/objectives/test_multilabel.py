"""models/objectives/multilabel.py: the loss, scores and thresholds of several labels per image."""

import pytest
import torch
from torch import nn
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelF1Score
from torchmetrics.functional.classification import binary_f1_score

from imgcls.models.classifier import ImageClassifier
from imgcls.models.objectives.multilabel import (
    MultiHotLoss,
    MultilabelScores,
    balanced_pos_weights,
    f1_best_thresholds,
)
from imgcls.utils.errors import UserError
from tests.helpers import SGD


def test_the_loss_is_binary_cross_entropy_per_image_with_positives_weighed() -> None:
    logits, targets = (
        torch.randn(4, 3),
        torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]]),
    )
    loss = MultiHotLoss(3)
    expected = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(loss(logits, targets), expected.mean(dim=1))
    loss.pos_weight = torch.tensor([2.0, 1.0, 0.5])
    weighted = nn.BCEWithLogitsLoss(pos_weight=loss.pos_weight, reduction="none")
    torch.testing.assert_close(loss(logits, targets), weighted(logits, targets).mean(dim=1))
    smoothed = MultiHotLoss(3, label_smoothing=0.3)  # timm's: 1 -> 0.8, 0 -> 0.1
    soft = targets * 0.7 + 0.1
    plain = nn.functional.binary_cross_entropy_with_logits(logits, soft, reduction="none")
    torch.testing.assert_close(smoothed(logits, targets), plain.mean(dim=1))
    assert balanced_pos_weights(torch.tensor([10, 90, 0]), 100) == pytest.approx([9.0, 1 / 9, 1.0])


def test_under_bf16_logits_soft_targets_keep_float32() -> None:
    """A smoothed target of 0.1 is 0.10009765625 in bf16: the loss is computed in float32 from
    the targets as they are, whatever dtype the logits (trainer.precision=bf16-true) have."""
    logits = torch.randn(4, 3).bfloat16()
    targets = torch.full((4, 3), 0.1)
    loss = MultiHotLoss(3).bfloat16()  # as Lightning converts the model's buffers
    loss.pos_weight = torch.tensor([2.0, 1.0, 0.5]).bfloat16()
    got = loss(logits, targets)
    weights = loss.pos_weight.float()
    exact = nn.functional.binary_cross_entropy_with_logits(
        logits.float(), targets, pos_weight=weights, reduction="none"
    )
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, exact.mean(dim=1), rtol=0, atol=0)


def test_scores_are_torchmetrics_at_the_models_thresholds_and_fit_the_f1_best() -> None:
    generator = torch.Generator().manual_seed(0)
    targets = (torch.rand(200, 4, generator=generator) < 0.3).int()
    logits = torch.randn(200, 4, generator=generator) + 2 * targets - 1.5
    scores = MultilabelScores(4)
    for start in range(0, 200, 50):
        scores.update(logits[start : start + 50], targets[start : start + 50].float())
    scores.thresholds = torch.full((4,), 0.5)
    result = scores.compute()
    probs = logits.sigmoid()
    assert float(result["map"]) == pytest.approx(
        float(MultilabelAveragePrecision(4)(probs, targets))
    )
    for average in ("micro", "macro"):
        expected = MultilabelF1Score(4, average=average)(probs, targets)
        assert float(result[f"f1_{average}"]) == pytest.approx(float(expected))

    best = f1_best_thresholds(probs, targets)

    def f1(c: int, threshold: float) -> float:  # present at or above the threshold
        present = (probs[:, c] >= threshold).int()
        return float(binary_f1_score(present, targets[:, c]))

    for c in range(4):  # no threshold on a grid beats the fitted one on its class's F1
        assert f1(c, float(best[c])) >= max(f1(c, t / 20) for t in range(1, 20)) - 1e-6
    fitting = MultilabelScores(4, fit_thresholds=True)
    fitting.update(logits, targets.float())
    fitting.thresholds = torch.full((4,), 0.5)
    fitting.compute()
    torch.testing.assert_close(fitting.thresholds, best)  # moved in place: the model's buffer


def test_options_of_the_other_task_are_one_line() -> None:
    def build(**options) -> ImageClassifier:
        return ImageClassifier(net={"name": "lenet"}, num_classes=3, optimizer=SGD, **options)

    with pytest.raises(UserError, match=r"model\.temperature scales a softmax"):
        build(task="multilabel", temperature="fit")
    with pytest.raises(UserError, match=r"model\.threshold=0\.3 applies to model\.task=multilabel"):
        build(threshold=0.3)
    with pytest.raises(UserError, match=r"Unknown model\.task='multi'.*Options: multiclass"):
        build(task="multi")
    with pytest.raises(UserError, match=r"model\.threshold=1\.5 is not allowed"):
        build(task="multilabel", threshold=1.5)
    model = build(task="multilabel", threshold=0.3, class_weights=[1.0, 2.0, 3.0])
    assert model.objective.thresholds.tolist() == pytest.approx([0.3] * 3)
    assert model.state_dict()["objective.criterion.pos_weight"].tolist() == [1.0, 2.0, 3.0]
