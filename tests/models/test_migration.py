"""models/migration.py: a checkpoint of an earlier layout (the task's state without its
`objective.` prefix, a compiled net's `_orig_mod.` keys, no bests, no temperature) loads into
today's ImageClassifier through on_load_checkpoint and a strict load_state_dict, the EMA's raw
weights alike; today's checkpoints pass unchanged."""

import pytest
import torch

from imgcls.models.classifier import ImageClassifier
from tests.helpers import SGD

BESTS = ("val_acc_best", "val_acc_balanced_best", "val_f1_macro_best")


def classifier(seed: int) -> ImageClassifier:
    torch.manual_seed(seed)
    return ImageClassifier(
        net={"name": "lenet"},
        num_classes=3,
        optimizer=SGD,
        class_weights=[1.0, 1.0, 1.0],
        temperature="fit",
    )


def trained() -> ImageClassifier:
    """A model whose every value differs from a fresh one's."""
    model = classifier(0)
    model.objective.set_class_weights([0.5, 1.0, 4.0])
    model.objective.temperature.fill_(2.5)
    model.objective.val_acc_best.update(torch.tensor(0.9))
    return model


def old_layout(state: dict, compiled: str, keep: tuple[str, ...] = ()) -> dict:
    """`state` as an earlier version wrote it: no `objective.` prefix, the net's keys as
    `compiled` names them, and none of the bests or temperature (unless kept)."""
    old = {}
    for key, value in state.items():
        bare = key.removeprefix("objective.")
        if bare.startswith((*BESTS, "temperature")) and not bare.startswith(keep):
            continue
        if key.startswith("net."):
            bare = key.replace("net.", compiled, 1)
        old[bare] = value.clone()
    return old


@pytest.mark.parametrize("compiled", ["net._orig_mod.", "_orig_mod.net."])
def test_an_old_checkpoint_loads_into_todays_model(compiled: str) -> None:
    source = trained()
    state = source.state_dict()
    checkpoint = {
        "state_dict": old_layout(state, compiled),
        "current_model_state": old_layout(state, compiled),  # an EMA run's raw weights
    }
    assert not any(key.startswith("objective.") for key in checkpoint["state_dict"])
    with pytest.raises(RuntimeError, match="Missing key"):  # as it is, it does not load
        classifier(1).load_state_dict(old_layout(state, compiled))
    model = classifier(1)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])  # strict: every key where it belongs
    assert set(checkpoint["current_model_state"]) == set(model.state_dict())
    for key, value in source.net.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key
    assert model.objective.criterion.weight.tolist() == [0.5, 1.0, 4.0]  # found without prefix
    assert float(model.objective.temperature) == 1.0  # none kept: a fresh model's
    assert torch.isinf(model.objective.val_acc_best.max_value)  # no best yet
    assert model.objective.val_acc_best.max_value < 0
    images = torch.randn(2, 3, 32, 32)
    source.eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), source(images))


def test_what_an_old_checkpoint_kept_is_moved_not_replaced() -> None:
    state = trained().state_dict()
    checkpoint = {"state_dict": old_layout(state, "net.", keep=("temperature", "val_acc_best"))}
    assert checkpoint["state_dict"]["temperature"] == 2.5
    model = classifier(1)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    assert float(model.objective.temperature) == 2.5
    assert float(model.objective.val_acc_best.max_value) == pytest.approx(0.9)
    assert torch.isinf(model.objective.val_f1_macro_best.max_value)  # the one it lacked


def test_todays_checkpoint_passes_unchanged() -> None:
    state = trained().state_dict()
    checkpoint = {"state_dict": {key: value.clone() for key, value in state.items()}}
    classifier(1).on_load_checkpoint(checkpoint)
    assert list(checkpoint["state_dict"]) == list(state)
    for key, value in state.items():
        assert torch.equal(checkpoint["state_dict"][key], value), key


def test_an_old_multilabel_checkpoint_drops_the_temperature_every_task_once_had() -> None:
    """The module once held a temperature whatever its task: a multi-label checkpoint of then
    has one, which today's multi-label objective does not; it loads, thresholds and all."""
    torch.manual_seed(0)
    options = {"net": {"name": "lenet"}, "num_classes": 3, "optimizer": SGD, "task": "multilabel"}
    source = ImageClassifier(**options, threshold=0.3)
    state = {k.removeprefix("objective."): v.clone() for k, v in source.state_dict().items()}
    state["temperature"] = torch.ones(())
    checkpoint = {"state_dict": state}
    model = ImageClassifier(**options)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])  # strict: nothing left over
    assert model.objective.thresholds.tolist() == pytest.approx([0.3] * 3)
