"""export.py from a checkpoint: every format round-trips, checked on the run's test images;
int8 and fp16 ONNX files agree with the net; an unknown format or precision is one line."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

from imgcls.eval import evaluate
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
    assert card["check"]["on"] == "test images"  # the run's own, read from its config
    assert card["check"]["images"] == 6  # the test split's 6 photos (of 48), not 32
    assert card["precision"] == "fp32"
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


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_a_quantized_onnx_file_is_smaller_and_names_the_nets_top_class(
    trained_folder: Path, tmp_path: Path, precision: str
) -> None:
    overrides = [f"ckpt_path={trained_folder}", "format=onnx", f"quantize={precision}"]
    card = export(compose_task("export", tmp_path, *overrides))
    out = tmp_path / "export"
    assert card["precision"] == precision
    assert card["check"]["on"] == "test images"
    assert card["check"]["top1_agreement"] >= 0.9
    assert card["check"]["max_abs_logit_diff"] > 0  # not the float32 file under a new name
    assert set(card["files"]) == {"model.onnx"}  # the float32 file and its weights are gone
    import onnx

    weights = {t.data_type for t in onnx.load(str(out / "model.onnx")).graph.initializer}
    assert (onnx.TensorProto.INT8 if precision == "int8" else onnx.TensorProto.FLOAT16) in weights
    assert onnx.TensorProto.FLOAT16 not in weights or precision == "fp16"


def test_pytorchs_int8_torchscript_runs_quantized_kernels_and_is_scored_on_the_cpu(
    trained_folder: Path, tmp_path: Path
) -> None:
    """format=torchscript quantize=int8: torchvision's references' int8 path (FX post-training
    quantization, calibrated on the run's training images). The file holds quantized convs and
    int8 weights, names the net's top class, and eval.py scores it on the CPU kernels it needs."""
    overrides = [f"ckpt_path={trained_folder}", "format=torchscript"]
    card = export(compose_task("export", tmp_path, *overrides, "quantize=int8"))
    assert card["precision"] == "int8"
    assert card["check"]["top1_agreement"] >= 0.9
    assert card["check"]["max_abs_logit_diff"] > 0
    file = tmp_path / "export" / "model.torchscript.pt"
    module = torch.jit.load(str(file))
    assert "quantized::conv2d" in str(module.inlined_graph)
    float_bytes = sum(4 * p.numel() for p in load_classifier(trained_folder).net.parameters())
    assert file.stat().st_size < 0.4 * float_bytes  # int8 weights: a quarter, and the graph
    data = [
        "data=folder",
        f"data.root={trained_folder.parents[2] / 'photos'}",
        "data.num_workers=0",
    ]
    evaluated, objects = evaluate(compose_task("eval", tmp_path, f"ckpt_path={file}", *data))
    assert objects["model"].net.on_cpu  # the quantized module, outside the module tree
    assert card["quantized_engine"] in torch.backends.quantized.supported_engines
    card_file = file.parent / "model_card.json"
    card_file.write_text(json.dumps({**card, "quantized_engine": "tpu_int8"}))
    with pytest.raises(UserError, match="quantized for the tpu_int8 engine"):
        load_classifier(file)
    assert (
        evaluated["test/acc"]
        >= json.loads((trained_folder.parent.parent / "metrics.json").read_text())["test/acc"] - 0.2
    )


def test_without_the_runs_data_the_check_is_on_random_images_and_int8_is_refused(
    trained_folder: Path, tmp_path: Path
) -> None:
    alone = tmp_path / "elsewhere" / "best.ckpt"  # no run dir around it: no data config
    alone.parent.mkdir()
    shutil.copy(trained_folder, alone)
    card = export(compose_task("export", tmp_path / "a", f"ckpt_path={alone}", "format=state_dict"))
    assert card["check"]["on"] == "random images"
    assert card["check"]["max_abs_logit_diff"] <= 1e-3
    with pytest.raises(UserError, match="calibrates on the run's training images"):
        export(compose_task("export", tmp_path / "b", f"ckpt_path={alone}", "quantize=int8"))
    overrides = [f"ckpt_path={trained_folder}", "format=torchscript", "quantize=fp16"]
    with pytest.raises(UserError, match=r"or fp16 \(format=onnx\)"):
        export(compose_task("export", tmp_path / "c", *overrides))
