"""Augmentation policies (TrivialAugmentWide, RandAugment, AutoAugment, AugMix) for a whole batch
on its device, each image drawing its own operations and magnitudes, as torchvision's do per
image in the loader workers.

torchvision's policies draw one operation per call: on a batch every image would get the same
one. And per image on a GPU they would wait for it: their affine ops build the warp matrix from
Python numbers on the device (a blocking copy per image), AugMix reads its chain depth back. Here
each step of a policy draws an operation and a magnitude per image on the device, and applies
every operation of the policy's space to the whole batch, keeping for each image the one it drew
(`torch.where`): all the geometry (shear, translate, rotate) is one warp (`grid_sample`), the
colour operations blend with their degenerate image at a per-image factor, and equalize is
torchvision's own batched kernel. The operations, their magnitude bins and
AutoAugment's sub-policies are torchvision's tables (`torchvision.transforms.v2.RandAugment` and
siblings), so a policy means the same on the device as in the workers. Nothing is read back to
the host. Measured cost: see configs/data/cifar10.yaml.

Inputs are float images in [0, 255] (B, C, H, W); outputs likewise.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from imgcls.utils.errors import UserError
from imgcls.utils.machine import DeviceConstants
from imgcls.utils.registry import Registry

# torchvision's luma weights (rgb_to_grayscale)
LUMA = (0.2989, 0.587, 0.114)
BLENDS = ("Brightness", "Color", "Contrast", "Sharpness")
GEOMETRY = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _gray(images: Tensor) -> Tensor:
    return sum(w * images[:, c : c + 1] for c, w in enumerate(LUMA))


class OpSpace:
    """A policy's operations: names, and per operation the magnitude of each bin (None for an
    operation without one) and whether its sign is drawn, from torchvision's table."""

    def __init__(self, space: dict, num_bins: int, height: int, width: int) -> None:
        self.names = list(space)
        self.signed = [signed for _, signed in space.values()]
        self.bins = [
            None if (m := fn(num_bins, height, width)) is None else m.float()
            for fn, _ in space.values()
        ]
        # (ops, bins) magnitudes and (ops,) signed flags
        self.tables = DeviceConstants(
            torch.stack([b if b is not None else torch.zeros(num_bins) for b in self.bins]),
            torch.tensor(self.signed),
        )

    def magnitudes(self, op: Tensor, bin_index: Tensor) -> Tensor:
        """Each image's magnitude for its operation `op` at `bin_index`, its sign drawn where
        the operation is signed (a fair coin, as torchvision)."""
        table, signed = self.tables.on(op.device)
        magnitude = table[op, bin_index]
        flip = signed[op] & (torch.rand(op.shape, device=op.device) < 0.5)
        return torch.where(flip, -magnitude, magnitude)


class PolicyOps(nn.Module):
    """Apply per image an operation of an `OpSpace` with a magnitude: `(images, op, magnitude)`,
    `op` and `magnitude` one per image (op -1: leave the image as it is)."""

    def __init__(self, space: OpSpace, interpolation: str = "nearest") -> None:
        super().__init__()
        self.space, self.interpolation = space, interpolation
        # Sharpness's smoothing: 1s around a 5, over 13
        self._blur = DeviceConstants(torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13)

    def forward(self, images: Tensor, op: Tensor, magnitude: Tensor) -> Tensor:
        index = {name: i for i, name in enumerate(self.space.names)}
        chose = {name: (op == i).view(-1, 1, 1, 1) for name, i in index.items()}
        amount = {name: torch.where(op == i, magnitude, 0.0) for name, i in index.items()}
        zero = torch.zeros_like(magnitude)
        out = self.warp(images, *(amount.get(name, zero) for name in GEOMETRY))
        for name in BLENDS:
            if name in index:
                factor = (1 + amount[name]).view(-1, 1, 1, 1)
                blended = (factor * images + (1 - factor) * self.degenerate(name, images)).clamp(
                    0, 255
                )
                out = torch.where(chose[name], blended, out)
        if "Posterize" in index:  # keep `bits` bits: floor to a multiple of 2^(8 - bits)
            step = torch.exp2(8 - amount["Posterize"].round()).view(-1, 1, 1, 1)
            out = torch.where(chose["Posterize"], (images / step).floor() * step, out)
        if "Solarize" in index:
            threshold = (255 * amount["Solarize"]).view(-1, 1, 1, 1)
            solarized = torch.where(images >= threshold, 255 - images, images)
            out = torch.where(chose["Solarize"], solarized, out)
        if "Invert" in index:
            out = torch.where(chose["Invert"], 255 - images, out)
        if "AutoContrast" in index:  # each channel stretched to [0, 255]
            low = images.amin(dim=(2, 3), keepdim=True)
            high = images.amax(dim=(2, 3), keepdim=True)
            flat = high == low
            scale = torch.where(flat, 1.0, 255 / (high - low).clamp(min=1e-6))
            stretched = ((images - torch.where(flat, 0.0, low)) * scale).clamp(0, 255).floor()
            out = torch.where(chose["AutoContrast"], stretched, out)
        if "Equalize" in index:  # torchvision's batched kernel, per image and channel
            equalized = TF.equalize(images.round().clamp(0, 255).to(torch.uint8))
            out = torch.where(chose["Equalize"], equalized.to(images.dtype), out)
        return out

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

    def warp(
        self,
        images: Tensor,
        shear_x: Tensor,
        shear_y: Tensor,
        translate_x: Tensor,
        translate_y: Tensor,
        degrees: Tensor,
    ) -> Tensor:
        """Shear about the top-left corner (AutoAugment's convention, a magnitude m a shear of
        atan(m)), translate by whole pixels, rotate about the centre, zero fill: one
        `grid_sample` for the batch, the identity for an image without a geometric operation."""
        n, _, height, width = images.shape
        dtype = images.dtype
        # output pixel (x, y), top-left origin -> the input pixel it comes from
        # signs as torchvision's: a positive magnitude turns and shears the other way
        angle = -degrees.to(dtype) * (math.pi / 180)
        cos, sin = angle.cos(), angle.sin()
        cx, cy = (width - 1) / 2, (height - 1) / 2
        tx, ty = translate_x.trunc().to(dtype), translate_y.trunc().to(dtype)
        sx, sy = -shear_x.to(dtype), -shear_y.to(dtype)
        # undo translate and rotation (about the centre), then shear
        # x1 = cos*(x - tx - cx) + sin*(y - ty - cy) + cx ; y1 = -sin*(...) + cos*(...) + cy
        # x0 = x1 - sx*(y1 + 1/2) ; y0 = y1 - sy*(x0 + 1/2): the shear's origin is the image's
        # corner, half a pixel before the first pixel's centre (one of sx, sy is zero per image)
        a = torch.stack([cos, sin, cx - cos * (tx + cx) - sin * (ty + cy)], dim=1)
        b = torch.stack([-sin, cos, cy + sin * (tx + cx) - cos * (ty + cy)], dim=1)
        x0 = a - sx.view(n, 1) * b - F.pad(0.5 * sx.view(n, 1), (2, 0))
        y0 = b - sy.view(n, 1) * x0 - F.pad(0.5 * sy.view(n, 1), (2, 0))
        # in grid_sample's [-1, 1] units (align_corners=False: x = (W u + W - 1) / 2)
        theta = torch.stack(
            [
                torch.stack(
                    [
                        x0[:, 0],
                        x0[:, 1] * (height / width),
                        (x0[:, 0] * (width - 1) + x0[:, 1] * (height - 1) + 2 * x0[:, 2] + 1)
                        / width
                        - 1,
                    ],
                    dim=1,
                ),
                torch.stack(
                    [
                        y0[:, 0] * (width / height),
                        y0[:, 1],
                        (y0[:, 0] * (width - 1) + y0[:, 1] * (height - 1) + 2 * y0[:, 2] + 1)
                        / height
                        - 1,
                    ],
                    dim=1,
                ),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, [n, images.shape[1], height, width], align_corners=False)
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
            self.sub_policies = DeviceConstants(
                torch.tensor([[names.index(o) for o, _, _ in p] for p in sub]),
                torch.tensor([[q for _, q, _ in p] for p in sub]),
                torch.tensor([[b or 0 for _, _, b in p] for p in sub]),
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

    def forward(self, images: Tensor) -> Tensor:
        n, device = images.shape[0], images.device
        ops = self.ops(*images.shape[-2:])

        def uniform_op() -> Tensor:
            return torch.randint(len(ops.space.names), (n,), device=device)

        def step(x: Tensor, op: Tensor, bin_index: Tensor) -> Tensor:
            return ops(x, op, ops.space.magnitudes(op, bin_index))

        reference = self.reference
        if isinstance(reference, v2.TrivialAugmentWide):
            return step(images, uniform_op(), torch.randint(self.num_bins, (n,), device=device))
        if isinstance(reference, v2.RandAugment):
            fixed = torch.full((n,), reference.magnitude, device=device)
            for _ in range(reference.num_ops):
                images = step(images, uniform_op(), fixed)
            return images
        if isinstance(reference, v2.AutoAugment):
            sub_op, sub_p, sub_bin = self.sub_policies.on(device)
            pick = torch.randint(len(sub_op), (n,), device=device)
            for j in range(2):
                apply = torch.rand(n, device=device) <= sub_p[pick, j]
                images = step(images, torch.where(apply, sub_op[pick, j], -1), sub_bin[pick, j])
            return images
        # AugMix: chains of one to three operations at bins below the severity, mixed with
        # Dirichlet weights, then with the image by a Beta draw
        ones = torch.ones(n, 1, device=device)
        m = torch._sample_dirichlet(ones.expand(n, 2).contiguous())
        weights = torch._sample_dirichlet(ones.expand(n, reference.mixture_width).contiguous())
        weights = weights * m[:, 1:]
        mix = m[:, 0].view(n, 1, 1, 1) * images
        for chain in range(reference.mixture_width):
            aug, depth = images, torch.randint(1, 4, (n,), device=device)
            for d in range(3):
                severity = torch.randint(reference.severity, (n,), device=device)
                aug = step(aug, torch.where(depth > d, uniform_op(), -1), severity)
            mix = mix + weights[:, chain].view(n, 1, 1, 1) * aug
        return mix.clamp(0, 255)
