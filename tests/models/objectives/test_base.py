"""models/objectives/base.py: what every task does with its losses, metric state and bests: an
epoch's values (the loss a mean over images, state reset between epochs, bests updated only by a
real validation), the progress bar's names, class weights given or worked out from the data, and
the state a checkpoint carries."""

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from imgcls.models.objectives import base
from imgcls.models.objectives.base import OBJECTIVES, Objective
from imgcls.utils.errors import UserError


class Toy(Objective):
    """The least a task says: accuracy, tracked; its balanced weight the count's inverse."""

    scores = ("acc",)
    tracked = ("acc",)
    headline = "acc"

    def make_criterion(self) -> nn.Module:
        return nn.CrossEntropyLoss(reduction="none")

    def make_metrics(self, stage: str) -> MetricCollection:
        accuracy = MulticlassAccuracy(self.num_classes, average="micro")
        return MetricCollection({"acc": accuracy}, prefix=f"{stage}/")

    def balanced_weights(self, counts: torch.Tensor, total: int) -> list[float]:
        return (total / counts.double()).tolist()


def scored(objective: Objective, stage: str, right: int, wrong: int) -> None:
    """One batch of `right` correct and `wrong` incorrect predictions of class 0, each loss 1."""
    logits = torch.tensor([[5.0, 0.0, 0.0]]).expand(right + wrong, 3)
    targets = torch.tensor([0] * right + [1] * wrong)
    objective.update(stage, logits, targets, torch.ones(right + wrong))


def test_the_epoch_loss_is_a_mean_over_images_not_batches() -> None:
    objective = Toy(3)
    logits = torch.zeros(4, 3)
    objective.update("train", logits[:3], torch.zeros(3, dtype=torch.long), torch.ones(3))
    objective.update("train", logits[:1], torch.zeros(1, dtype=torch.long), torch.tensor([5.0]))
    values = objective.epoch_values("train")
    assert float(values["train/loss"]) == pytest.approx(2.0)  # (1 + 1 + 1 + 5) / 4, not 3
    assert float(values["train/acc"]) == 1.0
    assert not any(name.endswith("_best") for name in values)  # bests are validation's
    objective.update("train", logits[:1], torch.zeros(1, dtype=torch.long), torch.tensor([4.0]))
    objective.update("train", logits[:1], torch.ones(1, dtype=torch.long), torch.tensor([4.0]))
    values = objective.epoch_values("train")
    assert float(values["train/loss"]) == pytest.approx(4.0)  # the last epoch's state reset
    assert float(values["train/acc"]) == 0.5


def test_training_batches_reach_the_metrics_a_few_at_a_time_with_the_same_epoch_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A torchmetrics update costs ~80 µs of host time: training batches are held and updated
    together (every PENDING_BATCHES, or sooner for big logits), every one of them counted."""
    updates: list[torch.Tensor] = []
    recorded = record_calls(Objective.update_metrics, updates)
    monkeypatch.setattr(Objective, "update_metrics", recorded)
    objective, generator = Toy(3), torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(n, 3, generator=generator), torch.randint(0, 3, (n,), generator=generator))
        for n in [5] * (base.PENDING_BATCHES + 3) + [2]
    ]
    for logits, targets in batches:
        objective.update("train", logits, targets, logits.square().sum(1))
    assert [len(logits) for logits in updates] == [5 * base.PENDING_BATCHES]  # 4 still held
    values = objective.epoch_values("train")
    assert [len(logits) for logits in updates][1:] == [5 * 3 + 2]  # the epoch's end takes them
    logits, targets = (torch.cat(parts) for parts in zip(*batches, strict=True))
    expected_acc = (logits.argmax(1) == targets).double().mean()
    assert float(values["train/acc"]) == pytest.approx(float(expected_acc))
    assert float(values["train/loss"]) == pytest.approx(float(logits.square().sum(1).mean()))
    monkeypatch.setattr(base, "PENDING_ELEMENTS", 30)  # big logits: flushed every other batch
    updates.clear()
    for logits, targets in batches[:4]:
        objective.update("train", logits, targets, logits.square().sum(1))
    assert [len(logits) for logits in updates] == [10, 10]
    objective.update("val", *batches[0], torch.ones(5))  # evaluation batches at once
    assert len(updates) == 3


def record_calls(update_metrics: Callable, calls: list[torch.Tensor]) -> Callable:
    """`update_metrics`, each call's logits kept in `calls`."""

    def recorded(self: Objective, stage: str, logits: torch.Tensor, *rest: torch.Tensor) -> None:
        calls.append(logits)
        update_metrics(self, stage, logits, *rest)

    return recorded


def test_bests_follow_real_validations_only() -> None:
    objective = Toy(3)
    epochs = [(1, 1, True), (4, 0, False), (1, 3, True), (3, 1, True)]  # (right, wrong, fit)
    seen = []
    for right, wrong, fit in epochs:
        scored(objective, "val", right, wrong)
        values = objective.epoch_values("val", fit=fit)
        assert float(values["val/acc"]) == right / (right + wrong)  # this epoch's alone
        seen.append(float(values["val/acc_best"]) if "val/acc_best" in values else None)
    # a sanity check's 100% neither counts nor shows; a worse epoch keeps the best
    assert seen == [0.5, None, 0.5, 0.75]
    objective.reset_bests()
    scored(objective, "val", 1, 3)
    assert float(objective.epoch_values("val")["val/acc_best"]) == 0.25


def test_the_progress_bar_shows_losses_and_the_headline_score() -> None:
    objective = Toy(3)
    shown = ["train/loss", "val/loss", "val/acc", "val/acc_best", "train/acc"]
    hidden = ["val/acc_top5", "val/acc_balanced", "val/temperature", "lr-SGD"]
    assert all(objective.in_progress_bar(name) for name in shown)
    assert not any(objective.in_progress_bar(name) for name in hidden)


def test_class_weights_are_one_per_class_and_set_in_place() -> None:
    objective = Toy(3, class_weights=[1.0, 2.0, 3.0])
    buffer = objective.criterion.weight
    assert buffer.tolist() == [1.0, 2.0, 3.0]
    objective.set_class_weights([0.5, 0.5, 2.0])
    assert objective.criterion.weight is buffer  # the buffer a copy of the model shares
    assert buffer.tolist() == [0.5, 0.5, 2.0]
    logits, targets = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 1])
    expected = nn.functional.cross_entropy(logits, targets, weight=buffer, reduction="none")
    torch.testing.assert_close(objective.losses(logits, targets), expected)
    with pytest.raises(UserError) as err:
        objective.set_class_weights([1.0, 2.0])
    assert str(err.value).startswith("model.class_weights has 2 values for 3 classes")
    assert "\n" not in str(err.value)
    assert buffer.tolist() == [0.5, 0.5, 2.0]  # a refused list changes nothing


def test_balanced_class_weights_are_worked_out_from_the_train_counts() -> None:
    objective = Toy(3, class_weights="balanced")
    assert objective.criterion.weight.tolist() == [1.0, 1.0, 1.0]  # until the data is known
    names = ["a", "b", "c"]
    counts = torch.tensor([6, 3, 1])
    resolved = objective.fit_to_data(counts, 10, None, names)
    assert resolved == pytest.approx([10 / 6, 10 / 3, 10.0])
    assert objective.criterion.weight.tolist() == pytest.approx(resolved)
    with pytest.raises(UserError, match="balanced needs a data source that knows its train"):
        Toy(3, class_weights="balanced").fit_to_data(None, 10, None, names)
    given = Toy(3, class_weights=[1.0, 2.0, 3.0])
    assert given.fit_to_data(counts, 10, None, names) is None
    assert given.criterion.weight.tolist() == [1.0, 2.0, 3.0]  # a given list stays
    assert Toy(3).fit_to_data(None, 10, None, names) is None
    assert Toy(3).criterion.weight is None


def test_a_checkpoint_carries_the_bests_and_class_weights_not_the_epochs_metric_state() -> None:
    objective = Toy(3, class_weights=[1.0, 2.0, 3.0])
    scored(objective, "val", 3, 1)
    objective.epoch_values("val")
    scored(objective, "train", 1, 1)  # an epoch in progress
    state = objective.state_dict()
    assert state["criterion.weight"].tolist() == [1.0, 2.0, 3.0]
    assert float(state["val_acc_best.max_value"]) == 0.75
    assert not [key for key in state if key.startswith(("train_", "val_loss", "val_metrics"))]
    restored = Toy(3, class_weights=[1.0, 1.0, 1.0])
    restored.load_state_dict(state)
    scored(restored, "val", 1, 1)
    assert float(restored.epoch_values("val")["val/acc_best"]) == 0.75  # counts earlier epochs


def test_the_tasks_are_registered_by_name() -> None:
    assert {"multiclass", "multilabel"} <= set(OBJECTIVES)
    assert all(issubclass(OBJECTIVES[name], Objective) for name in OBJECTIVES)
    with pytest.raises(
        UserError, match=r"Unknown model\.task='multiclas'\. Did you mean multiclass"
    ):
        OBJECTIVES["multiclas"]
