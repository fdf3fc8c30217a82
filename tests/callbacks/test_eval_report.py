"""The evaluation report: per-class table, confusion matrix and calibration against a hand
computation."""

import csv
import re
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.classification import MulticlassCalibrationError

from imgcls.eval import evaluate
from imgcls.models.calibration import fit_temperature
from imgcls.models.loading import load_classifier
from imgcls.train import train


def hand_logits(cfg, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The logits of a split, image by image, outside Lightning: (logits, labels, class names)."""
    from imgcls.run.compose import instantiate

    model = load_classifier(cfg.ckpt_path)
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    logits, labels = [], []
    with torch.inference_mode():
        for batch in getattr(datamodule, f"{split}_dataloader")():
            images, batch_labels = datamodule.on_after_batch_transfer(batch, 0)
            logits += list(model.eval_logits(images))
            labels += list(batch_labels)
    return torch.stack(logits), torch.stack(labels), datamodule.class_names


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_report_matches_a_hand_computation(
    make_cfg, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The confusion, per-class and calibration files against the logits computed image by
    image; the temperature fitted on the validation split (model.temperature=fit) with the
    weights the checkpoint holds (an EMA of them)."""
    train_cfg = make_cfg(
        "model=cifar_quick",
        "optimizer.lr=0.05",
        "trainer.max_epochs=1",
        "model.temperature=fit",
        # validated on the averaged weights: the checkpoint's temperature is theirs
        "callbacks=[default,ema]",
        "callbacks.ema.decay=0.5",
        "callbacks.eval_report.explain=true",  # tests run without it (tests/conftest.py)
    )
    with caplog.at_level("INFO"):
        train(train_cfg)
    run = tmp_path / "run"
    # the report says how many validation images fitted the temperature (a warning said few)
    said = caplog.text
    fitted = re.search(r"temperature [\d.]+, fitted on (\d+) validation images\)", said)
    assert fitted is not None
    assert f"The temperature is fitted on {fitted[1]} validation images" in said
    # the test stage of training wrote the report and put its figures in TensorBoard
    assert {
        "per_class.csv",
        "confusion.csv",
        "confusion.png",
        "misclassified.png",
        "explanations.png",
        "calibration.csv",
        "reliability.png",
    } <= {p.name for p in run.iterdir()}
    events = EventAccumulator(str(next((run / "tensorboard").rglob("events.out.*")).parent))
    events.Reload()
    tags = {"test/confusion", "test/misclassified", "test/explanations", "test/reliability"}
    assert tags <= set(events.Tags()["images"])

    cfg = make_cfg(
        f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
        "callbacks.eval_report.explain=false",
        config_name="eval",
        run_dir=tmp_path / "eval",
    )
    metrics, _ = evaluate(cfg)
    assert (tmp_path / "eval" / "misclassified.png").is_file()
    assert not (tmp_path / "eval" / "explanations.png").exists()  # explain=false: no maps
    logits, labels, names = hand_logits(cfg, "test")
    confusion = torch.zeros(len(names), len(names), dtype=torch.long)
    for true, pred in zip(labels, logits.argmax(1), strict=True):
        confusion[true, pred] += 1
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

    # the temperature: the checkpoint's is the one that best fits the validation split's logits
    temperature = float(load_classifier(cfg.ckpt_path).objective.temperature)
    val_logits, val_labels, _ = hand_logits(cfg, "val")
    assert temperature == pytest.approx(float(fit_temperature(val_logits, val_labels)), rel=1e-3)
    assert temperature != pytest.approx(1.0, abs=0.05)

    def nll(t: float) -> float:
        return float(torch.nn.functional.cross_entropy(val_logits / t, val_labels))

    assert nll(temperature) < nll(1.0)
    assert nll(temperature) <= min(nll(temperature * 1.05), nll(temperature / 1.05))
    # the expected calibration error of the test split, before and after: torchmetrics' own
    calibration = read_csv(tmp_path / "eval" / "calibration.csv")
    assert calibration[0][0] == "probabilities"
    for kind, scaled in (("raw", logits), ("calibrated", logits / temperature)):
        ece = float(MulticlassCalibrationError(len(names), n_bins=15)(scaled, labels))
        rows = [row for row in calibration[1:] if row[0] == kind]
        assert len(rows) == 15
        assert sum(int(row[3]) for row in rows) == len(labels)
        assert float(rows[0][-1]) == pytest.approx(ece, abs=1e-5)
        name = "test/ece" if kind == "raw" else "test/ece_calibrated"
        assert metrics[name] == pytest.approx(ece, abs=1e-5)


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


def test_wrong_images_are_explained_or_the_reason_said(caplog: pytest.LogCaptureFixture) -> None:
    """Each wrong image beside the maps of its predicted and true class (three cells an image);
    a net with no map to take: one logged line and no figure, the report goes on."""
    from types import SimpleNamespace

    from imgcls.callbacks.eval_report import explain_mistakes
    from imgcls.models.nets import NETS

    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    pixels = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    labels, preds = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])
    captions = ["a → b", "b → c", "c → a"]
    net = NETS["lenet"](num_classes=3)
    model = SimpleNamespace(net=net, head=net[-1], device=torch.device("cpu"))
    fig = explain_mistakes(model, images, pixels, labels, preds, captions, ["a", "b", "c"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["a → b\nCAM of: b | a", "b → c\nCAM of: c | b", "c → a\nCAM of: a | c"]
    cell = fig.axes[0].get_images()[0].get_array()  # image, gap, map of b, gap, map of a
    assert cell.shape == (32, 3 * 32 + 2 * 2, 3)
    assert (cell[:, :32] == pixels[0].permute(1, 2, 0).numpy()).all()  # the image as it is
    maps = [cell[:, 34:66], cell[:, 68:]]
    assert not (maps[0] == cell[:, :32]).all()  # overlaid with its maps,
    assert not (maps[0] == maps[1]).all()  # one for each class

    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))
    model = SimpleNamespace(net=mlp, head=mlp[-1], device=torch.device("cpu"))
    with caplog.at_level("WARNING"):
        assert explain_mistakes(model, images, pixels, labels, preds, captions, list("abc")) is None
    assert "No explanations.png: Sequential cannot be explained" in caplog.text


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 64, 16)], ids=["square", "tall_grey"])
def test_an_image_grid_keeps_each_image_whole_under_its_caption(shape: tuple) -> None:
    """reports/plots.py: the grid is one picture with a caption band above each image, tall
    and one-channel images included; every image's pixels are in it, none overwritten."""
    from imgcls.reports.plots import close_figure, image_grid_figure

    images = torch.stack([torch.full(shape, 40 * (i + 1), dtype=torch.uint8) for i in range(5)])
    fig = image_grid_figure(images, [f"image {i}" for i in range(5)], "grid", columns=3)
    (canvas,) = fig.axes[0].get_images()
    pixels = torch.from_numpy(canvas.get_array().copy())
    for i in range(5):
        assert (pixels == 40 * (i + 1)).all(dim=2).sum() == shape[1] * shape[2]
    assert [t.get_text() for t in fig.axes[0].texts] == [f"image {i}" for i in range(5)]
    close_figure(fig)
