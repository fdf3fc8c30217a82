"""Files people really have: each is read correctly (as RGB) or reported as bad, never a crash,
whether the loader workers decode (data.decode=cpu) or the device does (data.decode=device)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.data.decoding.device import EncodedBatch, EncodedJPEG, decode_batch, read_for_device
from imgcls.data.decoding.images import BadImageError, read_rgb
from imgcls.data.sources.files import ImageFileDataset
from imgcls.utils.errors import UserError

# 40 wide, 30 high; smooth, so lossy formats stay close to it
_y, _x = np.mgrid[0:30, 0:40]
PIXELS = np.stack([_x * 6, _y * 8, 255 - _x * 3 - _y * 2], axis=2).astype(np.uint8)


def save(path: Path, image: Image.Image, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def read_on_device(path: Path) -> torch.Tensor:
    """data.decode=device's way with one file: the worker's read, then the device's decode (on
    the CPU here); a file the decoder leaves out raises with the reason it listed."""
    item = read_for_device(path)
    if not isinstance(item, EncodedJPEG):
        return item
    listing = path.with_name(f"{path.name}.bad.txt")
    images, _ = decode_batch(EncodedBatch([item]), torch.device("cpu"), listing)
    if not images:
        raise BadImageError(listing.read_text().split("\t", 1)[1])
    return images[0]


@pytest.fixture(params=["cpu", "device"])
def read(request: pytest.FixtureRequest):
    return {"cpu": read_rgb, "device": read_on_device}[request.param]


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("rgb.jpg", lambda: Image.fromarray(PIXELS)),
        ("gray.jpg", lambda: Image.fromarray(PIXELS[:, :, 0])),
        ("cmyk.jpg", lambda: Image.fromarray(PIXELS).convert("CMYK")),
        ("rgba.png", lambda: Image.fromarray(PIXELS).convert("RGBA")),
        ("palette.png", lambda: Image.fromarray(PIXELS).convert("P")),
        ("upper.JPG", lambda: Image.fromarray(PIXELS)),
        ("photo.bmp", lambda: Image.fromarray(PIXELS)),
        ("photo.webp", lambda: Image.fromarray(PIXELS)),
    ],
)
def test_odd_modes_and_formats_read_as_rgb(tmp_path: Path, name: str, make, read) -> None:
    path = save(tmp_path / name, make(), **({"format": "JPEG"} if name.endswith(".JPG") else {}))
    image = read(path)
    assert image.dtype == torch.uint8
    assert image.shape == (3, 30, 40)
    expected = np.asarray(make().convert("RGB")).transpose(2, 0, 1)
    lossy = name.endswith((".jpg", ".JPG", ".webp"))
    assert np.abs(image.numpy().astype(int) - expected).mean() < (6 if lossy else 1e-9)


def test_palette_png_with_transparency(tmp_path: Path, read) -> None:
    image = Image.fromarray(PIXELS).convert("P")
    path = save(tmp_path / "t.png", image, transparency=0)
    assert read(path).shape == (3, 30, 40)


def test_16_bit_png_is_scaled_to_8_bit(tmp_path: Path, read) -> None:
    values = PIXELS[:, :, 0].astype(np.uint16) * 257  # 8-bit value v stored as v * 257
    path = save(tmp_path / "deep.png", Image.fromarray(values))
    image = read(path)
    assert image.dtype == torch.uint8
    assert np.array_equal(image[0].numpy(), PIXELS[:, :, 0])


def test_exif_rotation_is_applied(tmp_path: Path, read) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = save(tmp_path / "phone.jpg", Image.fromarray(PIXELS), exif=exif)
    assert read(path).shape == (3, 40, 30)  # displayed upright: 30 wide, 40 high


def test_big_jpeg_is_decoded_at_reduced_size(tmp_path: Path) -> None:
    big = np.kron(PIXELS, np.ones((40, 40, 1), dtype=np.uint8))  # 1600 x 1200
    path = save(tmp_path / "big.jpg", Image.fromarray(big))
    assert read_rgb(path).shape == (3, 1200, 1600)
    small = read_rgb(path, min_side=224)
    assert small.shape == (3, 300, 400)  # DCT scaling by 1/4: still >= 224 on the short side


def test_truncated_jpeg_is_bad(tmp_path: Path, read) -> None:
    photo = Image.fromarray(np.kron(PIXELS, np.ones((10, 10, 1), dtype=np.uint8)))
    whole = save(tmp_path / "whole.jpg", photo).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) * 6 // 10])  # header intact, data cut
    with pytest.raises(BadImageError, match="truncated"):
        read(tmp_path / "cut.jpg")


def test_zero_byte_file_is_bad(tmp_path: Path, read) -> None:
    (tmp_path / "empty.jpg").touch()
    with pytest.raises(BadImageError, match="empty file"):
        read(tmp_path / "empty.jpg")


def test_non_image_with_an_image_suffix_is_bad(tmp_path: Path, read) -> None:
    (tmp_path / "page.jpg").write_text("<html>404 not found</html>")
    with pytest.raises(BadImageError, match="not an image"):
        read(tmp_path / "page.jpg")


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path, monkeypatch, read) -> None:
    path = save(tmp_path / "bomb.png", Image.fromarray(PIXELS))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40 x 30 = 1200 pixels is over it
    with pytest.raises(BadImageError, match="decompression-bomb"):
        read(path)


def bad_and_good(tmp_path: Path) -> list[tuple[str, int]]:
    (tmp_path / "bad.jpg").write_text("nope")
    good = save(tmp_path / "good.png", Image.fromarray(PIXELS))
    return [(str(tmp_path / "bad.jpg"), 0), (str(good), 1)]


WORKER_READERS = {"decode=cpu": read_rgb, "decode=device": read_for_device}


@pytest.mark.parametrize("reader", WORKER_READERS.values(), ids=WORKER_READERS.keys())
def test_skip_replaces_a_bad_file_and_lists_it(tmp_path: Path, reader) -> None:
    listing = tmp_path / "run" / "bad_images.txt"
    dataset = ImageFileDataset(bad_and_good(tmp_path), bad_images_file=listing, reader=reader)
    image, label = dataset[0]  # the bad one: the next readable sample comes instead
    assert label == 1
    assert image.shape == (3, 30, 40)
    assert listing.read_text().startswith(f"{tmp_path / 'bad.jpg'}\tnot an image")


@pytest.mark.parametrize("reader", WORKER_READERS.values(), ids=WORKER_READERS.keys())
def test_error_policy_stops_naming_the_file(tmp_path: Path, reader) -> None:
    dataset = ImageFileDataset(bad_and_good(tmp_path), on_bad_image="error", reader=reader)
    with pytest.raises(UserError, match=r"bad\.jpg.*on_bad_image=skip"):
        dataset[0]
    with pytest.raises(UserError, match="must be one of"):
        ImageFileDataset([], on_bad_image="ignore")
