"""data/augmentation/batched.py: per-image random affine warps, colour jitter and random erasing
of a whole batch: the shapes and value ranges they keep, what each draws per image, and the
geometry and colour each must not change."""

import torch

from imgcls.data.augmentation.batched import ColorJitterBatch, RandomAffineBatch, RandomErasingBatch


def test_affine_identity_and_exact_integer_shifts() -> None:
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    torch.testing.assert_close(RandomAffineBatch(flip=False)(images), images)
    torch.manual_seed(0)
    shifted = RandomAffineBatch(shift=2, flip=False)(images)
    allowed = torch.cat([images.flatten(), torch.zeros(1)])
    assert torch.isin(shifted.round(), allowed).all()  # every pixel an original one, or the pad
    flipped = RandomAffineBatch(flip=True)
    outs = {tuple(flipped(images[:1]).flatten()[:3].tolist()) for _ in range(30)}
    assert len(outs) == 2  # flipped or not, nothing in between


def test_random_resized_crop_differs_per_image() -> None:
    torch.manual_seed(0)
    same = torch.rand(1, 3, 64, 64).expand(6, -1, -1, -1) * 255
    out = RandomAffineBatch(32, scale=(0.08, 1.0))(same)
    assert out.shape == (6, 3, 32, 32)
    assert len({round(float(o.mean()), 3) for o in out}) == 6


def test_colour_jitter_per_image_matches_torchvision_brightness() -> None:
    images = torch.rand(5, 3, 16, 16) * 200
    torch.testing.assert_close(ColorJitterBatch()(images), images, atol=1e-3, rtol=0)
    torch.manual_seed(1)
    out = ColorJitterBatch(brightness=0.5)(images)
    ratios = (out / images.clamp(min=1e-3)).flatten(1).median(dim=1).values
    assert ratios.min() >= 0.5 - 1e-3
    assert ratios.max() <= 1.5 + 1e-3
    assert len({round(float(r), 3) for r in ratios}) == 5  # a factor per image
    gray = torch.full((1, 3, 4, 4), 100.0)
    torch.testing.assert_close(
        ColorJitterBatch(saturation=0.9, hue=0.5)(gray), gray
    )  # no colour to shift


def test_random_erasing_per_image_as_torchvision() -> None:
    torch.manual_seed(0)
    batch = torch.ones(4000, 3, 32, 32)
    out = RandomErasingBatch(0.25)(batch)
    erased = (out == 0).flatten(1).any(dim=1)
    assert 0.22 < erased.float().mean() < 0.28
    area = (out[erased] == 0).float().mean(dim=(1, 2, 3))
    assert area.min() >= 0.015  # scale (0.02, 0.33), boxes rounded to whole pixels
    assert area.max() <= 0.36
    assert (out[erased] == 0).all(dim=1).float().mean() == (out[erased] == 0).float().mean()
    noise = RandomErasingBatch(1.0, mode="pixel")(batch)
    changed = noise != 1
    assert noise[changed].std() > 0.5  # N(0, 1) noise in the box
    assert abs(noise[changed].mean()) < 0.1


def pixels(count: int, height: int = 24, width: int = 40, low: int = 0, high: int = 256):
    generator = torch.Generator().manual_seed(count)
    shape = (count, 3, height, width)
    return torch.randint(low, high, shape, generator=generator).float()


def test_affine_output_size_value_range_and_seeded_draws() -> None:
    images = pixels(8)
    warp = RandomAffineBatch(24, scale=(0.3, 1.0), shift=3, degrees=30)
    torch.manual_seed(0)
    out = warp(images)
    assert out.shape == (8, 3, 24, 24)
    assert out.dtype == images.dtype
    assert out.min() >= 0  # bilinear blends of [0, 255] pixels and the zero fill
    assert out.max() <= 255
    torch.manual_seed(0)
    assert torch.equal(warp(images), out)  # a function of the RNG state alone
    assert RandomAffineBatch(degrees=30)(images).shape == images.shape  # no size: the input's


def test_affine_draws_an_angle_per_image_in_one_batch() -> None:
    torch.manual_seed(0)
    same = pixels(1).expand(16, -1, -1, -1)
    out = RandomAffineBatch(flip=False, degrees=20)(same)
    assert len({o.numpy().tobytes() for o in out}) == 16


def test_affine_rotates_a_non_square_image_without_shearing_it() -> None:
    """In pixel units the map from output to input is a rotation (a reflection when flipped):
    orthonormal, whatever the aspect of the image."""
    height, width = 20, 60
    torch.manual_seed(0)
    theta = RandomAffineBatch(flip=True, degrees=45).theta(64, height, width, torch.device("cpu"))
    to_pixels = torch.diag(torch.tensor([width / 2, height / 2]))
    linear = to_pixels @ theta[:, :, :2] @ torch.linalg.inv(to_pixels)
    identity = torch.eye(2).expand(64, 2, 2)
    torch.testing.assert_close(linear @ linear.transpose(1, 2), identity, atol=1e-5, rtol=0)
    determinants = torch.linalg.det(linear)
    assert set(determinants.round().tolist()) == {-1.0, 1.0}  # some flipped, some not
    angles = torch.atan2(linear[:, 1, 0], linear[:, 1, 1]).abs().rad2deg()
    assert angles.max() <= 45 + 1e-3
    assert angles.max() > 30  # the range is used, not a fixed angle


def test_colour_jitter_keeps_the_range_and_draws_per_image() -> None:
    torch.manual_seed(0)
    same = pixels(1).expand(8, -1, -1, -1)
    out = ColorJitterBatch(brightness=0.9, contrast=0.9, saturation=0.9, hue=0.4)(same)
    assert out.shape == same.shape
    assert out.min() >= 0
    assert out.max() <= 255
    assert len({o.numpy().tobytes() for o in out}) == 8


def test_contrast_blends_each_image_toward_its_own_mean_grey() -> None:
    """Unclamped (pixels 100..150), contrast keeps an image's mean luma and scales each pixel's
    distance from it by one factor per image, within [1 - c, 1 + c]."""
    images = pixels(6, low=100, high=151)
    torch.manual_seed(0)
    out = ColorJitterBatch(contrast=0.5)(images)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    mean_in, mean_out = (x.mul(luma).sum(1).mean(dim=(1, 2)) for x in (images, out))
    torch.testing.assert_close(mean_out, mean_in, atol=1e-3, rtol=0)
    centred_in = images - mean_in.view(6, 1, 1, 1)
    centred_out = out - mean_out.view(6, 1, 1, 1)
    dims = (1, 2, 3)
    factors = (centred_out * centred_in).sum(dims) / centred_in.square().sum(dims)
    scaled = factors.view(6, 1, 1, 1) * centred_in
    torch.testing.assert_close(centred_out, scaled, atol=1e-2, rtol=0)
    assert factors.min() >= 0.5 - 1e-4
    assert factors.max() <= 1.5 + 1e-4
    assert len({round(float(f), 4) for f in factors}) == 6


def test_saturation_and_hue_change_colour_but_keep_every_pixels_luma() -> None:
    images = pixels(6, low=90, high=161)
    torch.manual_seed(0)
    out = ColorJitterBatch(saturation=0.5, hue=0.5)(images)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close((out * luma).sum(1), (images * luma).sum(1), atol=1e-2, rtol=0)
    assert (out - images).abs().amax(dim=(1, 2, 3)).min() > 1  # every image's colours moved


def test_erasing_never_at_p_zero_and_one_rectangle_per_image_at_p_one() -> None:
    images = torch.full((32, 3, 24, 40), 7.0)
    assert torch.equal(RandomErasingBatch(0.0)(images), images)
    torch.manual_seed(0)
    out = RandomErasingBatch(1.0)(images)
    boxes = set()
    for image in out:
        erased = image == 0
        assert torch.equal(erased[0], erased[1])  # all channels of the same pixels
        assert torch.equal(erased[0], erased[2])
        assert (image[~erased] == 7).all()  # nothing outside the box changed
        rows, cols = erased[0].nonzero().unbind(1)
        top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
        box = erased[0, top : bottom + 1, left : right + 1]
        assert box.all()  # the erased pixels fill their bounding box: a rectangle
        assert int(erased[0].sum()) == box.numel()
        boxes.add((int(top), int(bottom), int(left), int(right)))
    assert len(boxes) > 25  # a box of its own per image
