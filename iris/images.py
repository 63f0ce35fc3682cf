"""Safe decoding of untrusted images: files from the command line, attachments and downloads from Discord.

Every failure a person can cause (a missing or empty file, a web page saved as .png, a truncated download,
a decompression bomb) becomes a `BadImage` with a short message naming the file; nothing else escapes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import stat
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from iris.errors import BadImage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageLimits:
    """What an untrusted image may cost before it is decoded.

    Pillow's own MAX_IMAGE_PIXELS (about 89 million) still applies: max_pixels above it has no effect.
    """

    max_bytes: int = 25 * 2**20  # largest encoded file or download, in bytes
    max_pixels: int = 40_000_000  # largest width × height, in pixels, checked on the header before decoding


DEFAULT_LIMITS = ImageLimits()

# File endings Iris treats as images (folders to index, attachments without a content type): one list.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")

# Our format name -> Pillow's. Pillow is only ever asked to open the format the magic bytes name, so a
# file cannot reach one of its rarer, less hardened plugins by accident.
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}

# "BM" alone is too weak a signature: a BMP's info header starts with its size, one of these (core ... V5).
_BMP_INFO_SIZES = {struct.pack("<I", n) for n in (12, 40, 52, 56, 64, 108, 124)}

# What Pillow raises on damaged data. Anything else while decoding is logged with its traceback (it may be
# a bug of ours) but still reaches the person as a BadImage.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, struct.error, zlib.error)


def sniff(data: bytes) -> str | None:
    """The format `data`'s magic bytes name: "png", "jpeg", "gif", "webp", "bmp", "tiff", or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(b"BM") and data[14:18] in _BMP_INFO_SIZES:
        return "bmp"
    if data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):  # classic TIFF, then BigTIFF
        return "tiff"
    return None


def image_sha256(data: bytes) -> str:
    """Hex SHA-256 of an image's encoded bytes: the content key of the search index."""
    return hashlib.sha256(data).hexdigest()


def read_image_bytes(
    path: str | os.PathLike[str], limits: ImageLimits = DEFAULT_LIMITS, name: str | None = None
) -> bytes:
    """A file's bytes, refusing a missing, unreadable, empty or oversized one with BadImage.

    `name` is how messages call the file; it defaults to the path.
    """
    who = image_name(name if name is not None else os.fspath(path))
    try:
        # Non-blocking: opening a FIFO for reading would otherwise wait for a writer, forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise BadImage(f"{who} is a folder, not an image.")
            if not stat.S_ISREG(st.st_mode):  # a FIFO, /dev/zero, a socket...: no end, or no size
                raise BadImage(f"{who} is not a regular file (a pipe or a device?), not an image.")
            size = st.st_size
            # Read one byte past the limit: the file may have grown since fstat.
            data = b"" if size > limits.max_bytes else f.read(limits.max_bytes + 1)
    except FileNotFoundError:
        raise BadImage(f"{who}: no such file.") from None
    except IsADirectoryError:  # io.open refuses a folder's descriptor before fstat sees it
        raise BadImage(f"{who} is a folder, not an image.") from None
    except OSError as e:
        raise BadImage(f"{who} could not be read: {e.strerror or e}.") from None
    check_size(max(size, len(data)), limits, who)
    return data


def load_image(
    source: bytes | str | os.PathLike[str],
    limits: ImageLimits = DEFAULT_LIMITS,
    name: str | None = None,
    fit: int | None = None,
) -> Image.Image:
    """Decode an untrusted image into a fully loaded RGB image, or raise BadImage saying why not.

    `source` is the encoded bytes or a path; `name` (a file or attachment name) is how messages call it,
    by default the path. Animated images give their first frame; EXIF orientation is applied; transparency
    is composited over white.

    `fit` (pixels) asks for a small image, as CLIP sees it: the shorter side is reduced to `fit` (JPEGs are
    decoded at 1/2, 1/4 or 1/8 scale already, so a 12-megapixel photo never exists at full size) and the
    longer side is centre-cropped to at most MAX_ASPECT times the shorter one, so a 16 × 2,500,000 strip
    cannot grow into gigabytes when a model scales its short side up. CLIP centre-crops a square anyway.
    """
    if isinstance(source, bytes):
        data, who = source, image_name(name)
        check_size(len(data), limits, who)
    else:
        data = read_image_bytes(source, limits, name)
        who = image_name(name if name is not None else os.fspath(source))

    fmt = sniff(data)
    if fmt is None:
        hint = " (it looks like a web page)" if data.lstrip()[:1] == b"<" else ""
        raise BadImage(f"{who} is not a PNG, JPEG, GIF, WebP, BMP or TIFF image{hint}.")

    # Our pixel limit, and Pillow's own (MAX_IMAGE_PIXELS: it warns past it and refuses past twice that),
    # are checked on the header, before a single pixel is decoded, so Pillow never has a bomb to warn about.
    # No warnings.catch_warnings here: it swaps process-wide state and is not thread-safe (decodes run on
    # several threads), so a plugin's complaint about a damaged file takes Python's usual warning path.
    size = _header_size(data, fmt)
    if size is None:
        raise BadImage(f"{who} is damaged or incomplete and could not be read.")
    _check_pixels(size, min(limits.max_pixels, Image.MAX_IMAGE_PIXELS or limits.max_pixels), who)
    try:
        with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]]) as im:
            if fit is not None and fmt == "jpeg":
                im.draft("RGB", _draft_size(im.size, fit))  # DCT scaling: decodes fewer pixels
            im.load()  # the first frame only: an animation's later frames are never decoded
            if fit is None:
                return _to_rgb(ImageOps.exif_transpose(im))
            return _fit(ImageOps.exif_transpose(im), fit)
    except Image.DecompressionBombError:  # a header that changed its mind between two reads
        raise BadImage(f"{who} is too large: over {limits.max_pixels:,} pixels.") from None
    except _DECODE_ERRORS as e:
        log.debug("cannot decode %s (%s): %r", who, fmt, e)
        raise BadImage(f"{who} is damaged or incomplete and could not be read.") from None
    except Exception:
        log.warning("unexpected error decoding %s (%s)", who, fmt, exc_info=True)
        raise BadImage(f"{who} could not be read as an image.") from None


MAX_ASPECT = 4  # with `fit`: the longer side is centre-cropped to at most this many times the shorter


def _draft_size(size: tuple[int, int], fit: int) -> tuple[int, int]:
    """The smallest size whose shorter side is still `fit` (draft picks a DCT scale at least this big)."""
    width, height = size
    scale = min(1.0, fit / max(1, min(width, height)))
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def _fit(im: Image.Image, fit: int) -> Image.Image:
    """Crop to MAX_ASPECT, then reduce so the shorter side is `fit` (a smaller image is kept as is)."""
    width, height = im.size
    short = min(width, height)
    if max(width, height) > MAX_ASPECT * short:  # crop before converting: fewer pixels to copy
        if width > height:
            left = (width - MAX_ASPECT * short) // 2
            im = im.crop((left, 0, left + MAX_ASPECT * short, height))
        else:
            top = (height - MAX_ASPECT * short) // 2
            im = im.crop((0, top, width, top + MAX_ASPECT * short))
    im = _to_rgb(im)
    factor = min(im.size) // fit
    if factor >= 2:  # a cheap box reduction by a whole factor first, then one exact resize
        im = im.reduce(factor)
    if min(im.size) > fit:
        scale = fit / min(im.size)
        im = im.resize(
            (max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BICUBIC
        )
    return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any decoded mode -> RGB; transparency is composited over white, 16-bit grey is scaled, not clipped."""
    if im.mode.startswith("I"):  # "I;16", "I;16B", "I": 16-bit grey, which Image.convert would clip at 255
        grey = np.asarray(im)  # (H, W) uint16, or int32 for "I"
        if grey.dtype != np.uint16:
            grey = grey.clip(0, 65535)
        return Image.fromarray((grey >> 8).astype(np.uint8)).convert("RGB")  # (H, W) in [0, 255]
    if im.has_transparency_data:  # an alpha channel, an alpha palette, or a transparent colour key
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        white.alpha_composite(im.convert("RGBA"))
        return white.convert("RGB")
    if im.mode == "F":  # float grey, taken as 0..255
        im = im.convert("L")
    return im if im.mode == "RGB" else im.convert("RGB")  # "1", "L", "P", "CMYK", "YCbCr", ...


def _header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Width and height from the header alone, by Pillow's plugin but without Pillow's bomb check;
    None when the header cannot be read."""
    Image.init()  # registers every plugin once (TIFF and WebP are not in Pillow's first batch)
    try:
        factory, _accept = Image.OPEN[_PIL_FORMATS[fmt]]
        size: tuple[int, int] = factory(io.BytesIO(data), "").size
    except Exception as e:
        log.debug("cannot read the header of a %s image: %r", fmt, e)
        return None
    return size


def check_size(size: int, limits: ImageLimits, who: str) -> None:
    """The one size check of an image file, download or attachment (`who`: as `image_name` names it)."""
    if size == 0:
        raise BadImage(f"{who} is empty.")
    if size > limits.max_bytes:
        raise BadImage(
            f"{who} is too large: {human_bytes(size)} (the limit is {human_bytes(limits.max_bytes)})."
        )


def _check_pixels(size: tuple[int, int], limit: int, who: str) -> None:
    width, height = size
    if width * height > limit:
        raise BadImage(f"{who} is too large: {width}×{height} pixels (the limit is {limit:,} pixels).")


def image_name(name: str | None) -> str:
    """How messages name an image: its name, quoted and shortened, or 'The image'."""
    if not name:
        return "The image"
    if len(name) > 80:
        name = "…" + name[-79:]
    return f"'{name}'"


def looks_like_image(filename: str | None, content_type: str | None) -> bool:
    """The one rule for "this attachment is meant as an image" (before its bytes are read): an image/*
    content type, or a known image file ending (Discord leaves the type out for some uploads). Decoding
    decides the rest: a .png that is a web page is still refused by `load_image`."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    return ctype.startswith("image/") or (filename or "").lower().endswith(IMAGE_SUFFIXES)


def human_bytes(n: int) -> str:
    """A byte count for people: 512 bytes, 391 KiB, 25.0 MiB."""
    if n < 2**10:
        return f"{n} bytes"
    if n < 2**20:
        return f"{n / 2**10:.0f} KiB"
    return f"{n / 2**20:.1f} MiB"


__all__ = [
    "DEFAULT_LIMITS",
    "IMAGE_SUFFIXES",
    "MAX_ASPECT",
    "ImageLimits",
    "check_size",
    "human_bytes",
    "image_name",
    "image_sha256",
    "load_image",
    "looks_like_image",
    "read_image_bytes",
    "sniff",
]
