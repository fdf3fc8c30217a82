"""Decoding photos on the training device (`data.decode=device`), as DALI and FFCV feed a GPU.

A CPU core decodes about 200 ImageNet photos a second; a GPU's nvjpeg decodes thousands. Here the
loader workers only read each file and parse its header; a plain JPEG travels to the device
as its bytes, and the device decodes the whole batch in one call (`torchvision.io.decode_jpeg` on
a list, nvjpeg on CUDA; the same call runs on a CPU). What nvjpeg may not read, or reads without
EXIF rotation (PNG and other formats, CMYK, progressive JPEGs, rotated photos), is decoded in the
worker as before and travels as pixels. A file that turns out undecodable is left out of its
batch and listed in bad_images.txt, never a crash.

Then the crop: torchvision's RandomResizedCrop boxes, drawn per image from the same distribution
(10 tries of area fraction and log-uniform aspect, then a centre crop), and evaluation's "resize
the short side, centre-crop" as a box too, are cut out and resized for the whole batch in one
`roi_align` (an average of bilinear samples per output pixel, adaptive in number: an
antialiased downscale), then flipped per image.

On CUDA, torchvision's batched decoder runs on a stream of its own and writes into memory
allocated on the caller's stream without waiting for it (torchvision PR 9606: decoded images
overwrite blocks that queued kernels still read). So the decode runs with a side stream current:
its outputs come from that stream's memory pool, which the training stream's freed blocks never
enter; the training stream then waits for the side stream, and the outputs are recorded as used
by the training stream, so their blocks are not handed out again before its work is done. The
decoder itself waits for its own stream (the host is held for the decode, never for training).
"""

import ctypes
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torch.utils import deterministic
from torch.utils.data import default_collate
from torchvision.io import ImageReadMode, decode_jpeg

from imgcls.data.decode import BadImageError, decode_any, parse_header
from imgcls.data.files import PATH_TEXT, shown
from imgcls.data.policies import workers_only
from imgcls.data.transforms import NO_DEVICE_CROP, PRESETS
from imgcls.utils.errors import UserError
from imgcls.utils.logging import get_logger
from imgcls.utils.machine import to_device_async

log = get_logger(__name__)
DECODE_PLACES = ("cpu", "device", "auto")
# An image whose long side is over this many times the batch's median is shrunk alone before
# the batch is assembled, so one huge photo does not make the whole padded batch huge.
OUTLIER_FACTOR = 2.0
# The float32 padded images one roi_align call reads, at most (larger batches go in chunks of
# similar sizes): 256 photos padded to 1000 px would take 3 GB, too much beside a net's
# activations on a 16-24 GB GPU.
CROP_CHUNK_BYTES = 256 * 2**20
# nvjpeg's C API, for asking whether a GPU has the hardware JPEG decoder (nvjpeg.h)
NVJPEG_BACKEND_HARDWARE = 3
NVJPEG_STATUS_SUCCESS = 0
NVJPEG_STATUS_ARCH_MISMATCH = 7


class EncodedJPEG(NamedTuple):
    """A JPEG's file bytes (uint8, on the host), for the device to decode."""

    data: Tensor
    path: str


def read_for_device(path: str | Path, min_side: int | None = None) -> Tensor | EncodedJPEG:
    """A loader worker's share: the bytes of a plain JPEG, or the decoded pixels of anything
    else (as `read_rgb` gives them). Raises BadImageError for what is not an image."""
    return for_device(Path(path).read_bytes(), str(path), min_side)


def for_device(data: bytes, name: str, min_side: int | None = None) -> Tensor | EncodedJPEG:
    """An image's bytes as `read_for_device` gives them (`name` says where they came from)."""
    header = parse_header(data)
    plain_jpeg = header.format == "JPEG" and header.mode in ("RGB", "L")
    if plain_jpeg and not header.progressive and header.orientation in (None, 1):
        return EncodedJPEG(torch.frombuffer(bytearray(data), dtype=torch.uint8), name)
    return decode_any(data, header, min_side)


class EncodedBatch(NamedTuple):
    """A batch as the workers send it: per image, JPEG bytes or decoded uint8 pixels."""

    items: list[Tensor | EncodedJPEG]

    def __len__(self) -> int:
        return len(self.items)


def collate_encoded(samples: Sequence[tuple[Tensor | EncodedJPEG, int | Tensor]]) -> tuple:
    items, labels = zip(*samples, strict=True)
    return EncodedBatch(list(items)), default_collate(list(labels))  # indices or multi-hot rows


def decode_batch(
    batch: EncodedBatch, device: torch.device, bad_images_file: Path | None = None
) -> tuple[list[Tensor], list[int]]:
    """uint8 (3, H, W) images on `device`, and the positions that decoded; the rest are listed
    as bad."""
    jpegs = [i for i, item in enumerate(batch.items) if isinstance(item, EncodedJPEG)]
    images: list[Tensor | None] = [
        None if isinstance(item, EncodedJPEG) else item.to(device, non_blocking=True)
        for item in batch.items
    ]
    data = [batch.items[i].data for i in jpegs]
    try:
        decoded = decode_jpegs(data, device) if data else []
    except RuntimeError:  # one bad file fails the call: decode one by one to find it
        decoded = [_decode_one(batch.items[i], device, bad_images_file) for i in jpegs]
    for i, image in zip(jpegs, decoded, strict=True):
        images[i] = image
    kept = [i for i, image in enumerate(images) if image is not None]
    return [images[i] for i in kept], kept


def decode_jpegs(data: list[Tensor], device: torch.device) -> list[Tensor]:
    """torchvision's decode_jpeg of a list of JPEG files' bytes, as RGB on `device`; on CUDA
    ordered against the training stream (the module's docstring says why)."""
    if device.type != "cuda":
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    main = torch.cuda.current_stream(device)
    side = _decode_stream(device)
    # Under deterministic mode torch fills every new allocation, with a kernel queued on the
    # current stream that nvjpeg's writes do not wait for: the decoded images could be painted
    # over. The decoder writes every byte of its outputs, so they need no fill.
    fill = deterministic.fill_uninitialized_memory
    deterministic.fill_uninitialized_memory = False
    try:
        with torch.cuda.stream(side):
            images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    finally:
        deterministic.fill_uninitialized_memory = fill
    main.wait_stream(side)
    for image in images:
        image.record_stream(main)
    return images


@functools.cache
def _decode_stream(device: torch.device) -> torch.cuda.Stream:
    """A stream from torch's high-priority pool, which other users (NCCL's among them) do not
    draw from by default: its memory pool holds decoded images alone."""
    return torch.cuda.Stream(device, priority=-1)


class DecodePlaceChoice:
    """For a data module whose photos are read encoded each epoch (files, shards): `data.decode`
    checked when it is made, and whether the device it trains on decodes them. Mixed into an
    ImageDataModule (its in_memory, device, pipeline and augment)."""

    def choose_decode_place(self, decode: str) -> None:
        if decode not in DECODE_PLACES:
            raise UserError(f"data.decode={decode!r} is not one of {', '.join(DECODE_PLACES)}.")
        self.decode = decode
        # (device, where decode, auto included, came to on it)
        self._decode_place: tuple[torch.device, str] | None = None

    def decodes_on_device(self) -> bool:
        """data.decode=device, or auto on a GPU with a hardware JPEG decoder, for images read
        encoded each epoch."""
        if self.in_memory or self.decode == "cpu":
            return False
        device = self.device
        if self._decode_place is None or self._decode_place[0] != device:
            place = choose_decode(self.decode, device)
            if place == "device" and self.decode == "auto" and not self._device_can_augment():
                log.info(
                    f"data.decode=auto: photos are decoded in the loader workers (data.augment="
                    f"{self.augment} with data.auto_augment={self.pipeline.policy} runs there)"
                )
                place = "cpu"
            self._decode_place = (device, place)
        on_device = self._decode_place[1] == "device"
        if on_device and self.pipeline.device_crop is NO_DEVICE_CROP:
            able = [
                name for name, make in PRESETS.items() if make().device_crop is not NO_DEVICE_CROP
            ]
            raise UserError(
                f"data.decode=device crops on the device, which data.augment={self.augment} does "
                f"not: use one of {', '.join(able)}, or data.decode=cpu."
            )
        if on_device and self.pipeline.policy and self.pipeline.device_policy is None:
            raise workers_only(self.pipeline.policy)
        return on_device

    def _device_can_augment(self) -> bool:
        """Whether the device can do the workers' part: the preset's crop and the policy."""
        pipeline = self.pipeline
        no_policy = pipeline.policy is None or pipeline.device_policy is not None
        return pipeline.device_crop is not NO_DEVICE_CROP and no_policy


def choose_decode(decode: str, device: torch.device) -> str:
    """Where photos are decoded: "cpu" (the loader workers) or "device". `auto` picks the
    device only on a GPU with nvjpeg's hardware JPEG decoder (A100, H100 and their kin): elsewhere
    torchvision decodes on the GPU one image at a time from the main process, slower than the
    workers."""
    if decode != "auto":
        return decode
    if device.type != "cuda":
        log.info(
            f"data.decode=auto: photos are decoded in the loader workers (training on {device})"
        )
        return "cpu"
    hardware = hardware_jpeg_decoder(device)
    chosen = "device" if hardware else "cpu"
    reason = {
        True: "it has nvjpeg's hardware JPEG decoder",
        False: "it has no hardware JPEG decoder",
        None: "nvjpeg could not be asked whether it has a hardware JPEG decoder",
    }[hardware]
    where = f"on {device}" if chosen == "device" else "in the loader workers"
    name = torch.cuda.get_device_name(device)
    log.info(f"data.decode=auto: photos are decoded {where} ({name}: {reason})")
    return chosen


@functools.cache
def hardware_jpeg_decoder(device: torch.device) -> bool | None:
    """Whether nvjpeg's hardware backend serves `device` (None: it cannot be told), asked as
    torchvision's decoder asks it: nvjpegCreateEx with the hardware backend, which fails with
    NVJPEG_STATUS_ARCH_MISMATCH on a GPU without the engine."""
    library = _nvjpeg_library()
    if library is None:
        return None
    handle = ctypes.c_void_p()
    with torch.cuda.device(device):
        torch.cuda.init()
        status = library.nvjpegCreateEx(
            NVJPEG_BACKEND_HARDWARE, None, None, 0, ctypes.byref(handle)
        )
    if status == NVJPEG_STATUS_SUCCESS:
        library.nvjpegDestroy(handle)
        return True
    return False if status == NVJPEG_STATUS_ARCH_MISMATCH else None


def _nvjpeg_library() -> ctypes.CDLL | None:
    """The nvjpeg that torchvision's wheel carries, else the CUDA toolkit's."""
    site = Path(torchvision.__file__).parent.parent
    candidates = [
        *sorted((site / "torchvision.libs").glob("libnvjpeg*.so*")),
        *sorted(site.glob("nvidia/*/lib/libnvjpeg.so*")),
        *sorted(site.glob("nvidia/nvjpeg/lib/libnvjpeg.so*")),
        "libnvjpeg.so",
    ]
    for candidate in candidates:
        try:
            return ctypes.CDLL(str(candidate))
        except OSError:
            continue
    return None


def _decode_one(item: EncodedJPEG, device: torch.device, listing: Path | None) -> Tensor | None:
    try:
        return decode_jpegs([item.data], device)[0]
    except RuntimeError:
        pass
    try:  # a variant the device's decoder rejects but PIL reads
        data = item.data.numpy().tobytes()
        return to_device_async(decode_any(data, parse_header(data)), device)
    except (BadImageError, OSError) as err:
        log.warning(f"Skipping bad image {shown(item.path)}: {err}")
        if listing is not None:
            listing.parent.mkdir(parents=True, exist_ok=True)
            with open(listing, "a", **PATH_TEXT) as f:
                f.write(f"{item.path}\t{err}\n")
        return None


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
