"""models/classifier.py: the module hands each batch to its task's objective, blends a teacher's
term into training losses only, and keeps the objective's state where checkpoints and the EMA
find it."""

import copy

import pytest
import torch

from imgcls.models.classifier import ImageClassifier
from imgcls.models.distill import Teacher
from tests.helpers import SGD


def classifier(**options) -> ImageClassifier:
    return ImageClassifier(net={"name": "lenet"}, num_classes=3, optimizer=SGD, **options)


@pytest.mark.parametrize(
    ("options", "fitted"),
    [({"temperature": "fit"}, "temperature"), ({"task": "multilabel"}, "thresholds")],
)
def test_the_objectives_state_travels_under_its_name(options: dict, fitted: str) -> None:
    model = classifier(class_weights=[1.0, 2.0, 3.0], **options)
    state = model.state_dict()
    assert f"objective.{fitted}" in state
    assert any(k.startswith("objective.criterion.") for k in state)  # the class weights
    assert any(k.startswith("objective.val_f1_macro_best.") for k in state)
    assert model.fitted_on_validation == (f"objective.{fitted}",)
    assert model.get_buffer(model.fitted_on_validation[0]) is getattr(model.objective, fitted)
    assert not any(k.startswith(("teacher", "divergence")) for k in state)


def test_a_teacher_blends_into_training_losses_only() -> None:
    """A teacher whose logits are the student's: the soft term is 0, so with alpha 1 a training
    step's loss is 0 while evaluation scores the usual loss."""
    torch.manual_seed(0)
    model = classifier()
    model.teacher = Teacher(copy.deepcopy(model.net), alpha=1.0, temperature=1.0)
    model.net.eval()  # dropout off: the teacher (eval mode) and the student agree
    batch = (torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    train_loss, _ = model._step(batch, "train")
    val_loss, _ = model._step(batch, "val")
    assert train_loss.item() == pytest.approx(0.0, abs=1e-6)
    assert val_loss.item() > 0.5
