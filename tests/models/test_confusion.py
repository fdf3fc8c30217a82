"""models/confusion.py: a confusion matrix the device builds without a host read."""

import torch


def test_the_confusion_matrix_counts_as_torchmetrics_without_bincount() -> None:
    from torchmetrics.classification import (
        MulticlassConfusionMatrix,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
    )

    from imgcls.models.confusion import ConfusionMatrix, per_class_scores

    torch.manual_seed(0)
    ours, reference = ConfusionMatrix(7), MulticlassConfusionMatrix(7)
    batches = [(torch.randn(50, 7), torch.randint(0, 6, (50,))) for _ in range(3)]  # class 6 unseen
    for logits, labels in batches:
        ours.update(logits, labels)
        reference.update(logits, labels)
    assert torch.equal(ours.compute(), reference.compute())
    scores = per_class_scores(ours.compute())
    logits, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    for name, metric in (
        ("precision", MulticlassPrecision),
        ("recall", MulticlassRecall),
        ("f1", MulticlassF1Score),
    ):
        expected = metric(7, average=None, zero_division=0)(logits, labels)
        torch.testing.assert_close(scores[name].float(), expected, msg=name)
    assert scores["support"].tolist() == torch.bincount(labels, minlength=7).tolist()
