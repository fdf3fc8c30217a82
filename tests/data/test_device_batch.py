"""data/device_batch.py: MixUp and CutMix of multi-hot targets."""

import torch

from imgcls.data.device_batch import batch_mix


def test_multi_hot_targets_are_mixed_as_their_images_are() -> None:
    torch.manual_seed(0)
    images = torch.rand(6, 3, 8, 8)
    targets = (torch.rand(6, 5) < 0.4).float()
    mixed, mixed_targets = batch_mix(1.0, 0.0, num_classes=5)(images, targets)
    # MixUp: image i is lam x image i + (1 - lam) x image i - 1, and so is its target
    lam = float((mixed[0] - images[-1]).flatten()[0] / (images[0] - images[-1]).flatten()[0])
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.roll(1, 0))
    torch.testing.assert_close(mixed_targets, lam * targets + (1 - lam) * targets.roll(1, 0))
    # CutMix: each label shared by the pasted box's area
    large = torch.rand(6, 3, 32, 32)
    cut_images, cut = batch_mix(0.0, 1.0, num_classes=5)(large, targets)
    pasted = (cut_images != large).flatten(1).float().mean(1)  # the box's share of each image
    torch.testing.assert_close(
        cut, (1 - pasted[:, None]) * targets + pasted[:, None] * targets.roll(1, 0)
    )
    assert ((cut > 0) & (cut < 1)).any()  # mixed, not copied
