"""predict and export from a checkpoint alone: any image mode, every format round-trips."""

import csv
import json
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from imgcls.export import export
from imgcls.models.loading import load_classifier
from imgcls.predict import predict
from imgcls.train import train
from imgcls.utils.compose import compose_config
from imgcls.utils.errors import UserError
from tests.data_factory import PALETTE, write_class_tree, write_image

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision ResNet-18 trained briefly on a 3-class folder of 48 px photos."""
    tmp = tmp_path_factory.mktemp("trained")
    root = write_class_tree(tmp / "photos", CLASSES, 16)
    overrides = [
        f"paths.log_dir={tmp / 'logs'}",
        "extras.print_config=false",
        "++callbacks.rich_progress_bar=null",
        "data=folder",
        f"data.root={root}",
        "data.num_workers=0",
        "data.batch_size=16",
        "data.train_crop=48",
        "data.eval_resize=52",
        "data.eval_crop=48",
        "model=resnet18",
        "optimizer=adamw",
        "optimizer.lr=1e-3",
        "trainer.max_epochs=6",
    ]
    train(compose_config("train", overrides, output_dir=tmp / "run"))
    return tmp / "run" / "checkpoints" / "best.ckpt"


def run(config_name: str, tmp_path: Path, *overrides: str):
    cfg = compose_config(
        config_name,
        [f"paths.log_dir={tmp_path / 'logs'}", "extras.print_config=false", *overrides],
        output_dir=tmp_path / config_name,
    )
    return (predict if config_name == "predict" else export)(cfg)


def test_predict_reads_any_image_mode_in_a_folder_tree(checkpoint: Path, tmp_path: Path) -> None:
    photos = tmp_path / "new"
    photos.mkdir()
    # one photo in the modes a camera roll has, each beside its plain-RGB rendering
    pixels = Image.open(write_image(tmp_path / "source.png", PALETTE[1], size=(40, 30)))
    pixels.convert("RGBA").save(photos / "rgba.png")
    pixels.save(photos / "rgba_as_rgb.png")
    pixels.convert("P").save(photos / "palette.gif")
    Image.open(photos / "palette.gif").convert("RGB").save(photos / "palette_as_rgb.png")
    pixels.convert("L").save(photos / "gray.png")
    pixels.convert("L").convert("RGB").save(photos / "gray_as_rgb.png")
    write_image(photos / "nested" / "deeper" / "rgb.jpg", PALETTE[1])  # a "dog" training photo
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (photos / "notes.txt").write_text("not an image")

    predictions = run("predict", tmp_path, f"ckpt_path={checkpoint}", f"input={photos}", "top_k=3")
    by_name = {Path(p.path).name: p for p in predictions}
    assert len(by_name) == 8  # every image below the folder; notes.txt is not one
    assert by_name["broken.jpg"].error
    assert by_name["rgb.jpg"].classes[0] == "dog"
    for mode in ("rgba", "palette", "gray"):  # converted exactly as PIL renders them in RGB
        converted, plain = (
            by_name[f"{mode}.{'gif' if mode == 'palette' else 'png'}"],
            by_name[f"{mode}_as_rgb.png"],
        )
        assert converted.classes == plain.classes, mode
        assert converted.probabilities == pytest.approx(plain.probabilities, abs=1e-6), mode
    with open(tmp_path / "predict" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    assert {r["class_1"] for r in rows if Path(r["path"]).name == "rgb.jpg"} == {"dog"}


def test_predict_matches_the_model_on_its_own_eval_pipeline(
    checkpoint: Path, tmp_path: Path
) -> None:
    image = write_image(tmp_path / "one.png", PALETTE[2], size=(64, 48))
    listing = tmp_path / "list.txt"
    listing.write_text("one.png\n\n")  # relative to the list's folder; blank lines ignored
    predictions = run(
        "predict", tmp_path, f"ckpt_path={checkpoint}", f"input={listing}", "output_format=json"
    )
    model = load_classifier(checkpoint)
    from imgcls.data.decode import read_rgb
    from imgcls.data.transforms import resize_center_crop

    pixels = resize_center_crop(52, 48)(read_rgb(image)).float()[None]
    mean = torch.tensor(model.hparams.preprocessing["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.hparams.preprocessing["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        probs = model((pixels / 255 - mean) / std).softmax(1)[0]
    top = probs.topk(3)
    assert predictions[0].classes == [CLASSES[i] for i in top.indices.tolist()]
    assert predictions[0].probabilities == pytest.approx(top.values.tolist(), abs=1e-5)
    saved = json.loads((tmp_path / "predict" / "predictions.json").read_text())
    assert saved[0]["top"][0]["class"] == predictions[0].classes[0]


def test_predict_says_what_is_missing(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        run("predict", tmp_path, f"ckpt_path={checkpoint}", f"input={tmp_path / 'nope'}")
    with pytest.raises(UserError, match="No images found"):
        run("predict", tmp_path, f"ckpt_path={checkpoint}", f"input={tmp_path}")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "state_dict", "safetensors"])
def test_every_export_format_round_trips(checkpoint: Path, tmp_path: Path, fmt: str) -> None:
    card = run("export", tmp_path, f"ckpt_path={checkpoint}", f"format={fmt}")
    out = tmp_path / "export"
    assert card["check"]["max_abs_logit_diff"] <= 1e-3
    assert card["classes"] == CLASSES
    assert card["input"]["crop"] == 48
    assert card["input"]["resize"] == 52
    assert "val/acc (best, checkpointing)" in card["metrics"]
    assert "test/acc" in card["metrics"]
    assert json.loads((out / "model_card.json").read_text()) == card
    listed = set(card["files"])  # every file written (ONNX: the graph and its weights' .data)
    assert listed == {p.name for p in out.iterdir() if p.name.startswith("model.")}
    assert all((out / name).stat().st_mode & 0o044 == 0o044 for name in listed)  # readable

    net = load_classifier(checkpoint).net.eval()
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


def test_export_rejects_an_unknown_format(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="onnx, torchscript, state_dict, safetensors"):
        run("export", tmp_path, f"ckpt_path={checkpoint}", "format=tflite")
