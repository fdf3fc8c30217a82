"""data.decode=device: workers send JPEG bytes, the device decodes a batch at once and crops it
as the worker presets would (run here on the CPU, through the same calls)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from imgcls.data import device_decode
from imgcls.data.decode import BadImageError, read_rgb
from imgcls.data.device_decode import (
    DeviceCrops,
    EncodedBatch,
    EncodedJPEG,
    center_boxes,
    choose_decode,
    collate_encoded,
    crop_resize,
    decode_batch,
    random_resized_boxes,
    read_for_device,
)
from imgcls.data.folder import FolderDataModule
from imgcls.train import train
from tests.data_factory import SMOOTH, write_class_tree, write_photo_kinds
from tests.helpers import decoded_on_device


@pytest.mark.parametrize("size", [(375, 500), (500, 375), (100, 400), (64, 64)])
def test_random_resized_boxes_follow_torchvisions_distribution(size: tuple[int, int]) -> None:
    """Area fraction and aspect of the boxes, and how often the centre-crop fallback is taken,
    against torchvision's RandomResizedCrop on the same image size (20,000 draws each)."""
    torch.manual_seed(0)
    draws = 20_000
    height, width = size
    sizes = torch.tensor([[height, width]], dtype=torch.float).expand(draws, 2)
    ours = random_resized_boxes(sizes)
    our_w, our_h = ours[:, 2] - ours[:, 0], ours[:, 3] - ours[:, 1]
    assert (ours[:, :2] >= 0).all()
    assert (ours[:, 2] <= width).all()
    assert (ours[:, 3] <= height).all()
    assert torch.equal(our_w, our_w.round())  # whole pixels, as torchvision's

    reference = v2.RandomResizedCrop(224)
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    params = [reference.make_params([image]) for _ in range(draws)]
    ref_w = torch.tensor([p["width"] for p in params], dtype=torch.float)
    ref_h = torch.tensor([p["height"] for p in params], dtype=torch.float)

    def stats(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        area, log_aspect = w * h / (height * width), (w / h).log()
        quantiles = torch.tensor([0.1, 0.5, 0.9])
        return torch.cat([area.quantile(quantiles), log_aspect.quantile(quantiles)])

    torch.testing.assert_close(stats(our_w, our_h), stats(ref_w, ref_h), atol=0.02, rtol=0)
    whole = ((our_w == width) & (our_h == height)).float().mean()
    ref_whole = ((ref_w == width) & (ref_h == height)).float().mean()
    assert abs(whole - ref_whole) < 0.01


def test_center_boxes_crop_as_resize_then_center_crop() -> None:
    image = torch.from_numpy(SMOOTH).permute(2, 0, 1).contiguous()
    boxes = center_boxes(torch.tensor([[300.0, 400.0]]), resize=256, crop=224)
    ours = crop_resize([image], boxes, 224)[0]
    reference = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224)])(image).float()
    assert (ours - reference).abs().mean() < 1.0  # of 255: the same picture


def test_a_huge_image_is_shrunk_alone_and_cropped_the_same() -> None:
    small = torch.from_numpy(SMOOTH).permute(2, 0, 1).contiguous()
    huge = torch.from_numpy(np.kron(SMOOTH, np.ones((8, 8, 1), dtype=np.uint8)))  # 2400 x 3200
    huge = huge.permute(2, 0, 1).contiguous()
    boxes = torch.tensor([[0.0, 0.0, 400.0, 300.0], [0.0, 0.0, 3200.0, 2400.0]])
    out = crop_resize([small, huge], boxes, 64)
    assert (out[0] - out[1]).abs().mean() < 2.0  # the same content, whole, at 64 px


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


def test_device_crops_give_the_presets_sizes() -> None:
    images = [
        torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in ((300, 400), (50, 90))
    ]
    crops = DeviceCrops(train_crop=96, eval_resize=128, eval_crop=112)
    train_out, eval_out = crops.train(images), crops.eval(images)
    assert train_out.shape == (2, 3, 96, 96)
    assert eval_out.shape == (2, 3, 112, 112)
    assert 0 <= float(train_out.min()) <= float(train_out.max()) <= 255


@pytest.mark.parametrize("augment", ["standard", "classic_imagenet", "none"])
def test_training_with_device_decoding_on_real_files(make_cfg, tmp_path: Path, augment) -> None:
    root = write_class_tree(tmp_path / "photos", ["cat", "dog", "fox"], per_class=8)
    (root / "cat" / "empty.jpg").write_bytes(b"")  # a bad file among them
    cfg = make_cfg(*decoded_on_device(root), f"data.augment={augment}", "trainer.max_epochs=2")
    metrics, objects = train(cfg)
    assert objects["datamodule"].decodes_on_device()
    assert objects["trainer"].global_step == 4
    assert math.isfinite(metrics["train/loss"])
    assert "empty.jpg" in (tmp_path / "run" / "bad_images.txt").read_text()


def test_device_decoding_refuses_presets_it_cannot_crop(tmp_path: Path) -> None:
    from imgcls.utils.errors import UserError

    root = write_class_tree(tmp_path, ["a", "b"], per_class=4)
    dm = FolderDataModule(root=str(root), decode="device", augment="cifar")
    with pytest.raises(UserError, match=r"augment=cifar.*data\.decode=cpu"):
        dm.setup()


def test_a_batch_too_large_for_one_crop_goes_in_chunks_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    sizes = [(300, 400), (60, 80), (200, 150), (64, 64), (310, 390), (90, 120)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in sizes]
    boxes = random_resized_boxes(torch.tensor(sizes, dtype=torch.float))
    whole = crop_resize(images, boxes, 48)
    monkeypatch.setattr(device_decode, "CROP_CHUNK_BYTES", 3 * 320 * 400 * 4 * 2)
    chunked = crop_resize(images, boxes, 48)
    torch.testing.assert_close(chunked, whole)


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


@pytest.mark.parametrize(
    "options", [{"augment": "cifar"}, {"augment": "standard", "auto_augment": "timm:v0"}]
)
def test_auto_decodes_in_the_workers_what_the_device_cannot_augment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict
) -> None:
    """On a GPU with a hardware decoder `auto` picks the device, unless the preset's crop or
    the policy only runs in the workers: then the workers decode, where data.decode=device
    is refused."""
    from imgcls.data import device_decode

    monkeypatch.setattr(device_decode, "choose_decode", lambda decode, device: "device")
    root = write_class_tree(tmp_path, ["a", "b"], per_class=4)
    assert not FolderDataModule(root=str(root), decode="auto", **options).decodes_on_device()
    assert FolderDataModule(root=str(root), decode="auto", augment="standard").decodes_on_device()
