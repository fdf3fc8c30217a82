"""Decoding photos on the training device (`data.decode=device`), as DALI and FFCV feed a GPU.

A CPU core decodes about 200 ImageNet photos a second; a GPU's nvjpeg decodes thousands. Here the
loader workers only read each file and parse its header; a plain JPEG travels to the device
as its bytes, and the device decodes the whole batch in one call (`torchvision.io.decode_jpeg` on
a list, nvjpeg on CUDA; the same call runs on a CPU). What nvjpeg may not read, or reads without
EXIF rotation (PNG and other formats, CMYK, progressive JPEGs, rotated photos), is decoded in the
worker as before and travels as pixels. A file that turns out undecodable is left out of its
batch and listed in bad_images.txt, never a crash.

The crop of the decoded batch is the augmentation's (data/augmentation/crops.py); which
sources decode here is theirs (data/sources/decode_place.py).

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
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torchvision
from torch import Tensor
from torch.utils import deterministic
from torch.utils.data import default_collate
from torchvision.io import ImageReadMode, decode_jpeg

from imgcls.data.decoding.images import BadImageError, decode_any, parse_header
from imgcls.utils.logging import get_logger
from imgcls.utils.machine import to_device_async
from imgcls.utils.paths import PATH_TEXT, shown

log = get_logger(__name__)
DECODE_PLACES = ("cpu", "device", "auto")
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
