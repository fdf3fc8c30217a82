"""Augmentation policies per image: the device's batched ops against torchvision's, each policy's
draws per image, each operation run on the images that drew it only, equalize's histograms
without a scatter, the options refused, and no device wait (with RandomErasing after them)."""

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from imgcls.data.augmentation import policies
from imgcls.data.augmentation.batched import RandomErasingBatch
from imgcls.data.augmentation.policies import (
    BLENDS,
    GEOMETRY,
    POLICIES,
    DevicePolicy,
    OpGroups,
    OpSpace,
    PolicyOps,
    channel_histograms,
    equalize,
    worker_policy,
)
from imgcls.data.augmentation.presets import Augmentation, build_pipeline
from imgcls.utils.errors import UserError
from tests.device_waits import SYNC_OPS, DeviceWaitTrace

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


def grouped(
    ops: PolicyOps, batch: torch.Tensor, op: list[int], magnitude: list[float]
) -> torch.Tensor:
    """One step of `ops` on `batch`: operation `op` (-1: none) per image at `magnitude`."""
    groups = ops.groups(torch.tensor([op]), torch.tensor([magnitude]), torch.arange(len(op)))
    return ops(batch, groups.edges, *groups.to(batch.device))


def drawn(policy: DevicePolicy, count: int, seed: int) -> tuple:
    """What `policy` draws for `count` images under `seed`, in the order its forward draws:
    operations and magnitudes (steps, rows), and AugMix's mixing weights (else None)."""
    torch.manual_seed(seed)
    op, bins = policy.draw(count)
    magnitude = policy.ops(HEIGHT, WIDTH).space.magnitudes(op, bins)
    return op, magnitude, policy.mixing(count) if isinstance(policy.reference, v2.AugMix) else None


class Dispatched(TorchDispatchMode):
    """The aten ops run while active, by name: how many images (rows of the first argument)
    each was run on, in all."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        first = args[0] if args else None
        batched = isinstance(first, torch.Tensor) and first.ndim > 0
        self.rows[func.overloadpacket.__name__] += first.shape[0] if batched else 0
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("name", SPACE.names)
def test_each_operation_on_the_batch_is_torchvisions_per_image(name: str, sign: int) -> None:
    batch, op = images(), SPACE.names.index(name)
    bins = SPACE.bins[op]
    magnitude = 0.0 if bins is None else float(bins[20]) * (sign if SPACE.signed[op] else 1)
    got = grouped(PolicyOps(SPACE), batch, [op] * 6, [magnitude] * 6)
    expected = torch.stack([torchvision_op(image, name, magnitude) for image in batch])
    differ = got != expected
    if name in GEOMETRY:  # nearest-neighbour ties (a shear of 0.2 lands on half pixels)
        assert differ.float().mean() < 0.05
    elif name in BLENDS:  # torchvision truncates to uint8 at each step, we do not
        assert (got - expected).abs().max() < 2
    else:
        assert not differ.any()


def test_the_warp_samples_where_affine_grid_says() -> None:
    # its grid made elementwise: affine_grid's matmul rounds to TF32 on CUDA
    batch, generator = images(5), torch.Generator().manual_seed(0)
    theta = torch.eye(2, 3) + 0.2 * torch.randn(5, 2, 3, generator=generator)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    expected = F.grid_sample(batch, grid, mode="nearest", align_corners=False)
    assert torch.equal(PolicyOps(SPACE).warp(batch, theta), expected)


def test_each_image_gets_its_own_operation_and_magnitude() -> None:
    batch = images(4)
    ops = PolicyOps(OpSpace(v2.AutoAugment._AUGMENTATION_SPACE, 10, HEIGHT, WIDTH))
    op = [ops.space.names.index(n) for n in ("Rotate", "Solarize", "Invert")] + [-1]
    got = grouped(ops, batch, op, [30.0, 0.5, 0.0, 0.0])
    assert torch.equal(got[0], torchvision_op(batch[0], "Rotate", 30.0))
    assert torch.equal(got[1], torchvision_op(batch[1], "Solarize", 0.5))
    assert torch.equal(got[2], 255 - batch[2])
    assert torch.equal(got[3], batch[3])  # op -1: the image as it was


def test_op_groups_sort_rows_by_kernel_and_back() -> None:
    # two steps over 5 rows of 3 images (rows 3 and 4 start from images 0 and 1, as AugMix's)
    kernel = torch.tensor([[3, 0, 1, 3, 0], [2, 2, 0, 1, 1]])
    magnitude = torch.arange(10.0).view(2, 5)
    groups = OpGroups(kernel, 4, torch.tensor([0, 1, 2, 0, 1]), magnitude)
    assert groups.edges == [[0, 2, 3, 3, 5], [0, 1, 3, 5, 5]]  # kernel 0, 1, 2, 3 start; end
    rows = torch.tensor([0, 1, 2, 0, 1]).index_select(0, groups.index[0])  # the images' rows
    assert rows.tolist() == [1, 1, 2, 0, 0]  # rows 1, 4 (kernel 0), 2 (1), 0, 3 (3)
    order = [1, 4, 2, 0, 3]
    assert torch.equal(groups.values[0][0], magnitude[0, order])
    rows = torch.tensor(order).index_select(0, groups.index[1])
    assert rows.tolist() == [2, 3, 4, 0, 1]  # row 2 (kernel 0), 3, 4 (1), 0, 1 (2)
    assert torch.equal(groups.values[0][1], magnitude[1, [2, 3, 4, 0, 1]])
    assert rows.index_select(0, groups.index[2]).tolist() == [0, 1, 2, 3, 4]  # back in order
    index, sent = groups.to(torch.device("cpu"))
    assert index.dtype == torch.long
    assert torch.equal(index, groups.index)
    assert torch.equal(sent, groups.values[0])


@pytest.mark.parametrize("name", POLICIES)
def test_each_image_is_what_its_own_draws_make_of_it_alone(name: str) -> None:
    policy, batch = DevicePolicy(name), images(16)
    op, magnitude, mixing = drawn(policy, len(batch), seed=3)
    torch.manual_seed(3)
    got = policy(batch)
    ops = policy.ops(HEIGHT, WIDTH)
    rows = [batch[r % len(batch)].unsqueeze(0) for r in range(op.shape[1])]
    for step_op, step_magnitude in zip(op.tolist(), magnitude, strict=True):
        for r, o in enumerate(step_op):
            if o >= 0:  # the operation on this image alone
                rows[r] = grouped(ops, rows[r], [o], [float(step_magnitude[r])])
    expected = torch.cat(rows)
    if mixing is not None:  # AugMix: the image and its chains, mixed
        keep, weights = mixing
        mix = keep.view(-1, 1, 1, 1) * batch
        for chain, aug in enumerate(expected.view(-1, *batch.shape)):
            mix = mix + weights[:, chain].view(-1, 1, 1, 1) * aug
        expected = mix.clamp(0, 255)
    assert torch.equal(got, expected)


def test_images_that_draw_no_operation_come_back_bit_for_bit() -> None:
    policy, batch = DevicePolicy("ta_wide"), images(64) + 0.25  # not whole numbers either
    op, _, _ = drawn(policy, len(batch), seed=0)
    unchanged = op[0] == policy.ops(HEIGHT, WIDTH).space.names.index("Identity")
    assert unchanged.sum() >= 2
    torch.manual_seed(0)
    assert torch.equal(policy(batch)[unchanged], batch[unchanged])


@pytest.mark.parametrize("name", ["ta_wide", "randaugment", "augmix"])
def test_an_operation_runs_on_the_images_that_drew_it_only(name: str) -> None:
    # before: every operation on every image (a warp of the whole batch per step), keeping one
    policy, batch = DevicePolicy(name), images(32)
    op, _, _ = drawn(policy, len(batch), seed=0)
    names = policy.ops(HEIGHT, WIDTH).space.names
    geometric = torch.tensor([names.index(g) for g in GEOMETRY])
    torch.manual_seed(0)
    with Dispatched() as seen:
        policy(batch)
    assert seen.rows["grid_sampler_2d"] == torch.isin(op, geometric).sum()
    assert seen.rows["convolution"] == (op == names.index("Sharpness")).sum()


def edge_cases() -> torch.Tensor:
    """uint8 images: random, one value, two values, one value in all but 200 pixels (PIL's
    step 0), a narrow range, 0 and 255 only."""
    one = torch.full((1, 3, HEIGHT, WIDTH), 77, dtype=torch.uint8)
    two = one.clone()
    two[..., ::3, :] = 200
    mostly = one.clone()
    mostly.view(3, -1)[:, :200] = torch.arange(200, dtype=torch.uint8)
    narrow = images(1, seed=5).to(torch.uint8) // 16 + 100
    extremes = images(1, seed=6).to(torch.uint8) // 128 * 255
    return torch.cat([images(4).to(torch.uint8), one, two, mostly, narrow, extremes])


def test_channel_histograms_are_the_counts_torchvision_scatters() -> None:
    batch = edge_cases()
    flat = batch.flatten(-2).long()
    scattered = torch.zeros(*flat.shape[:-1], 256, dtype=torch.long)
    scattered.scatter_add_(-1, flat, torch.ones_like(flat))  # torchvision's equalize
    counted = channel_histograms(batch.float())
    assert torch.equal(counted, scattered)
    histc = [torch.histc(c.float(), 256, -0.5, 255.5) for c in batch.flatten(end_dim=1)]
    assert torch.equal(counted.flatten(end_dim=1).float(), torch.stack(histc))


def test_equalize_is_torchvisions_on_uint8_images() -> None:
    batch = edge_cases()
    assert torch.equal(equalize(batch.float()), TF.equalize(batch).float())


def test_equalize_neither_scatters_nor_waits() -> None:
    # scatter_add_ under deterministic algorithms on CUDA: index_put's sort of every pixel
    batch = edge_cases().float()
    with Dispatched() as seen, DeviceWaitTrace() as trace:
        equalize(batch)
    assert not trace.waits, [w.what for w in trace.waits]
    assert "_embedding_bag_forward_only" in seen.rows  # one-hot rows summed per channel
    assert not {"scatter", "scatter_add", "scatter_add_", "index_put", "index_put_"} & set(
        seen.rows
    )
    assert not set(SYNC_OPS) & set(seen.rows)


@pytest.mark.parametrize("name", POLICIES)
def test_policies_draw_per_image_and_repeat_under_a_seed(name: str) -> None:
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


@pytest.mark.parametrize("name", POLICIES)
def test_a_batch_sends_its_draws_to_the_device_in_one_copy(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies = []
    send = policies.to_device_async
    monkeypatch.setattr(policies, "to_device_async", lambda *a: copies.append(a) or send(*a))
    DevicePolicy(name)(images(8))
    assert len(copies) == 1
