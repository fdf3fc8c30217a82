"""Augmentation policies per image: the device's batched ops against torchvision's, each policy's
draws per image, the options refused, and no device wait (with RandomErasing after them)."""

import pytest
import torch
from torchvision.transforms import v2

from imgcls.data.augmentation.batched import RandomErasingBatch
from imgcls.data.augmentation.policies import (
    BLENDS,
    GEOMETRY,
    POLICIES,
    DevicePolicy,
    OpSpace,
    PolicyOps,
    worker_policy,
)
from imgcls.data.augmentation.presets import Augmentation, build_pipeline
from imgcls.utils.errors import UserError
from tests.device_waits import DeviceWaitTrace

HEIGHT, WIDTH = 24, 40  # not square: the warp must not mix up the axes


def images(count: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, HEIGHT, WIDTH), generator=generator).float()


def torchvision_op(image: torch.Tensor, name: str, magnitude: float) -> torch.Tensor:
    """torchvision's own operation on one uint8 image, as its RandAugment applies it."""
    policy = v2.RandAugment()
    out = policy._apply_image_or_video_transform(
        image.to(torch.uint8), name, magnitude, interpolation="nearest", fill={torch.Tensor: None}
    )
    return out.float()


SPACE = OpSpace(v2.RandAugment._AUGMENTATION_SPACE, 31, HEIGHT, WIDTH)


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("name", SPACE.names)
def test_each_operation_on_the_batch_is_torchvisions_per_image(name: str, sign: int) -> None:
    batch, op = images(), SPACE.names.index(name)
    bins = SPACE.bins[op]
    magnitude = 0.0 if bins is None else float(bins[20]) * (sign if SPACE.signed[op] else 1)
    got = PolicyOps(SPACE)(batch, torch.full((6,), op), torch.full((6,), magnitude))
    expected = torch.stack([torchvision_op(image, name, magnitude) for image in batch])
    differ = got != expected
    if name in GEOMETRY:  # nearest-neighbour ties (a shear of 0.2 lands on half pixels)
        assert differ.float().mean() < 0.05
    elif name in BLENDS:  # torchvision truncates to uint8 at each step, we do not
        assert (got - expected).abs().max() < 2
    else:
        assert not differ.any()


def test_each_image_gets_its_own_operation_and_magnitude() -> None:
    batch = images(4)
    ops = PolicyOps(OpSpace(v2.AutoAugment._AUGMENTATION_SPACE, 10, HEIGHT, WIDTH))
    op = torch.tensor([ops.space.names.index(n) for n in ("Rotate", "Solarize", "Invert")] + [-1])
    got = ops(batch, op, torch.tensor([30.0, 0.5, 0.0, 0.0]))
    assert torch.equal(got[0], torchvision_op(batch[0], "Rotate", 30.0))
    assert torch.equal(got[1], torchvision_op(batch[1], "Solarize", 0.5))
    assert torch.equal(got[2], 255 - batch[2])
    assert torch.equal(got[3], batch[3])  # op -1: the image as it was


@pytest.mark.parametrize("name", POLICIES)
def test_policies_draw_per_image_on_the_device_and_repeat_under_a_seed(name: str) -> None:
    policy = DevicePolicy(name)
    same = images(1).expand(64, -1, -1, -1)  # one image 64 times
    torch.manual_seed(0)
    out = policy(same)
    assert out.shape == same.shape
    assert out.min() >= 0
    assert out.max() <= 255
    distinct = {tuple(row.flatten()[::37].tolist()) for row in out}
    assert len(distinct) > 8  # not one draw for the whole batch
    torch.manual_seed(0)
    assert torch.equal(policy(same), out)


@pytest.mark.parametrize("name", [*POLICIES, "timm:rand-m9-mstd0.5-inc1"])
def test_worker_policies_keep_uint8_images(name: str) -> None:
    image = images(1)[0].to(torch.uint8)
    out = worker_policy(name, None, None, crop=WIDTH)(image)
    assert out.dtype == torch.uint8
    assert out.shape == image.shape


def test_randaugment_magnitude_and_ops_reach_torchvision() -> None:
    policy = DevicePolicy("randaugment", magnitude=30, num_ops=3)
    assert (policy.reference.magnitude, policy.reference.num_ops) == (30, 3)
    assert worker_policy("augmix", 7, None, crop=32).severity == 7


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        ({"policy": "randaug"}, "Unknown data.augment.policy='randaug'"),
        ({"policy": "ta_wide", "policy_magnitude": 5}, "has no magnitude"),
        ({"policy": "randaugment", "policy_magnitude": 31}, r"range \[0, 30\]"),
        ({"policy": "augmix", "policy_ops": 2}, "applies to randaugment"),
        ({"policy_magnitude": 9}, "tune a policy"),
        ({"erasing": 1.5}, "a probability"),
        ({"erasing": 0.2, "erasing_mode": "rand"}, "const, pixel"),
    ],
)
def test_options_a_policy_cannot_take_are_one_line(options: dict, refusal: str) -> None:
    with pytest.raises(UserError, match=refusal):
        Augmentation("standard", **options)


def test_timm_policies_are_for_workers_only() -> None:
    with pytest.raises(UserError, match="timm's PIL policy"):
        build_pipeline(
            Augmentation("cifar", policy="timm:rand-m9-mstd0.5-inc1"), True, None, None, None, 32
        )


def test_presets_name_their_policy_and_erasing_and_none_turns_them_off() -> None:
    recipe = build_pipeline(Augmentation("torchvision_recipe"), in_memory=False)
    assert recipe.policy == "ta_wide"
    assert isinstance(recipe.device_policy, DevicePolicy)
    assert recipe.erasing.p == 0.1
    assert recipe.train_worker(torch.zeros(3, 300, 400, dtype=torch.uint8)).shape == (3, 176, 176)
    off = build_pipeline(Augmentation("torchvision_recipe", policy="none", erasing=0), False)
    assert off.policy is off.device_policy is off.erasing is None
    held = build_pipeline(Augmentation("cifar", policy="augmix"), in_memory=True, native_size=32)
    assert [type(m).__name__ for m in held.train_device] == ["RandomAffineBatch", "DevicePolicy"]


@pytest.mark.parametrize("name", POLICIES)
def test_no_device_wait_in_a_policy_or_erasing(name: str) -> None:
    policy, erasing, batch = DevicePolicy(name), RandomErasingBatch(0.5, "pixel"), images(8)
    policy(batch)  # its tables go to the device once, on the first batch
    with DeviceWaitTrace() as trace:
        erasing(policy(batch))
    assert not trace.waits, [w.what for w in trace.waits]
