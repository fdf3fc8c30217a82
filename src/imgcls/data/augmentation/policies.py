"""Augmentation policies (TrivialAugmentWide, RandAugment, AutoAugment, AugMix) for a whole batch
on its device, each image drawing its own operations and magnitudes, as torchvision's do per
image in the loader workers.

torchvision's policies draw one operation per call: on a batch every image would get the same
one. And per image on a GPU they would wait for it: their affine ops build the warp matrix from
Python numbers on the device (a blocking copy per image), AugMix reads its chain depth back. Here
each step of a policy draws an operation and a magnitude per image on the host (torch's CPU
generator, which the data module reseeds from (seed, step)) and sorts the images by operation
there; the orders, magnitudes and warp matrices reach the device in one queued copy, and each
operation runs on its own images only, a slice of the sorted batch, before a gather puts them
back in order. Every slice's bounds are known on the host, so no size depends on a value on the
device, and nothing is read back. The geometry (shear, translate, rotate) is one warp
(`grid_sample`) of the images that drew any of it, the colour operations blend with their
degenerate image at a per-image factor, equalize counts its histograms without a scatter (see
`channel_histograms`). The operations, their magnitude bins and AutoAugment's sub-policies are
torchvision's tables (`torchvision.transforms.v2.RandAugment` and siblings), so a policy means
the same on the device as in the workers. Measured cost: see configs/data/augment/default.yaml.

Inputs are float images in [0, 255] (B, C, H, W); outputs likewise.
"""

import math
from collections.abc import Callable
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

from imgcls.utils.errors import UserError
from imgcls.utils.machine import DeviceConstants, to_device_async
from imgcls.utils.registry import Registry

# torchvision's luma weights (rgb_to_grayscale)
LUMA = (0.2989, 0.587, 0.114)
BLENDS = ("Brightness", "Color", "Contrast", "Sharpness")
# one warp between them (PolicyOps.theta: in this order)
GEOMETRY = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
# a pixel value's row: its one-hot histogram
_ONE_HOT = DeviceConstants(torch.eye(256))


def _gray(images: Tensor) -> Tensor:
    return sum(w * images[:, c : c + 1] for c, w in enumerate(LUMA))


def channel_histograms(images: Tensor) -> Tensor:
    """Each image's and channel's count of pixels at each value 0-255 (B, C, 256), of images
    holding whole numbers in [0, 255]: each pixel picks its value's row of the 256 x 256 identity
    and each channel sums its pixels' rows (`embedding_bag`: one pass, a sum per channel, no
    atomics; exact below 2^24 pixels a channel). Not `scatter_add_`, as torchvision counts: under
    deterministic algorithms on CUDA that goes through index_put's sort of B x C x H x W indices
    (a host copy on older torch, gigabytes of temporaries on newer)."""
    (identity,) = _ONE_HOT.on(images.device)
    values = images.flatten(-2).flatten(end_dim=-2).int()  # (B x C, H x W)
    counts = F.embedding_bag(values, identity, mode="sum")
    return counts.view(*images.shape[:-2], 256).long()


def equalize(images: Tensor) -> Tensor:
    """torchvision's equalize (PIL's lookup table) per image and channel, of images holding whole
    numbers in [0, 255], in their dtype; its histograms from `channel_histograms`."""
    histogram = channel_histograms(images)
    cumulative = histogram.cumsum(dim=-1)
    # PIL: the pixels below the channel's largest value, over 255 (0: the channel as it is)
    top = histogram.gather(-1, cumulative.argmax(dim=-1, keepdim=True))
    step = (images.shape[-2] * images.shape[-1] - top).div(255, rounding_mode="floor")
    # value k maps from the pixels below it, rounded; value 0 to 0
    lut = (cumulative[..., :-1] + step // 2).div(step.clamp(min=1), rounding_mode="floor")
    lut = F.pad(lut.clamp(0, 255), (1, 0)).to(images.dtype)
    equalized = lut.gather(-1, images.flatten(-2).long()).view_as(images)
    return torch.where((step > 0).unsqueeze(-1), equalized, images)


class OpSpace:
    """A policy's operations: names, and per operation the magnitude of each bin (None for an
    operation without one) and whether its sign is drawn, from torchvision's table."""

    def __init__(self, space: dict, num_bins: int, height: int, width: int) -> None:
        self.height, self.width = height, width  # translations are in pixels of this size
        self.names = list(space)
        self.signed = [signed for _, signed in space.values()]
        self.bins = [
            None if (m := fn(num_bins, height, width)) is None else m.float()
            for fn, _ in space.values()
        ]
        # (ops, bins) magnitudes and (ops,) signed flags for the draws on the host: numpy, so
        # that each batch's look-up is into a tensor made on the host in its step (from_numpy:
        # no copy), as tests/device_waits.py sees one (a tensor kept from before is a device's)
        self.table = torch.stack(
            [b if b is not None else torch.zeros(num_bins) for b in self.bins]
        ).numpy()
        self.signs = np.array(self.signed)

    def magnitudes(self, op: Tensor, bin_index: Tensor) -> Tensor:
        """The magnitude of each draw (host tensors, any shape) of operation `op` at `bin_index`,
        its sign drawn where the operation is signed (a fair coin, as torchvision)."""
        magnitude = torch.from_numpy(self.table)[op, bin_index]
        flip = torch.from_numpy(self.signs)[op] & (torch.rand(op.shape) < 0.5)
        return torch.where(flip, -magnitude, magnitude)


class OpGroups:
    """Steps of one kernel per row, grouped on the host so that each kernel runs on its own rows
    only: per step, the rows sorted by kernel (a stable sort: the same draws, the same order) and
    where each kernel's rows start and end.

    `kernel`: (steps, rows) host tensor of kernels 0 to `count` - 1; `source`: the image each row
    starts from (one row per image, or per AugMix chain and image); `values`: host tensors
    (steps, rows, ...) of what each row's kernel takes. `index`: per step, the gather from the
    rows as they are (at first: the images) into that step's order, and a last one back into row
    order; `values`: each step's in that order; `edges`: per step, where the rows of kernel 0, 1,
    ... start, then the end."""

    def __init__(self, kernel: Tensor, count: int, source: Tensor, *values: Tensor) -> None:
        gathers, orders, self.edges = [], [], []
        position = source  # where each row is in the tensor at hand
        for step_kernel in kernel:
            order = step_kernel.argsort(stable=True)
            gathers.append(position[order])
            orders.append(order)
            position = order.argsort()
            starts = torch.searchsorted(step_kernel[order], torch.arange(count + 1))
            self.edges.append(starts.tolist())
        self.index = torch.stack([*gathers, position])
        self.values = [
            torch.stack([v[o] for v, o in zip(value, orders, strict=True)]) for value in values
        ]

    def to(self, device: torch.device, *riders: Tensor) -> list[Tensor]:
        """`index`, `values` and `riders` (AugMix's mixing weights) on `device` in one pinned,
        queued copy, as float32 (exact for indices below 2^24)."""
        host = (self.index, *self.values, *riders)
        sent = to_device_async(torch.cat([t.flatten().float() for t in host]), device)
        pieces = sent.split([t.numel() for t in host])
        index, *rest = (piece.view(t.shape) for piece, t in zip(pieces, host, strict=True))
        return [index.long(), *rest]


class PolicyOps(nn.Module):
    """The operations of an `OpSpace`, each applied to a group of images at a magnitude per
    image, by kernel: "keep" for the images left as they are (op -1, Identity), one "warp" for
    the geometry (a matrix per image, made on the host), and one per other operation."""

    def __init__(self, space: OpSpace, interpolation: str = "nearest") -> None:
        super().__init__()
        self.space, self.interpolation = space, interpolation
        kernels = [
            "keep" if name == "Identity" else "warp" if name in GEOMETRY else name
            for name in space.names
        ]
        self.kernels = ["keep", *dict.fromkeys(k for k in kernels if k != "keep")]
        # each operation's kernel, and last op -1's (keep): numpy, as OpSpace's tables
        self._kernel_of = np.array([*map(self.kernels.index, kernels), 0])
        # Sharpness's smoothing: 1s around a 5, over 13
        self._blur = DeviceConstants(torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13)
        # the pixels' centres in grid_sample's units (align_corners=False), as affine_grid's
        width, height = space.width, space.height
        self._centres = DeviceConstants(
            (torch.linspace(-1, 1, width) * (width - 1) / width).view(1, 1, width, 1),
            (torch.linspace(-1, 1, height) * (height - 1) / height).view(1, height, 1, 1),
        )

    def groups(self, op: Tensor, magnitude: Tensor, source: Tensor) -> OpGroups:
        """Steps of operation `op` (-1: none) at `magnitude` per row, (steps, rows) host tensors,
        grouped by kernel; their values: each row's magnitude and warp matrix."""
        kernel = torch.from_numpy(self._kernel_of)[op]
        theta = self.theta(op, magnitude)
        return OpGroups(kernel, len(self.kernels), source, magnitude, theta)

    def forward(
        self,
        images: Tensor,
        edges: list[list[int]],
        index: Tensor,
        magnitude: Tensor,
        theta: Tensor,
    ) -> Tensor:
        """The steps of an `OpGroups` (its edges, and its tensors on the images' device): per
        step, the rows gathered into its order, each kernel run on its slice and the slices
        joined; at the end, the rows gathered back into their order."""
        for step, bounds in enumerate(edges):
            rows = images.index_select(0, index[step])
            images = torch.cat(
                [
                    self.apply(name, rows[a:b], magnitude[step, a:b], theta[step, a:b])
                    for name, (a, b) in zip(self.kernels, pairwise(bounds), strict=True)
                    if b > a
                ]
            )
        return images.index_select(0, index[-1])

    def apply(self, name: str, images: Tensor, magnitude: Tensor, theta: Tensor) -> Tensor:
        """Kernel `name` on each image at its `magnitude` (or its warp matrix `theta`), as
        torchvision's operation."""
        if name == "keep":
            return images
        if name == "warp":
            return self.warp(images, theta)
        if name in BLENDS:
            factor = (1 + magnitude).view(-1, 1, 1, 1)
            blended = factor * images + (1 - factor) * self.degenerate(name, images)
            return blended.clamp(0, 255)
        if name == "Posterize":  # keep `bits` bits: floor to a multiple of 2^(8 - bits)
            step = torch.exp2(8 - magnitude.round()).view(-1, 1, 1, 1)
            return (images / step).floor() * step
        if name == "Solarize":
            threshold = (255 * magnitude).view(-1, 1, 1, 1)
            return torch.where(images >= threshold, 255 - images, images)
        if name == "Invert":
            return 255 - images
        if name == "AutoContrast":  # each channel stretched to [0, 255]
            low = images.amin(dim=(2, 3), keepdim=True)
            high = images.amax(dim=(2, 3), keepdim=True)
            flat = high == low
            scale = torch.where(flat, 1.0, 255 / (high - low).clamp(min=1e-6))
            return ((images - torch.where(flat, 0.0, low)) * scale).clamp(0, 255).floor()
        if name == "Equalize":  # torchvision's, per image and channel
            return equalize(images.round().clamp(0, 255))
        raise ValueError(f"no batched form of torchvision's {name!r}")

    def degenerate(self, name: str, images: Tensor) -> Tensor:
        """What a blend operation moves towards (factor 0), as torchvision's adjust_*."""
        if name == "Brightness":
            return torch.zeros_like(images)
        if name == "Color":
            return _gray(images).expand_as(images)
        if name == "Contrast":
            return _gray(images).mean(dim=(1, 2, 3), keepdim=True).expand_as(images)
        # Sharpness: a 3x3 smoothing inside, the one-pixel border as it was
        (kernel,) = self._blur.on(images.device, images.dtype)
        channels = images.shape[1]
        blurred = F.conv2d(images, kernel.expand(channels, 1, 3, 3), groups=channels).round()
        out = images.clone()
        out[..., 1:-1, 1:-1] = blurred
        return out

    def theta(self, op: Tensor, magnitude: Tensor) -> Tensor:
        """Each draw's warp (host tensors, any shape; (..., 2, 3) out), from an output pixel to
        the input's, in grid_sample's [-1, 1] units: shear about the top-left corner
        (AutoAugment's convention, a magnitude m a shear of atan(m)), translate by whole pixels,
        rotate about the centre; the identity for a draw of no geometric operation."""
        height, width = self.space.height, self.space.width
        shear_x, shear_y, translate_x, translate_y, degrees = (
            magnitude.masked_fill(op != self.space.names.index(name), 0) for name in GEOMETRY
        )
        # output pixel (x, y), top-left origin -> the input pixel it comes from
        # signs as torchvision's: a positive magnitude turns and shears the other way
        angle = -degrees * (math.pi / 180)
        cos, sin = angle.cos(), angle.sin()
        cx, cy = (width - 1) / 2, (height - 1) / 2
        tx, ty = translate_x.trunc(), translate_y.trunc()
        sx, sy = -shear_x.unsqueeze(-1), -shear_y.unsqueeze(-1)
        # undo translate and rotation (about the centre), then shear
        # x1 = cos*(x - tx - cx) + sin*(y - ty - cy) + cx ; y1 = -sin*(...) + cos*(...) + cy
        # x0 = x1 - sx*(y1 + 1/2) ; y0 = y1 - sy*(x0 + 1/2): the shear's origin is the image's
        # corner, half a pixel before the first pixel's centre (one of sx, sy is zero per image)
        a = torch.stack([cos, sin, cx - cos * (tx + cx) - sin * (ty + cy)], dim=-1)
        b = torch.stack([-sin, cos, cy + sin * (tx + cx) - cos * (ty + cy)], dim=-1)
        x0 = a - sx * b - F.pad(0.5 * sx, (2, 0))
        y0 = b - sy * x0 - F.pad(0.5 * sy, (2, 0))

        def normalized(row: Tensor, size: int) -> Tensor:
            # in grid_sample's units along an axis of `size` pixels (align_corners=False:
            # x = (W u + W - 1) / 2)
            x, y, shift = row.unbind(-1)
            offset = (x * (width - 1) + y * (height - 1) + 2 * shift + 1) / size - 1
            return torch.stack([x * (width / size), y * (height / size), offset], dim=-1)

        return torch.stack([normalized(x0, width), normalized(y0, height)], dim=-2)

    def warp(self, images: Tensor, theta: Tensor) -> Tensor:
        """`images` warped by a matrix each (from `theta`), zero fill. The sampling grid is
        affine_grid's, made elementwise: affine_grid's batched matmul rounds to TF32 on CUDA where
        float32 matmuls may (run/numerics.py), some 0.05 px off at 224 px."""
        x, y = self._centres.on(images.device, images.dtype)
        rows = theta.to(images.dtype).view(-1, 1, 1, 2, 3)  # (n, 1, 1, x|y, 3)
        grid = rows[..., 0] * x + rows[..., 1] * y + rows[..., 2]
        return F.grid_sample(
            images, grid, mode=self.interpolation, padding_mode="zeros", align_corners=False
        )


def _autoaugment(policy: str) -> Callable[[int | None, int | None], v2.Transform]:
    return lambda magnitude, num_ops: v2.AutoAugment(v2.AutoAugmentPolicy(policy))


# timm's policies by its config string (DeiT's "rand-m9-mstd0.5-inc1"): PIL, workers only
TIMM_PREFIX = "timm:"
# name -> (magnitude, num_ops) -> torchvision's transform, its defaults where given None
POLICIES: Registry[Callable[[int | None, int | None], v2.Transform]] = Registry(
    "data.augment.policy",
    more=f"{TIMM_PREFIX}<timm config string> ({TIMM_PREFIX}rand-m9-mstd0.5-inc1)",
)
POLICIES.add("ta_wide", lambda magnitude, num_ops: v2.TrivialAugmentWide())
POLICIES.add(
    "randaugment",
    lambda magnitude, num_ops: v2.RandAugment(
        num_ops=2 if num_ops is None else num_ops, magnitude=9 if magnitude is None else magnitude
    ),
)
for _dataset in ("imagenet", "cifar10", "svhn"):
    POLICIES.add(f"autoaugment_{_dataset}", _autoaugment(_dataset))
POLICIES.add(
    "augmix", lambda magnitude, num_ops: v2.AugMix(severity=3 if magnitude is None else magnitude)
)
MAGNITUDES = {"randaugment": (0, 30), "augmix": (1, 10)}  # what policy_magnitude means
OPS = ("randaugment",)  # the policies policy_ops applies to


def check_policy(name: str | None, magnitude: int | None, num_ops: int | None) -> None:
    """A policy's name and options, one line for what it cannot take."""
    if name is None:
        if magnitude is not None or num_ops is not None:
            raise UserError(
                "data.augment.policy_magnitude and policy_ops tune a policy: set "
                f"data.augment.policy to one of {', '.join(POLICIES)} (or leave them null)."
            )
        return
    if name.startswith(TIMM_PREFIX):
        if magnitude is not None or num_ops is not None:
            raise UserError(
                f"data.augment.policy={name} carries its own magnitude and ops in timm's string "
                "(rand-m9-n2-...): leave data.augment.policy_magnitude and policy_ops null."
            )
        return
    POLICIES[name]
    if magnitude is not None:
        if name not in MAGNITUDES:
            raise UserError(
                f"data.augment.policy={name} has no magnitude to set (policy_magnitude applies "
                f"to {', '.join(MAGNITUDES)}): leave it null."
            )
        low, high = MAGNITUDES[name]
        if not low <= magnitude <= high:
            raise UserError(
                f"data.augment.policy_magnitude={magnitude} is out of {name}'s range "
                f"[{low}, {high}]."
            )
    if num_ops is not None and (name not in OPS or num_ops < 1):
        raise UserError(
            f"data.augment.policy_ops={num_ops} applies to randaugment (1 or more ops per "
            f"image), not {name}: leave it null."
        )


def worker_policy(name: str, magnitude: int | None, num_ops: int | None, crop: int) -> Callable:
    """The policy per image in the loader workers (uint8 CHW in and out): torchvision's, or
    timm's through PIL."""
    if not name.startswith(TIMM_PREFIX):
        return POLICIES[name](magnitude, num_ops)
    from timm.data.auto_augment import (
        augment_and_mix_transform,
        auto_augment_transform,
        rand_augment_transform,
    )

    config = name.removeprefix(TIMM_PREFIX)
    # as timm's create_transform: translations relative to the crop, fill with the mean colour
    hparams = {"translate_const": int(crop * 0.45), "img_mean": (124, 116, 104)}
    make = {"rand": rand_augment_transform, "augmix": augment_and_mix_transform}.get(
        config.split("-")[0], auto_augment_transform
    )
    try:
        policy = make(config, hparams)
    except Exception as err:
        raise UserError(f"timm cannot read data.augment.policy={name!r}: {err}") from err
    return v2.Compose([v2.ToPILImage(), policy, v2.PILToTensor()])


def workers_only(name: str, held: bool = False) -> UserError:
    """The one line for a policy that runs in the loader workers only, asked of the device: for
    data held in memory (`held`) or photos decoded on the device."""
    instead = (
        "or, for files, read them in the workers (data.in_memory=false)"
        if held
        else "or decode in the workers (data.decode=cpu)"
    )
    where = "held in memory" if held else "decoded on the device"
    return UserError(
        f"data.augment.policy={name} is timm's PIL policy, for images decoded in the loader "
        f"workers: for data {where} pick one of {', '.join(POLICIES)}, {instead}."
    )


def device_policy(name: str, magnitude: int | None, num_ops: int | None) -> "DevicePolicy | None":
    """The policy batched on the device, or None for timm's (workers only)."""
    return None if name.startswith(TIMM_PREFIX) else DevicePolicy(name, magnitude, num_ops)


class DevicePolicy(nn.Module):
    """A policy of `POLICIES` per image on a batch. `magnitude`: RandAugment's bin (of 31) or
    AugMix's severity (1-10); `num_ops`: RandAugment's operations per image."""

    def __init__(self, name: str, magnitude: int | None = None, num_ops: int | None = None) -> None:
        super().__init__()
        # torchvision's transform: its operation table, bins, sub-policies and settings
        self.reference = POLICIES[name](magnitude, num_ops)
        self.space = type(self.reference)._AUGMENTATION_SPACE
        self.num_bins = 31
        if isinstance(self.reference, v2.AutoAugment):
            self.num_bins = 10
            names = list(self.space)
            sub = self.reference._policies  # ((op, probability, bin or None), (op, ...)) each
            # numpy, as OpSpace's tables
            self.sub_policies = (
                np.array([[names.index(o) for o, _, _ in p] for p in sub]),
                np.array([[q for _, q, _ in p] for p in sub]),
                np.array([[b or 0 for _, _, b in p] for p in sub]),
            )
        elif isinstance(self.reference, v2.AugMix):
            self.num_bins = self.reference._PARAMETER_MAX
        self.interpolation = "bilinear" if isinstance(self.reference, v2.AugMix) else "nearest"
        self._ops: dict[tuple[int, int], PolicyOps] = {}

    def ops(self, height: int, width: int) -> PolicyOps:
        if (height, width) not in self._ops:  # translations are in pixels of this size
            space = OpSpace(self.space, self.num_bins, height, width)
            self._ops[height, width] = PolicyOps(space, self.interpolation)
        return self._ops[height, width]

    def draw(self, n: int) -> tuple[Tensor, Tensor]:
        """Per step and row, on the host: the operation (-1: none) and its magnitude bin, (steps,
        rows) each. A row per image; for AugMix, per chain and image (chain-major)."""
        reference, count = self.reference, len(self.space)
        if isinstance(reference, v2.TrivialAugmentWide):
            return torch.randint(count, (1, n)), torch.randint(self.num_bins, (1, n))
        if isinstance(reference, v2.RandAugment):
            steps = (reference.num_ops, n)
            return torch.randint(count, steps), torch.full(steps, reference.magnitude)
        if isinstance(reference, v2.AutoAugment):
            sub_op, sub_p, sub_bin = map(torch.from_numpy, self.sub_policies)
            pick = torch.randint(len(sub_op), (n,))
            apply = torch.rand(2, n) <= sub_p[pick].T
            return sub_op[pick].T.masked_fill(~apply, -1), sub_bin[pick].T
        # AugMix: chains of one to three operations at bins below the severity
        rows = reference.mixture_width * n
        depth = torch.randint(1, 4, (rows,))  # steps 0 to depth - 1 of each chain
        op = torch.randint(count, (3, rows)).masked_fill(torch.arange(3).view(3, 1) >= depth, -1)
        return op, torch.randint(reference.severity, (3, rows))

    def forward(self, images: Tensor) -> Tensor:
        n = images.shape[0]
        ops = self.ops(*images.shape[-2:])
        op, bin_index = self.draw(n)
        magnitude = ops.space.magnitudes(op, bin_index)
        groups = ops.groups(op, magnitude, source=torch.arange(op.shape[1]) % n)
        augmix = isinstance(self.reference, v2.AugMix)
        # AugMix mixes its chains with Dirichlet weights, then with the image by a Beta draw
        mixing = self.mixing(n) if augmix else ()
        index, magnitude, theta, *mixing = groups.to(images.device, *mixing)
        out = ops(images, groups.edges, index, magnitude, theta)
        if not augmix:
            return out
        keep, weights = mixing
        chains = out.view(-1, *images.shape)
        mix = keep.view(n, 1, 1, 1) * images
        for chain, aug in enumerate(chains):
            mix = mix + weights[:, chain].view(n, 1, 1, 1) * aug
        return mix.clamp(0, 255)

    def mixing(self, n: int) -> tuple[Tensor, Tensor]:
        """AugMix's weights per image, on the host: the image's own, and each chain's."""
        alpha = self.reference.alpha
        m = torch._sample_dirichlet(torch.full((n, 2), alpha))
        chains = torch._sample_dirichlet(torch.full((n, self.reference.mixture_width), alpha))
        return m[:, 0], chains * m[:, 1:]
