"""The training augmentation: the `data.augment` node (`Augmentation`, passed whole from the
config) and the presets it names, uint8 end to end, one function each.

A preset says its default sizes (train crop, eval resize, eval crop) and where its work runs:
- `worker`: per image in the loader workers (torchvision.transforms.v2 on uint8 tensors), for
  data read from files;
- `in_memory`: batched on the device, for data held in memory (no workers);
- `device`: batched on the device after the workers' part, per-image random (float [0, 255]);
- `device_crop`: with `data.decode=device`, the RandomResizedCrop area range the device crops
  with in place of the workers (None: the eval transform), or absent where it cannot.

| preset | train | default sizes |
|---|---|---|
| none | eval transform only | 224/256/224 |
| standard | RandomResizedCrop + flip | 224/256/224 |
| cifar | pad-4 random crop + flip | 32/32/32 |
| cifar_light | pad-2 mirror random crop + flip (airbench's, ~10-epoch runs) | 32/32/32 |
| classic_imagenet | RandomResizedCrop + flip, rotation 10 + ColorJitter 0.2 | 224/256/224 |
| torchvision_recipe | RandomResizedCrop + flip; policy ta_wide, erasing 0.1 | 176/232/224 |

On top of any preset, per image: a policy (`data.augment.policy`: RandAugment, AutoAugment,
TrivialAugmentWide, AugMix, data/augmentation/policies.py; in the workers for files decoded
there, batched on the device for data held there or decoded there) and RandomErasing
(`data.augment.erasing`: on the device, after normalization, as torchvision's recipe erases to
the mean colour). A preset may name its own defaults for both (torchvision_recipe); `none` turns
its policy off. MixUp / CutMix and repeated augmentation are the node's too; they act on whole
batches (data/device_batch.py) and on the order (data/in_memory.py).

Evaluation always resizes the short side to the eval resize and center-crops the eval crop.
A source whose images all have one size (digits, CIFAR) keeps it unless sizes are given.
Add a preset: one function decorated with `@PRESETS.register("name")`.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from torch import nn
from torchvision.transforms import v2

from imgcls.data.augmentation.batched import ColorJitterBatch, RandomAffineBatch, RandomErasingBatch
from imgcls.data.augmentation.policies import (
    check_policy,
    device_policy,
    worker_policy,
    workers_only,
)
from imgcls.utils.errors import UserError
from imgcls.utils.registry import Registry

RRC_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop area range
NO_DEVICE_CROP = object()  # a preset whose worker half cannot run on the device


@dataclass(frozen=True)
class Preset:
    sizes: tuple[int, int, int]  # train crop, eval resize, eval crop
    worker: Callable[[int], Callable]  # train crop -> per-image transform
    in_memory: Callable[[int], nn.Module | None]  # train crop -> batched transform
    device: Callable[[], nn.Module | None] = lambda: None
    device_crop: object = field(default=NO_DEVICE_CROP)  # RRC scale, None (eval), or absent
    policy: str | None = None  # the policy when data.augment.policy is null
    erasing: float = 0.0  # the erasing probability when data.augment.erasing is null


PRESETS: Registry[Callable[[], Preset]] = Registry("data.augment.preset")


def resize_center_crop(resize: int, crop: int) -> v2.Compose:
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(crop)])


def pad_crop_flip(crop: int, padding: int, mode: str) -> v2.Compose:
    """Resize to `crop`, pad by `padding` px, random-crop back to `crop`, flip (CIFAR)."""
    pad_crop = v2.RandomCrop(crop, padding=padding, padding_mode=mode)
    return v2.Compose([resize_center_crop(crop, crop), pad_crop, v2.RandomHorizontalFlip()])


def resized_crop_flip(crop: int) -> v2.Compose:
    return v2.Compose([v2.RandomResizedCrop(crop, antialias=True), v2.RandomHorizontalFlip()])


@PRESETS.register("none")
def _none() -> Preset:
    return Preset(
        (224, 256, 224), worker=lambda crop: None, in_memory=lambda crop: None, device_crop=None
    )


@PRESETS.register("standard")
def _standard() -> Preset:
    return Preset(
        (224, 256, 224),
        worker=resized_crop_flip,
        in_memory=lambda crop: RandomAffineBatch(crop, scale=RRC_SCALE),
        device_crop=RRC_SCALE,
    )


@PRESETS.register("cifar")
def _cifar() -> Preset:
    return Preset(
        (32, 32, 32),
        worker=lambda crop: pad_crop_flip(crop, 4, "constant"),
        in_memory=lambda crop: RandomAffineBatch(crop, shift=4),
    )


@PRESETS.register("cifar_light")
def _cifar_light() -> Preset:
    return Preset(
        (32, 32, 32),
        worker=lambda crop: pad_crop_flip(crop, 2, "symmetric"),
        in_memory=lambda crop: RandomAffineBatch(crop, shift=2, padding_mode="reflection"),
    )


@PRESETS.register("classic_imagenet")
def _classic_imagenet() -> Preset:
    """The classic ImageNet tutorial's pipeline: RandomResizedCrop + flip, rotation up
    to 10 degrees (nearest-neighbour, as torchvision's RandomRotation) and ColorJitter 0.2."""
    jitter = ColorJitterBatch(0.2, 0.2, 0.2, 0.2)
    return Preset(
        (224, 256, 224),
        worker=resized_crop_flip,
        in_memory=lambda crop: nn.Sequential(
            RandomAffineBatch(crop, scale=RRC_SCALE, degrees=10), jitter
        ),
        device=lambda: nn.Sequential(
            RandomAffineBatch(flip=False, degrees=10, interpolation="nearest"), jitter
        ),
        device_crop=RRC_SCALE,
    )


@PRESETS.register("torchvision_recipe")
def _torchvision_recipe() -> Preset:
    """torchvision's "new training recipe" (its references' --auto-augment ta_wide
    --random-erase 0.1 --train-crop-size 176 --val-resize-size 232)."""
    return Preset(
        (176, 232, 224),
        worker=resized_crop_flip,
        in_memory=lambda crop: RandomAffineBatch(crop, scale=RRC_SCALE),
        device_crop=RRC_SCALE,
        policy="ta_wide",
        erasing=0.1,
    )


@dataclass(frozen=True)
class Augmentation:
    """`data.augment`: the training augmentation, one node from the config to the pipeline
    (configs/data/augment/default.yaml says what each key does). Checked when made: a wrong
    name or value is one line before any data is read."""

    preset: str = "none"
    policy: str | None = None
    policy_magnitude: int | None = None
    policy_ops: int | None = None
    erasing: float | None = None
    erasing_mode: str = "const"
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    repeats: int = 1

    @classmethod
    def of(cls, node: "Augmentation | Mapping[str, Any] | None") -> "Augmentation":
        """The node as the config (or a caller) gives it."""
        if node is None or isinstance(node, Augmentation):
            return node or cls()
        if isinstance(node, str):  # the key before it was a node: data.augment=cifar
            raise UserError(
                f"data.augment is a node of augmentation settings: data.augment.preset={node} "
                "(configs/data/augment/default.yaml lists its keys)."
            )
        unknown = set(node) - {f.name for f in fields(cls)}
        if unknown:
            keys = ", ".join(f.name for f in fields(cls))
            raise UserError(f"data.augment has no key {sorted(unknown)[0]!r}: its keys are {keys}.")
        return cls(**node)

    def __post_init__(self) -> None:
        chosen = PRESETS[self.preset]()
        check_policy(self.chosen_policy(chosen), self.policy_magnitude, self.policy_ops)
        build_erasing(self.chosen_erasing(chosen), self.erasing_mode)
        for key in ("mixup_alpha", "cutmix_alpha"):
            if not getattr(self, key) >= 0:
                raise UserError(f"data.augment.{key}={getattr(self, key)} must be >= 0 (0: off).")
        if not (isinstance(self.repeats, int) and self.repeats >= 1):
            raise UserError(
                f"data.augment.repeats={self.repeats!r} is how many times each training image is "
                "seen in a row: a whole number, 1 (off) or more."
            )

    def chosen_policy(self, chosen: Preset) -> str | None:
        """The policy that runs: the node's, else the preset's own (`none`: none)."""
        policy = chosen.policy if self.policy is None else self.policy
        return None if policy == "none" else policy

    def chosen_erasing(self, chosen: Preset) -> float:
        return chosen.erasing if self.erasing is None else self.erasing


@dataclass
class Pipeline:
    """What runs where for a data source. A None step is skipped."""

    train_worker: Callable | None
    eval_worker: Callable | None
    train_device: Callable | None
    eval_device: Callable | None
    train_crop: int
    eval_resize: int
    eval_crop: int
    # data.decode=device: the RandomResizedCrop area range, None for the eval transform
    device_crop: object = NO_DEVICE_CROP
    # data.augment.policy's policy, and the same batched on the device for images the workers
    # did not augment (decoded on the device; None for timm's, workers only). For data held in
    # memory it is part of train_device.
    policy: str | None = None
    device_policy: Callable | None = None
    # RandomErasing, on normalized training images on the device
    erasing: Callable | None = None


def build_pipeline(
    augmentation: Augmentation,
    in_memory: bool,
    train_crop: int | None = None,
    eval_resize: int | None = None,
    eval_crop: int | None = None,
    native_size: int | None = None,
) -> Pipeline:
    """The preset's transforms, with the policy and erasing on top. The sizes: the data config's
    where given, else the one size all of a source's images have (`native_size`), else the
    preset's."""
    chosen = PRESETS[augmentation.preset]()
    defaults = (native_size,) * 3 if native_size else chosen.sizes
    crop, resize, eval_crop = (
        given or default
        for given, default in zip((train_crop, eval_resize, eval_crop), defaults, strict=True)
    )
    eval_transform = resize_center_crop(resize, eval_crop)
    policy = augmentation.chosen_policy(chosen)
    options = augmentation.policy_magnitude, augmentation.policy_ops
    erasing = build_erasing(augmentation.chosen_erasing(chosen), augmentation.erasing_mode)
    on_device = device_policy(policy, *options) if policy else None
    if in_memory:
        fixed = None if resize == eval_crop == native_size else eval_transform
        if policy and on_device is None:
            raise workers_only(policy, held=True)
        steps = [m for m in (chosen.in_memory(crop) or fixed, on_device) if m is not None]
        train_device = nn.Sequential(*steps) if len(steps) > 1 else next(iter(steps), None)
        return Pipeline(None, None, train_device, fixed, crop, resize, eval_crop, erasing=erasing)
    train_worker = chosen.worker(crop) or eval_transform
    if policy:
        train_worker = v2.Compose([train_worker, worker_policy(policy, *options, crop)])
    return Pipeline(
        train_worker,
        eval_transform,
        chosen.device(),
        None,
        crop,
        resize,
        eval_crop,
        chosen.device_crop,
        policy=policy,
        device_policy=on_device,
        erasing=erasing,
    )


def build_erasing(probability: float, mode: str) -> RandomErasingBatch | None:
    """RandomErasing on the device, or None at probability 0; one line for a bad value."""
    if not 0 <= probability <= 1:
        raise UserError(f"data.augment.erasing={probability} is a probability: between 0 and 1.")
    if mode not in RandomErasingBatch.MODES:
        raise UserError(
            f"data.augment.erasing_mode={mode!r} is not one of "
            f"{', '.join(RandomErasingBatch.MODES)} (const: zeros, pixel: noise)."
        )
    return RandomErasingBatch(probability, mode) if probability > 0 else None
