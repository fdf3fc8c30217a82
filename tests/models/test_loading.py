"""models/loading.py: our checkpoints read safely, or refused in one line each (no file, not a
checkpoint, damaged, carrying code, not ours), and the model rebuilt from one on the CPU from
its own hyperparameters, with no pretrained weights fetched."""

import os
import pickle
import zipfile
from functools import partial
from pathlib import Path

import pytest
import torch

from imgcls.models.classifier import ImageClassifier
from imgcls.models.loading import classifier_from_checkpoint, load_classifier, read_checkpoint
from imgcls.utils.errors import UserError
from tests.helpers import SGD


class Payload:
    """Unpickling this makes a directory: proof that code in a file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def refusal(path: Path) -> str:
    """read_checkpoint's one line for `path`."""
    with pytest.raises(UserError) as err:
        read_checkpoint(path)
    return str(err.value)


def saved_classifier(path: Path, **hparams) -> ImageClassifier:
    """A fresh classifier saved as our checkpoint, its hyperparameters updated by `hparams`."""
    torch.manual_seed(0)
    model = ImageClassifier(
        net={"name": "lenet"}, num_classes=4, optimizer=SGD, class_names=list("abcd")
    )
    kept = {**dict(model.hparams), **hparams}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": kept}, path)
    return model


def test_a_text_file_as_checkpoint_is_named_for_what_it_is(tmp_path: Path) -> None:
    notes = tmp_path / "notes.ckpt"
    notes.write_text("my best run was yesterday\n")
    with pytest.raises(UserError, match="it is not a checkpoint") as err:
        load_classifier(notes)
    assert "mmap" not in str(err.value)
    half = tmp_path / "half.ckpt"
    half.write_bytes(b"PK\x03\x04" + b"\0" * 20)
    with pytest.raises(UserError, match="damaged"):
        load_classifier(half)


def test_a_missing_file_says_what_to_pass(tmp_path: Path) -> None:
    message = refusal(tmp_path / "nope.ckpt")
    assert message.startswith(f"No checkpoint at {tmp_path / 'nope.ckpt'}. Pass ckpt_path=")
    assert "\n" not in message


def test_a_checkpoint_cut_short_is_damaged(tmp_path: Path) -> None:
    whole = tmp_path / "whole.ckpt"
    saved_classifier(whole)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert refusal(cut) == f"Cannot load {cut}: the file is damaged (truncated or partly written)."


@pytest.mark.parametrize("writer", ["pickle.dump", "torch.save"])
def test_a_file_carrying_code_is_refused_and_the_code_never_runs(
    tmp_path: Path, writer: str
) -> None:
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.ckpt"
    content = {"state_dict": Payload(marker), "hyper_parameters": {}}
    if writer == "torch.save":  # a zip archive, as a real checkpoint is
        torch.save(content, evil)
    else:
        evil.write_bytes(pickle.dumps(content))
    message = refusal(evil)
    assert message.startswith(f"Cannot load {evil}")
    assert not marker.exists()
    if writer == "pickle.dump":  # torch.save's: test_a_failure_wrapping_torchs_error_...
        assert message == f"Cannot load {evil}: it is not a checkpoint " + (
            "(torch.save writes zip archives; this is not one). Pass ckpt_path=<run dir>/"
            "checkpoints/best.ckpt (runs are under logs/train/runs/)."
        )


def test_other_files_are_refused_for_what_they_are(tmp_path: Path) -> None:
    archive = tmp_path / "archive.ckpt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("notes.txt", "a zip, but not torch's")
    message = refusal(archive)
    assert message.startswith(f"Cannot load {archive} as an imgcls checkpoint: ")
    assert "\n" not in message
    weights = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2)}, weights)
    assert (
        refusal(weights) == f"{weights} is not an imgcls checkpoint (it has no hyper_parameters)."
    )


def test_a_checkpoint_reads_as_plain_data_mapped_or_not(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    model = saved_classifier(path)
    for mmap in (False, True):
        checkpoint = read_checkpoint(path, mmap=mmap)
        assert checkpoint["hyper_parameters"]["class_names"] == list("abcd")
        for key, value in model.state_dict().items():
            assert torch.equal(checkpoint["state_dict"][key], value), key


def test_the_model_is_rebuilt_from_its_hyperparameters_without_fetching_weights(
    tmp_path: Path,
) -> None:
    """Its net was started from a weights file since deleted, and its hyperparameters hold a
    setting an older version kept: neither stops it loading."""
    path = tmp_path / "model.ckpt"
    net = {"name": "lenet", "weights_path": str(tmp_path / "deleted.pt")}
    original = saved_classifier(path, net=net, freeze_backbone=True).eval()
    model = load_classifier(path)
    assert not model.training
    assert model.class_names == list("abcd")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), original(images))


def misfit(path: Path) -> dict:
    """A checkpoint whose hyperparameters build a head of another size than its weights."""
    saved_classifier(path)
    checkpoint = read_checkpoint(path)
    checkpoint["hyper_parameters"]["num_classes"] = 7
    return checkpoint


def test_weights_that_do_not_fit_the_rebuilt_model_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    with pytest.raises(UserError) as err:
        classifier_from_checkpoint(misfit(path), path)
    assert str(err.value).startswith(f"Cannot load {path} as an imgcls checkpoint: ")
    assert "size mismatch for net." in str(err.value)


def failure(case: str, tmp_path: Path) -> str:
    path = tmp_path / f"{case}.ckpt"
    if case == "carrying code":
        torch.save({"state_dict": Payload(tmp_path / "ran"), "hyper_parameters": {}}, path)
        load = partial(read_checkpoint, path)
    else:
        load = partial(classifier_from_checkpoint, misfit(path), path)
    with pytest.raises(UserError) as err:
        load()
    return str(err.value)


@pytest.mark.parametrize("case", ["carrying code", "weights that do not fit"])
def test_a_failure_wrapping_torchs_error_is_still_one_line(case: str, tmp_path: Path) -> None:
    assert "\n" not in failure(case, tmp_path)
