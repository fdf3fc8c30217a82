"""The crop of photos decoded on the device (`data.decode=device`), for a whole batch of images
of different sizes at once: torchvision's RandomResizedCrop boxes, drawn per image from the same
distribution (10 tries of area fraction and log-uniform aspect, then a centre crop), and
evaluation's "resize the short side, centre-crop" as a box too, are cut out and resized in one
`roi_align` (an average of bilinear samples per output pixel, adaptive in number: an
antialiased downscale), then flipped per image.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from imgcls.utils.machine import to_device_async

# An image whose long side is over this many times the batch's median is shrunk alone before
# the batch is assembled, so one huge photo does not make the whole padded batch huge.
OUTLIER_FACTOR = 2.0
# The float32 padded images one roi_align call reads, at most (larger batches go in chunks of
# similar sizes): 256 photos padded to 1000 px would take 3 GB, too much beside a net's
# activations on a 16-24 GB GPU.
CROP_CHUNK_BYTES = 256 * 2**20


def sizes_of(images: Sequence[Tensor], device: torch.device) -> Tensor:
    """(N, 2) float heights and widths (shapes, known on the host: no sync)."""
    return to_device_async([image.shape[-2:] for image in images], device, torch.float32)


def random_resized_boxes(
    sizes: Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    tries: int = 10,
) -> Tensor:
    """(N, 4) boxes (x1, y1, x2, y2) in pixels, one per image of (height, width) `sizes`, drawn
    as torchvision's RandomResizedCrop draws them, for all images at once on their device."""
    n, device = len(sizes), sizes.device
    height, width = sizes[:, :1], sizes[:, 1:]
    area = height * width * torch.empty(n, tries, device=device).uniform_(*scale)
    log_ratio = torch.empty(n, tries, device=device).uniform_(
        math.log(ratio[0]), math.log(ratio[1])
    )
    aspect = log_ratio.exp()
    w = (area * aspect).sqrt().round()
    h = (area / aspect).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # the first try that fits, as the loop
    found = fits.any(dim=1, keepdim=True)
    w, h = w.gather(1, first), h.gather(1, first)
    # none fits: a centre crop at the nearest allowed aspect
    in_ratio = width / height
    low, high = min(ratio), max(ratio)
    fallback_w = torch.where(in_ratio > high, (height * high).round(), width)
    fallback_h = torch.where(in_ratio < low, (width / low).round(), height)
    w, h = torch.where(found, w, fallback_w), torch.where(found, h, fallback_h)
    top = torch.where(
        found,
        (torch.rand(n, 1, device=device) * (height - h + 1)).floor(),
        ((height - h) / 2).floor(),
    )
    left = torch.where(
        found,
        (torch.rand(n, 1, device=device) * (width - w + 1)).floor(),
        ((width - w) / 2).floor(),
    )
    return torch.cat([left, top, left + w, top + h], dim=1)


def center_boxes(sizes: Tensor, resize: int, crop: int) -> Tensor:
    """(N, 4) boxes: what "resize the short side to `resize`, centre-crop `crop`" keeps of each
    image, in its own pixels."""
    side = sizes.min(dim=1, keepdim=True).values * (crop / resize)
    height, width = sizes[:, :1], sizes[:, 1:]
    top, left = (height - side) / 2, (width - side) / 2
    return torch.cat([left, top, left + side, top + side], dim=1)


def crop_resize(images: list[Tensor], boxes: Tensor, size: int) -> Tensor:
    """Each image's box, resized to size x size: float (N, 3, size, size) in [0, 255]. Images
    are padded into one float batch (zeros outside each image, which its box never reaches) and
    cropped in one op; a batch over CROP_CHUNK_BYTES goes in chunks of similar sizes."""
    images, boxes = _shrink_outliers(images, boxes)
    height, width = max(i.shape[-2] for i in images), max(i.shape[-1] for i in images)
    if _padded_bytes(len(images), height, width) <= CROP_CHUNK_BYTES:
        return _crop_resize_padded(images, boxes, size)
    order = sorted(range(len(images)), key=lambda i: images[i].shape[-2:].numel())
    boxes = boxes.index_select(0, to_device_async(order, boxes.device))
    crops = [
        _crop_resize_padded([images[i] for i in order[start:end]], boxes[start:end], size)
        for start, end in _chunks([images[i] for i in order])
    ]
    restore = [0] * len(order)
    for position, i in enumerate(order):
        restore[i] = position
    return torch.cat(crops).index_select(0, to_device_async(restore, boxes.device))


def _padded_bytes(count: int, height: int, width: int) -> int:
    return count * 3 * height * width * 4  # float32


def _chunks(images: list[Tensor]) -> list[tuple[int, int]]:
    """[start, end) ranges of `images` (sorted by size) that fit CROP_CHUNK_BYTES padded."""
    ranges, start, height, width = [], 0, 0, 0
    for end, image in enumerate(images):
        h, w = image.shape[-2:]
        height, width = max(height, h), max(width, w)
        if end > start and _padded_bytes(end - start + 1, height, width) > CROP_CHUNK_BYTES:
            ranges.append((start, end))
            start, height, width = end, h, w
    return [*ranges, (start, len(images))]


def _crop_resize_padded(images: list[Tensor], boxes: Tensor, size: int) -> Tensor:
    height, width = max(i.shape[-2] for i in images), max(i.shape[-1] for i in images)
    batch = torch.zeros(len(images), 3, height, width, device=boxes.device)
    for i, image in enumerate(images):
        batch[i, :, : image.shape[-2], : image.shape[-1]] = image
    index = torch.arange(len(images), device=boxes.device, dtype=boxes.dtype).unsqueeze(1)
    rois = torch.cat([index, boxes], dim=1)
    # The compiled kernel, called directly: torchvision's Python wrapper swaps in a reference
    # implementation under deterministic mode on CUDA (compiled on first use, slow, memory
    # hungry) for the sake of the backward, which this never needs; the forward kernel computes
    # each output on its own, deterministic as it is.
    return torch.ops.torchvision.roi_align(batch, rois, 1.0, size, size, -1, True)


def _shrink_outliers(images: list[Tensor], boxes: Tensor) -> tuple[list[Tensor], Tensor]:
    long_sides = sorted(max(i.shape[-2:]) for i in images)
    limit = OUTLIER_FACTOR * long_sides[len(long_sides) // 2]
    shrunk, scales = [], []
    for image in images:
        factor = min(1.0, limit / max(image.shape[-2:]))
        if factor < 1.0:
            size = [max(1, round(s * factor)) for s in image.shape[-2:]]
            image = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True)
            image = image[0].round().clamp(0, 255).to(torch.uint8)
        shrunk.append(image)
        scales.append(factor)
    if all(s == 1.0 for s in scales):
        return images, boxes
    return shrunk, boxes * to_device_async(scales, boxes.device, boxes.dtype)[:, None]


def random_flip(images: Tensor) -> Tensor:
    flip = torch.rand(len(images), device=images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


@dataclass
class DeviceCrops:
    """The geometric part of a preset, done on the device after decoding: `scale` set, a
    RandomResizedCrop to `train_crop` plus flip; None, the eval transform for training too."""

    train_crop: int
    eval_resize: int
    eval_crop: int
    scale: tuple[float, float] | None = (0.08, 1.0)

    def train(self, images: list[Tensor]) -> Tensor:
        if self.scale is None:
            return self.eval(images)
        boxes = random_resized_boxes(sizes_of(images, images[0].device), self.scale)
        return random_flip(crop_resize(images, boxes, self.train_crop))

    def eval(self, images: list[Tensor]) -> Tensor:
        sizes = sizes_of(images, images[0].device)
        boxes = center_boxes(sizes, self.eval_resize, self.eval_crop)
        return crop_resize(images, boxes, self.eval_crop)
