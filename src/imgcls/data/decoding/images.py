"""Read any image file people really have into a uint8 RGB CHW tensor, or say why not.

JPEG and PNG go through torchvision.io (libjpeg-turbo / libpng straight into a tensor, EXIF
rotation applied, grayscale / CMYK / palette / alpha converted to RGB, 16-bit scaled to 8-bit).
A JPEG much larger than needed is decoded at reduced size by libjpeg's DCT scaling (PIL's
`draft`), which is several times faster than decoding it whole and resizing. Other formats go
through PIL. Anything that cannot be read raises BadImageError with the reason.

`shrunk_jpeg` writes the other way: any image file as a plain RGB JPEG within a size bound, as
`imgcls-prepare` stores photos (as files or in shards) to be decoded cheaply every epoch.
"""

import io
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import pil_to_tensor

TORCHVISION_FORMATS = {"JPEG", "PNG"}
# how each format's files begin: a file that begins so but whose header PIL cannot parse is a
# damaged image, not "not an image"
SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
# Lower-case suffixes PIL can read; anything else in a class folder is not an image.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


class BadImageError(Exception):
    """A file that is not a readable image (empty, truncated, not an image, too large)."""


class Header(NamedTuple):
    """What a file's header says, read without decoding its pixels."""

    format: str
    size: tuple[int, int]  # (width, height), as PIL gives it
    mode: str
    progressive: bool
    orientation: int | None  # EXIF orientation (1: as stored), for JPEGs


def parse_header(data: bytes) -> Header:
    """The header of an image file's bytes; BadImageError for anything that is not an image."""
    if not data:
        raise BadImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():  # PIL warns above its limit; the check below says more
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # parses the header only
                format_, size, mode = image.format, image.size, image.mode
                progressive = bool(image.info.get("progressive"))
                orientation = image.getexif().get(0x0112) if format_ == "JPEG" else None
    except Image.DecompressionBombError as err:  # PIL refuses twice its limit at open
        raise BadImageError(
            f"over PIL's decompression-bomb limit ({Image.MAX_IMAGE_PIXELS} pixels): {err}"
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        kind = next((f for sig, f in SIGNATURES.items() if data.startswith(sig)), None)
        if kind is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            kind = "WebP"
        if kind is not None:
            raise BadImageError(
                f"a damaged {kind} file: its header cannot be read (truncated or corrupt)"
            ) from err
        raise BadImageError("not an image file (no known image format)") from err
    if size[0] * size[1] > Image.MAX_IMAGE_PIXELS:
        raise BadImageError(
            f"{size[0]}x{size[1]} pixels is over PIL's decompression-bomb limit "
            f"({Image.MAX_IMAGE_PIXELS} pixels)"
        )
    return Header(format_, size, mode, progressive, orientation)


def _decode_torchvision(data: bytes) -> torch.Tensor:
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of torchcodec; they still work.
        warnings.simplefilter("ignore", DeprecationWarning)
        image = decode_image(
            torch.frombuffer(bytearray(data), dtype=torch.uint8),
            mode=ImageReadMode.RGB,
            apply_exif_orientation=True,
        )
    if image.dtype == torch.uint16:
        image = (image >> 8).to(torch.uint8)
    return image


def _decode_pil(data: bytes, draft_size: tuple[int, int] | None = None) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as image:
        if draft_size is not None:
            image.draft("RGB", draft_size)
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            image = image.point(lambda v: v / 256).convert("L")  # 16-bit grey to 8-bit
        if image.mode in ("P", "PA", "LA"):
            image = image.convert("RGBA")
        return pil_to_tensor(image.convert("RGB"))


def read_rgb(path: str | Path, min_side: int | None = None) -> torch.Tensor:
    """The image at `path` as uint8 (3, H, W); decoded smaller, but with H, W >= min_side, when
    the file is a JPEG at least twice that size."""
    data = Path(path).read_bytes()
    return decode_any(data, parse_header(data), min_side)


def decode_any(data: bytes, header: Header, min_side: int | None = None) -> torch.Tensor:
    """A file's bytes, whose header was parsed, as uint8 RGB (3, H, W); see `read_rgb`."""
    width, height = header.size
    try:
        if header.format == "JPEG" and min_side and min(width, height) >= 2 * min_side:
            scale = min_side / min(width, height)
            return _decode_pil(data, (round(width * scale), round(height * scale)))
        if header.format in TORCHVISION_FORMATS:
            try:
                return _decode_torchvision(data)
            except RuntimeError:
                pass  # a variant libjpeg/libpng reject but PIL reads: try PIL before giving up
        return _decode_pil(data)
    except (OSError, SyntaxError, ValueError, RuntimeError) as err:
        raise BadImageError(f"cannot decode ({err})") from err


# what reading or re-encoding a file that is no image raises
BAD_IMAGE_ERRORS = (BadImageError, OSError, ValueError, SyntaxError)


def target_size(width: int, height: int, short_side: int | None, long_side: int | None) -> tuple:
    """(width, height) after shrinking to the bound; unchanged when already within it."""
    scale = 1.0
    if short_side:
        scale = min(scale, short_side / min(width, height))
    if long_side:
        scale = min(scale, long_side / max(width, height))
    return (max(1, round(width * scale)), max(1, round(height * scale)))


def shrunk_jpeg(data: bytes, short_side: int | None, long_side: int | None, quality: int) -> bytes:
    """An image file's bytes as a plain RGB JPEG within the bound: the bytes themselves where
    they already are one. Raises BadImageError (or OSError, ValueError) for what is no image."""
    header = parse_header(data)  # raises for what is not an image
    size = target_size(*header.size, short_side, long_side)
    plain = header.format == "JPEG" and header.mode == "RGB" and not header.progressive
    if plain and header.orientation in (None, 1) and size == header.size:
        return data  # already as small and as plain as asked: copied, not re-encoded
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", size)  # decode JPEGs at a reduced scale where possible
        image = ImageOps.exif_transpose(image).convert("RGB")
        size = target_size(*image.size, short_side, long_side)
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return buffer.getvalue()
