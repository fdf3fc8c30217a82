"""predict.py from a checkpoint alone: any image mode in a folder tree, the same numbers as the
model on its own eval pipeline, one line for what is missing."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.models.loading import load_classifier
from imgcls.predict import predict
from imgcls.utils.errors import UserError
from tests.data_factory import FOLDER_CLASSES, PALETTE, write_image
from tests.helpers import compose_task


def test_predict_reads_any_image_mode_in_a_folder_tree(
    trained_folder: Path, tmp_path: Path
) -> None:
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

    predictions = predict(
        compose_task(
            "predict", tmp_path, f"ckpt_path={trained_folder}", f"input={photos}", "top_k=3"
        )
    )
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
    trained_folder: Path, tmp_path: Path
) -> None:
    image = write_image(tmp_path / "one.png", PALETTE[2], size=(64, 48))
    listing = tmp_path / "list.txt"
    listing.write_text("one.png\n\n")  # relative to the list's folder; blank lines ignored
    options = [f"ckpt_path={trained_folder}", f"input={listing}", "output_format=json"]
    predictions = predict(compose_task("predict", tmp_path, *options))
    model = load_classifier(trained_folder)
    from imgcls.data.augmentation.presets import resize_center_crop
    from imgcls.data.decoding.images import read_rgb

    pixels = resize_center_crop(52, 48)(read_rgb(image)).float()[None]
    mean = torch.tensor(model.hparams.preprocessing["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.hparams.preprocessing["std"]).view(1, 3, 1, 1)
    assert float(model.objective.temperature) != 1.0  # fitted: the probabilities are its
    with torch.inference_mode():
        probs = (model((pixels / 255 - mean) / std) / model.objective.temperature).softmax(1)[0]
    top = probs.topk(3)
    assert predictions[0].classes == [FOLDER_CLASSES[i] for i in top.indices.tolist()]
    assert predictions[0].probabilities == pytest.approx(top.values.tolist(), abs=1e-5)
    saved = json.loads((tmp_path / "predict" / "predictions.json").read_text())
    assert saved[0]["top"][0]["class"] == predictions[0].classes[0]


def test_predict_says_what_is_missing(trained_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        predict(
            compose_task(
                "predict", tmp_path, f"ckpt_path={trained_folder}", f"input={tmp_path / 'nope'}"
            )
        )
    with pytest.raises(UserError, match="No images found"):
        predict(
            compose_task("predict", tmp_path, f"ckpt_path={trained_folder}", f"input={tmp_path}")
        )


def test_predict_explains_each_image(trained_folder: Path, tmp_path: Path) -> None:
    """explain=true: each image's Grad-CAM of its top class over the image as the net saw it,
    named by its path below the inputs (two folders' same-named files apart), in the csv."""
    from imgcls.data.augmentation.presets import resize_center_crop
    from imgcls.data.decoding.images import read_rgb
    from imgcls.models.explain import Explainer
    from imgcls.reports.plots import cam_overlay

    photos = tmp_path / "new"
    write_image(photos / "a" / "same.png", PALETTE[0])
    write_image(photos / "b" / "same.png", PALETTE[2], size=(64, 48))
    (photos / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    options = [f"ckpt_path={trained_folder}", f"input={photos}", "explain=true"]
    predictions = predict(compose_task("predict", tmp_path, *options, "output_format=json"))
    out = tmp_path / "predict"
    made = {p.relative_to(out).as_posix() for p in (out / "explanations").rglob("*.png")}
    assert made == {"explanations/a/same.png.png", "explanations/b/same.png.png"}
    with open(out / "predictions.csv", newline="") as f:
        rows = {Path(r["path"]).relative_to(photos).as_posix(): r for r in csv.DictReader(f)}
    assert rows["a/same.png"]["explanation"] == "explanations/a/same.png.png"
    assert rows["b/broken.jpg"]["explanation"] == ""
    saved = json.loads((out / "predictions.json").read_text())
    assert {row.get("explanation") for row in saved} == {None, *(f for f in made)}

    # the map of the top class, laid over the image as predict preprocessed it
    model = load_classifier(trained_folder)
    contract = model.hparams.preprocessing
    image = resize_center_crop(52, 48)(read_rgb(photos / "b" / "same.png"))
    top = FOLDER_CLASSES.index(next(p for p in predictions if "b/same" in p.path).classes[0])
    mean = torch.tensor(contract["mean"]).view(3, 1, 1)
    std = torch.tensor(contract["std"]).view(3, 1, 1)
    normalized = ((image.float() / 255 - mean) / std)[None]
    maps = Explainer(model.net, normalized, model.head)(normalized, [top])
    expected = cam_overlay(image[None], maps)[0].permute(1, 2, 0).numpy()
    heat_map = np.asarray(Image.open(out / "explanations/b/same.png.png"))
    assert heat_map.shape == (48, 48, 3)
    assert np.abs(heat_map.astype(int) - expected.astype(int)).max() <= 1
    assert not (heat_map == image.permute(1, 2, 0).numpy()).all()
