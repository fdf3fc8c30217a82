"""models/classifier.py: the metrics it logs and the loss it trains with."""

import pytest
import torch
from torch import nn

from imgcls.models.classifier import ImageClassifier, accuracy_metrics
from tests.helpers import SGD


def test_accuracy_metrics_match_a_hand_computation() -> None:
    # 4 samples, 7 classes; the true class ranks 1st, 2nd, 6th and 4th.
    logits = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5, 6],  # label 0: rank 1
            [1.0, 9, 8, 3, 4, 5, 6],  # label 2: rank 2
            [9.0, 8, 7, 6, 5, 1, 0],  # label 5: rank 6
            [1.0, 2, 9, 8, 7, 3, 0],  # label 5: rank 4
        ]
    )
    labels = torch.tensor([0, 2, 5, 5])
    metrics = accuracy_metrics(num_classes=7, prefix="test/")
    metrics.update(logits[:2], labels[:2])
    metrics.update(logits[2:], labels[2:])
    result = metrics.compute()
    assert result["test/acc"].item() == pytest.approx(1 / 4)
    assert result["test/acc_top5"].item() == pytest.approx(3 / 4)


def test_top5_only_with_more_than_five_classes() -> None:
    assert set(accuracy_metrics(5, "val/").keys()) == {"val/acc"}
    assert set(accuracy_metrics(6, "val/").keys()) == {"val/acc", "val/acc_top5"}


def test_classifier_loss_uses_label_smoothing() -> None:
    model = ImageClassifier(
        net={"name": "lenet"}, num_classes=10, optimizer=SGD, label_smoothing=0.1
    )
    logits, labels = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    expected = nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    torch.testing.assert_close(model.criterion(logits, labels).mean(), expected)
