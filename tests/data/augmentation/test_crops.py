"""data/augmentation/crops.py: the crop of a batch of photos decoded on the device, as
torchvision's RandomResizedCrop and resize + centre crop give it."""

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from imgcls.data.augmentation import crops as device_crops
from imgcls.data.augmentation.crops import (
    DeviceCrops,
    center_boxes,
    crop_resize,
    random_resized_boxes,
)
from tests.data_factory import SMOOTH


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


def test_device_crops_give_the_presets_sizes() -> None:
    images = [
        torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in ((300, 400), (50, 90))
    ]
    crops = DeviceCrops(train_crop=96, eval_resize=128, eval_crop=112)
    train_out, eval_out = crops.train(images), crops.eval(images)
    assert train_out.shape == (2, 3, 96, 96)
    assert eval_out.shape == (2, 3, 112, 112)
    assert 0 <= float(train_out.min()) <= float(train_out.max()) <= 255


def test_a_batch_too_large_for_one_crop_goes_in_chunks_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    sizes = [(300, 400), (60, 80), (200, 150), (64, 64), (310, 390), (90, 120)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in sizes]
    boxes = random_resized_boxes(torch.tensor(sizes, dtype=torch.float))
    whole = crop_resize(images, boxes, 48)
    monkeypatch.setattr(device_crops, "CROP_CHUNK_BYTES", 3 * 320 * 400 * 4 * 2)
    chunked = crop_resize(images, boxes, 48)
    torch.testing.assert_close(chunked, whole)
