"""data.decode=device: workers send JPEG bytes, the device decodes a batch at once and crops it
as the worker presets would (run here on the CPU, through the same calls)."""

import math
from pathlib import Path

import pytest
import torch

from imgcls.data.decoding import device as device_decode
from imgcls.data.decoding.device import (
    EncodedBatch,
    EncodedJPEG,
    choose_decode,
    collate_encoded,
    decode_batch,
    read_for_device,
)
from imgcls.data.decoding.images import BadImageError, read_rgb
from imgcls.train import train
from tests.data_factory import write_class_tree, write_photo_kinds
from tests.helpers import decoded_on_device


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return write_photo_kinds(tmp_path)


def test_workers_send_plain_jpegs_as_bytes_and_decode_the_rest(files: dict[str, Path]) -> None:
    as_bytes = {n for n, p in files.items() if isinstance(read_for_device(p), EncodedJPEG)}
    assert as_bytes == {"plain.jpg", "grey.jpg", "truncated.jpg"}  # its header reads fine
    rotated = read_for_device(files["rotated.jpg"])
    assert rotated.shape == (3, 400, 300)  # decoded in the worker, EXIF rotation applied
    empty = files["plain.jpg"].with_name("empty.jpg")
    empty.write_bytes(b"")
    with pytest.raises(BadImageError, match="empty"):
        read_for_device(empty)


def test_a_batch_decodes_as_the_workers_would_and_drops_what_cannot(
    files: dict[str, Path], tmp_path: Path
) -> None:
    names = ["plain.jpg", "truncated.jpg", "photo.png", "grey.jpg", "cmyk.jpg"]
    batch, labels = collate_encoded([(read_for_device(files[n]), i) for i, n in enumerate(names)])
    assert isinstance(batch, EncodedBatch)
    listing = tmp_path / "bad_images.txt"
    images, kept = decode_batch(batch, torch.device("cpu"), listing)
    assert kept == [0, 2, 3, 4]  # the truncated JPEG is left out...
    assert str(files["truncated.jpg"]) in listing.read_text()  # ...and listed
    for image, i in zip(images, kept, strict=True):
        assert torch.equal(image, read_rgb(files[names[i]])), names[i]
    assert labels.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("augment", ["standard", "classic_imagenet", "none"])
def test_training_with_device_decoding_on_real_files(make_cfg, tmp_path: Path, augment) -> None:
    root = write_class_tree(tmp_path / "photos", ["cat", "dog", "fox"], per_class=8)
    (root / "cat" / "empty.jpg").write_bytes(b"")  # a bad file among them
    cfg = make_cfg(
        *decoded_on_device(root), f"data.augment.preset={augment}", "trainer.max_epochs=2"
    )
    metrics, objects = train(cfg)
    assert objects["datamodule"].decodes_on_device()
    assert objects["trainer"].global_step == 4
    assert math.isfinite(metrics["train/loss"])
    assert "empty.jpg" in (tmp_path / "run" / "bad_images.txt").read_text()


def test_decode_auto_picks_the_device_only_with_a_hardware_jpeg_decoder(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert choose_decode("auto", torch.device("cpu")) == "cpu"
    assert choose_decode("device", torch.device("cpu")) == "device"
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Some GPU")
    for hardware, expected in ((True, "device"), (False, "cpu"), (None, "cpu")):
        monkeypatch.setattr(device_decode, "hardware_jpeg_decoder", lambda d, h=hardware: h)
        caplog.clear()
        with caplog.at_level("INFO"):
            assert choose_decode("auto", gpu) == expected
        assert "data.decode=auto" in caplog.text  # the log says which was chosen, and why
        assert ("on cuda:0" in caplog.text) == (expected == "device")
