"""export.py from a checkpoint alone: every format round-trips, an unknown one is one line."""

import json
from pathlib import Path

import pytest
import torch
import torchvision

from imgcls.export import export
from imgcls.models.loading import load_classifier
from imgcls.utils.errors import UserError
from tests.data_factory import FOLDER_CLASSES
from tests.helpers import compose_task


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "state_dict", "safetensors"])
def test_every_export_format_round_trips(trained_folder: Path, tmp_path: Path, fmt: str) -> None:
    card = export(compose_task("export", tmp_path, f"ckpt_path={trained_folder}", f"format={fmt}"))
    out = tmp_path / "export"
    assert card["check"]["max_abs_logit_diff"] <= 1e-3
    assert card["classes"] == FOLDER_CLASSES
    assert card["temperature"] == pytest.approx(
        float(load_classifier(trained_folder).objective.temperature)
    )
    assert card["temperature"] != 1.0
    assert card["input"]["crop"] == 48
    assert card["input"]["resize"] == 52
    assert "val/acc (best, checkpointing)" in card["metrics"]
    assert "test/acc" in card["metrics"]
    assert json.loads((out / "model_card.json").read_text()) == card
    listed = set(card["files"])  # every file written (ONNX: the graph and its weights' .data)
    assert listed == {p.name for p in out.iterdir() if p.name.startswith("model.")}
    assert all((out / name).stat().st_mode & 0o044 == 0o044 for name in listed)  # readable

    net = load_classifier(trained_folder).net.eval()
    batch = torch.randn(5, 3, 48, 48)
    with torch.inference_mode():
        expected = net(batch)
        if fmt == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(out / "model.onnx"))
            logits = torch.from_numpy(session.run(None, {"images": batch.numpy()})[0])
        elif fmt == "torchscript":
            logits = torch.jit.load(str(out / "model.torchscript.pt"))(batch)
        else:  # a plain torchvision model takes the file as it is: no prefixes to strip
            if fmt == "state_dict":
                state = torch.load(out / "model.pth", weights_only=True)
            else:
                from safetensors.torch import load_file

                state = load_file(out / "model.safetensors")
            plain = torchvision.models.resnet18(num_classes=3).eval()
            plain.load_state_dict(state)
            logits = plain(batch)
    assert logits.shape == (5, 3)
    assert torch.allclose(logits, expected, atol=1e-4)


def test_export_rejects_an_unknown_format(trained_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="onnx, torchscript, state_dict, safetensors"):
        export(compose_task("export", tmp_path, f"ckpt_path={trained_folder}", "format=tflite"))
