"""The evaluation report: per-class table and confusion matrix against a hand computation."""

import csv
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from imgcls.eval import evaluate
from imgcls.models.loading import load_classifier
from imgcls.train import train


def hand_confusion(cfg) -> tuple[torch.Tensor, list[str]]:
    """Predict the test split image by image, outside Lightning, and count (true, predicted)."""
    from imgcls.utils.compose import instantiate

    model = load_classifier(cfg.ckpt_path)
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    confusion = torch.zeros(datamodule.num_classes, datamodule.num_classes, dtype=torch.long)
    with torch.inference_mode():
        for images, labels in datamodule.test_dataloader():
            images, labels = datamodule.on_after_batch_transfer((images, labels), 0)
            for true, pred in zip(labels, model.eval_logits(images).argmax(1), strict=True):
                confusion[true, pred] += 1
    return confusion, datamodule.class_names


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_report_matches_a_hand_computation(make_cfg, tmp_path: Path) -> None:
    train_cfg = make_cfg("model=cifar_quick", "optimizer.lr=0.05", "trainer.max_epochs=1")
    train(train_cfg)
    run = tmp_path / "run"
    # the test stage of training wrote the report and put its figures in TensorBoard
    assert {"per_class.csv", "confusion.csv", "confusion.png", "misclassified.png"} <= {
        p.name for p in run.iterdir()
    }
    events = EventAccumulator(str(next((run / "tensorboard").rglob("events.out.*")).parent))
    events.Reload()
    assert {"test/confusion", "test/misclassified"} <= set(events.Tags()["images"])

    cfg = make_cfg(
        f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
        config_name="eval",
        run_dir=tmp_path / "eval",
    )
    metrics, _ = evaluate(cfg)
    confusion, names = hand_confusion(cfg)
    assert (confusion.sum(0) > 0).sum() >= 3  # several classes predicted: the rows mean something

    rows = read_csv(tmp_path / "eval" / "confusion.csv")
    assert rows[0][1:] == names
    assert torch.tensor([[int(c) for c in row[1:]] for row in rows[1:]]).equal(confusion)
    table = read_csv(tmp_path / "eval" / "per_class.csv")
    assert table[0] == ["class", "support", "accuracy", "precision", "recall", "f1"]
    for i, row in enumerate(table[1:]):
        right, support, predicted = confusion[i, i], confusion[i].sum(), confusion[:, i].sum()
        recall = (right / support).item()
        precision = (right / predicted).item() if predicted else 0.0
        f1 = 2 * precision * recall / (precision + recall) if right else 0.0
        assert row[0] == names[i]
        assert int(row[1]) == support
        assert [float(x) for x in row[2:]] == pytest.approx(
            [recall, precision, recall, f1], abs=1e-5
        )
    assert metrics["test/acc"] == pytest.approx((confusion.trace() / confusion.sum()).item())


def test_the_most_confident_mistakes_are_kept_across_batches() -> None:
    from imgcls.callbacks.eval_report import ConfidentMistakes

    torch.manual_seed(0)
    batches = [
        (torch.randn(6, 3, 2, 2), torch.randn(6, 4), torch.randint(0, 4, (6,))) for _ in range(4)
    ]
    mistakes = ConfidentMistakes(5)
    for images, logits, labels in batches:
        mistakes.update(images, logits, labels)
    confidence, images, labels, preds = mistakes.wrong()

    every = [
        (c.item(), i, t.item(), p.item())
        for batch_images, logits, batch_labels in batches
        for c, p, t, i in zip(*logits.softmax(1).max(1), batch_labels, batch_images, strict=True)
        if p != t
    ]
    best = sorted(every, key=lambda row: -row[0])[:5]
    assert confidence.tolist() == pytest.approx([row[0] for row in best])
    assert labels.tolist() == [row[2] for row in best]
    assert preds.tolist() == [row[3] for row in best]
    assert torch.equal(images, torch.stack([row[1] for row in best]))
