"""models/objectives/multiclass.py: one label per image, its scores against hand computations and
sklearn, its class weights, its loss and the imbalance it says."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score
from torch import nn
from torchmetrics.classification import MulticlassF1Score

from imgcls.data.sources.folder import FolderDataModule
from imgcls.models.calibration import FEW_CALIBRATION_IMAGES
from imgcls.models.classifier import ImageClassifier
from imgcls.models.objectives.multiclass import (
    MulticlassObjective,
    accuracy_metrics,
    balanced_class_weights,
)
from imgcls.utils.errors import UserError
from tests.data_factory import write_class_tree
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


def computed(metrics, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    metrics.update(logits, labels)
    return {name: float(value) for name, value in metrics.compute().items()}


def test_evaluation_scores_and_top5_only_with_more_than_five_classes() -> None:
    logits, labels = torch.randn(8, 6), torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    assert set(computed(accuracy_metrics(5, "val/"), logits[:, :5], labels % 5)) == {
        "val/acc",
        "val/acc_balanced",
        "val/f1_macro",
    }
    assert set(computed(accuracy_metrics(6, "val/"), logits, labels)) == {
        "val/acc",
        "val/acc_balanced",
        "val/f1_macro",
        "val/acc_top5",
    }
    assert set(computed(accuracy_metrics(6, "train/", evaluation=False), logits, labels)) == {
        "train/acc"
    }


def test_balanced_accuracy_and_macro_f1_match_sklearn_on_an_imbalanced_split() -> None:
    generator = torch.Generator().manual_seed(0)
    # 3 classes present, 90 / 9 / 1 images; class 3 never present but sometimes predicted,
    # class 4 neither present nor predicted
    labels = torch.cat([torch.zeros(90), torch.ones(9), torch.full((1,), 2)]).long()
    logits = torch.randn(100, 5, generator=generator)
    logits[:, 4] = -10.0
    logits[torch.arange(100), labels] += 1.0
    preds = logits.argmax(dim=1)
    assert (preds == 3).any()
    assert not (labels == 3).any()
    scores = computed(accuracy_metrics(5, "val/"), logits, labels)
    assert scores["val/acc_balanced"] == pytest.approx(balanced_accuracy_score(labels, preds))
    assert scores["val/f1_macro"] == pytest.approx(
        float(MulticlassF1Score(5, average="macro")(logits, labels))
    )
    assert scores["val/f1_macro"] == pytest.approx(
        f1_score(labels, preds, labels=[0, 1, 2, 3], average="macro", zero_division=0)
    )
    # the majority class always: accurate at 90%, balanced at a third
    always_first = torch.zeros(100, 5)
    always_first[:, 0] = 1.0
    majority = computed(accuracy_metrics(5, "val/"), always_first, labels)
    assert majority["val/acc"] == pytest.approx(0.9)
    assert majority["val/acc_balanced"] == pytest.approx(1 / 3)


def test_balanced_class_weights_are_inverse_frequency_averaging_one_per_image() -> None:
    counts = torch.tensor([90, 10, 0])
    weights = balanced_class_weights(counts)
    assert weights[0] * 90 == pytest.approx(weights[1] * 10)  # each class weighs the same
    assert (weights[0] * 90 + weights[1] * 10) / 100 == pytest.approx(1.0)
    assert weights[2] == 1.0


def test_class_weights_weigh_the_loss_and_travel_in_the_state() -> None:
    model = ImageClassifier(
        net={"name": "lenet"}, num_classes=3, optimizer=SGD, class_weights=[1.0, 2.0, 0.5]
    )
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    expected = nn.functional.cross_entropy(
        logits, labels, weight=torch.tensor([1.0, 2.0, 0.5]), reduction="none"
    )
    torch.testing.assert_close(model.objective.criterion(logits, labels), expected)
    assert model.state_dict()["objective.criterion.weight"].tolist() == [1.0, 2.0, 0.5]
    with pytest.raises(UserError, match="has 2 values for 3 classes"):
        ImageClassifier(net={"name": "lenet"}, num_classes=3, optimizer=SGD, class_weights=[1, 2])


def test_classifier_loss_uses_label_smoothing() -> None:
    model = ImageClassifier(
        net={"name": "lenet"}, num_classes=10, optimizer=SGD, label_smoothing=0.1
    )
    logits, labels = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    expected = nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    torch.testing.assert_close(model.objective.criterion(logits, labels).mean(), expected)


def test_an_imbalance_nothing_evens_out_is_said_at_fit_start(tmp_path: Path, caplog) -> None:
    """10x or more between the train split's largest and smallest class: one line naming the
    options, unless the draw or the loss already evens it out."""
    root = write_class_tree(tmp_path / "photos", ["cat", "dog"], per_class=15)
    write_class_tree(root, ["rare"], per_class=1)  # train: 10 cats, 10 dogs, 1 rare

    def said(sampler: str = "random", **model_options) -> str:
        datamodule = FolderDataModule(root=str(root), sampler=sampler)
        model = ImageClassifier(
            net={"name": "lenet"},
            num_classes=3,
            optimizer=SGD,
            class_names=datamodule.class_names,
            **model_options,
        )
        model.trainer = SimpleNamespace(datamodule=datamodule)
        caplog.clear()
        with caplog.at_level("WARNING"):
            model.setup("fit")
        return caplog.text

    assert "The train split is imbalanced: cat has 10 images, rare 1." in said()
    assert "data.sampler=balanced or model.class_weights=balanced" in said()
    assert "imbalanced" not in said(sampler="balanced")
    assert "imbalanced" not in said(class_weights="balanced")


@pytest.mark.parametrize(("images", "warned"), [(36, True), (600, False)])
def test_a_temperature_fitted_on_few_validation_images_is_said_to_be_noise(
    images: int, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The run says how many images fitted it (the report repeats it), and warns once below
    FEW_CALIBRATION_IMAGES, where a fit can leave the test split worse calibrated."""
    objective = MulticlassObjective(num_classes=3, temperature="fit")
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(images, 3, generator=generator) * 4
    labels = torch.randint(0, 3, (images,), generator=generator)
    with caplog.at_level("WARNING"):
        for _ in range(2):  # two validation epochs: one warning
            objective.update("val", logits, labels, torch.zeros(images))
            objective.fitted(fit=True)
    assert objective.temperature_images == images
    noise = [r for r in caplog.records if "mostly noise" in r.getMessage()]
    assert len(noise) == warned
    if warned:
        assert (
            noise[0]
            .getMessage()
            .startswith(
                f"The temperature is fitted on {images} validation images: below "
                f"{FEW_CALIBRATION_IMAGES}"
            )
        )
