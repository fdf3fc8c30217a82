"""callbacks/tensorboard_images.py: the first training batch as the net sees it, turned back
into pixels with its class names, once per run; the validation confusion matrix of every
validation epoch (not the sanity check), counted as a hand count of the predictions."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from imgcls.callbacks import tensorboard_images
from imgcls.callbacks.tensorboard_images import ValidationConfusion
from imgcls.models.objectives import OBJECTIVES
from imgcls.train import build_components


class Seen(Callback):
    """The first training batch the net got, and each validation epoch's (predictions,
    labels), sanity check left out."""

    def __init__(self) -> None:
        self.first: tuple[torch.Tensor, torch.Tensor] | None = None
        self.validations: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first is None:
            self.first = (batch[0].clone(), batch[1].clone())

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.validations.append(([], []))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_) -> None:
        predictions, labels = self.validations[-1]
        predictions.append(outputs["logits"].argmax(1))
        labels.append(batch[1])

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            self.validations.pop()


def test_the_first_batch_once_and_every_validations_confusion(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grids, confusions = [], []
    grid_figure = tensorboard_images.image_grid_figure
    confusion_figure = tensorboard_images.confusion_figure

    def grid(pixels, names, title):
        grids.append((pixels.clone(), names))
        return grid_figure(pixels, names, title)

    def confusion(matrix, names):
        confusions.append(matrix.clone())
        return confusion_figure(matrix, names)

    monkeypatch.setattr(tensorboard_images, "image_grid_figure", grid)
    monkeypatch.setattr(tensorboard_images, "confusion_figure", confusion)
    cfg = make_cfg(
        "model=cifar_quick",
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=2",
        "callbacks.training_batch_grid.max_images=5",
        "test=false",
    )
    objects = build_components(cfg)
    seen = Seen()
    objects["trainer"].callbacks.append(seen)
    datamodule, model = objects["datamodule"], objects["model"]
    objects["trainer"].fit(model, datamodule=datamodule)

    (pixels, names), first = grids[0], seen.first
    assert len(grids) == 1
    assert torch.equal(pixels, datamodule.contract.denormalize(first[0][:5]))
    assert names == [datamodule.class_names[i] for i in first[1][:5].tolist()]

    assert len(confusions) == len(seen.validations) == 2
    for matrix, (predictions, labels) in zip(confusions, seen.validations, strict=True):
        counted = torch.zeros_like(matrix)
        for true, predicted in zip(torch.cat(labels), torch.cat(predictions), strict=True):
            counted[true, predicted] += 1
        assert torch.equal(matrix, counted)

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("train/augmented_batch")] == [0]
    assert [e.step for e in events.Images("val/confusion")] == [2, 4]


def test_no_confusion_for_several_labels_per_image(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = []
    monkeypatch.setattr(tensorboard_images, "confusion_figure", lambda *a: drawn.append(a))
    callback = ValidationConfusion()
    module = SimpleNamespace(objective=OBJECTIVES["multilabel"](num_classes=3))
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, loggers=[])
    callback.on_validation_epoch_start(trainer, module)
    outputs = {"logits": torch.randn(2, 3)}
    callback.on_validation_batch_end(trainer, module, outputs, (None, torch.ones(2, 3)), 0)
    callback.on_validation_epoch_end(trainer, module)
    assert callback.confusion is None
    assert not drawn
