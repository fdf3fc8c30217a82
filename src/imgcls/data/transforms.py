"""Named augmentation presets (`data.augment=...`), uint8 end to end.

A preset splits its work between the loader workers (per image, torchvision.transforms.v2 on
uint8 tensors, for data read from files) and the device (per-image random parameters, batched,
on float images in [0, 255] just before normalization). Data held in memory (`in_memory`) has no
worker side: all of its augmentation runs on the device.

| preset | train | default sizes (train crop / eval resize / eval crop) |
|---|---|---|
| none | eval transform only | 224 / 256 / 224 |
| standard | RandomResizedCrop + flip | 224 / 256 / 224 |
| cifar | pad-4 random crop + flip | 32 / 32 / 32 |
| cifar_light | pad-2 mirror random crop + flip (airbench's, for schedules of ~10 epochs) | 32 / 32 / 32 |
| seed_classic | seed 000: RandomResizedCrop + flip (workers), rotation 10 + ColorJitter 0.2 (device) | 224 / 256 / 224 |
| torchvision_recipe | RandomResizedCrop + flip + TrivialAugmentWide + RandomErasing 0.1 | 176 / 232 / 224 |

Evaluation always resizes the short side to the eval resize and center-crops the eval crop.
A source whose images all have one size (digits, CIFAR) keeps it unless sizes are given.
"""

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torchvision.transforms import v2

from imgcls.data.device_augment import ColorJitterBatch, RandomAffineBatch
from imgcls.utils.errors import UserError

DEFAULT_SIZES = {
    "none": (224, 256, 224),
    "standard": (224, 256, 224),
    "cifar": (32, 32, 32),
    "cifar_light": (32, 32, 32),
    "seed_classic": (224, 256, 224),
    "torchvision_recipe": (176, 232, 224),
}
PRESETS = tuple(DEFAULT_SIZES)


@dataclass
class Pipeline:
    """What runs where. A None step is skipped."""

    train_worker: Callable | None
    eval_worker: Callable | None
    train_device: Callable | None
    eval_device: Callable | None
    train_crop: int
    eval_resize: int
    eval_crop: int


def resize_center_crop(resize: int, crop: int) -> v2.Compose:
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(crop)])


def build_pipeline(
    augment: str,
    in_memory: bool,
    train_crop: int | None = None,
    eval_resize: int | None = None,
    eval_crop: int | None = None,
    native_size: int | None = None,
) -> Pipeline:
    """The preset's transforms. `native_size`: the one size all of a source's images have."""
    if augment not in DEFAULT_SIZES:
        raise UserError(f"Unknown data.augment={augment!r}. Presets: {', '.join(PRESETS)}.")
    if native_size:
        default_crop = default_resize = default_eval_crop = native_size
    else:
        default_crop, default_resize, default_eval_crop = DEFAULT_SIZES[augment]
    crop = train_crop or default_crop
    resize = eval_resize or default_resize
    eval_crop = eval_crop or default_eval_crop
    eval_transform = resize_center_crop(resize, eval_crop)
    rrc = (0.08, 1.0)  # torchvision's RandomResizedCrop area range
    jitter = ColorJitterBatch(0.2, 0.2, 0.2, 0.2) if augment == "seed_classic" else None

    if in_memory:
        if augment == "torchvision_recipe":
            raise UserError(
                "data.augment=torchvision_recipe needs per-image worker transforms "
                "(TrivialAugmentWide): set data.in_memory=false or pick another preset."
            )
        geometry = {
            "none": None,
            "standard": RandomAffineBatch(crop, scale=rrc),
            "cifar": RandomAffineBatch(crop, shift=4),
            "cifar_light": RandomAffineBatch(crop, shift=2, padding_mode="reflection"),
            "seed_classic": RandomAffineBatch(crop, scale=rrc, degrees=10),
        }[augment]
        same_size = resize == eval_crop == native_size
        fixed = None if same_size else eval_transform
        steps = [m for m in (geometry, jitter) if m is not None]
        train_device = nn.Sequential(*steps) if steps else fixed
        return Pipeline(None, None, train_device, fixed, crop, resize, eval_crop)

    flip = v2.RandomHorizontalFlip()
    train_worker = {
        "none": eval_transform,
        "standard": v2.Compose([v2.RandomResizedCrop(crop, antialias=True), flip]),
        "cifar": v2.Compose([resize_center_crop(crop, crop), v2.RandomCrop(crop, padding=4), flip]),
        "cifar_light": v2.Compose(
            [
                resize_center_crop(crop, crop),
                v2.RandomCrop(crop, padding=2, padding_mode="symmetric"),
                flip,
            ]
        ),
        "seed_classic": v2.Compose([v2.RandomResizedCrop(crop, antialias=True), flip]),
        "torchvision_recipe": v2.Compose(
            [
                v2.RandomResizedCrop(crop, antialias=True),
                flip,
                v2.TrivialAugmentWide(),
                v2.RandomErasing(0.1),
            ]
        ),
    }[augment]
    # seed 000's RandomRotation(10) samples nearest-neighbour; so does ours
    rotate = RandomAffineBatch(flip=False, degrees=10, interpolation="nearest")
    train_device = nn.Sequential(rotate, jitter) if jitter else None
    return Pipeline(train_worker, eval_transform, train_device, None, crop, resize, eval_crop)
