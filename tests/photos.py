"""Realistic photos for tests and benchmarks: real JPEGs of drawn scenes, at the sizes phones produce.

Noise alone is not a photo (it neither compresses nor decodes like one), and a 64 px PNG is not what people
post. A scene here is drawn with PIL (sky and ground gradients, sun, mountains, buildings with windows,
foliage, a caption), then given a film grain whose strength is tuned so that the JPEG (quality 90) comes out
near the size asked for: 0.5 to 8 MB at up to 4000 × 3000. Odd shapes and formats (`ODD`) cover what breaks
decoders and resizers: portrait, panorama, PNG with alpha, progressive and CMYK JPEG, EXIF-rotated, a
16 × 40000 strip.

Generating a 12-megapixel photo costs about a second of CPU, so `Photos` keeps every file it made in a
directory: one per test run (`cached_photos`, behind the `photos` fixtures), a fixed temp directory
for benchmarks.
"""

from __future__ import annotations

import io
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

JPEG_QUALITY = 90
MB = 1_000_000
_SIZE_TOLERANCE = 0.15  # a photo lands within ±15 % of its target size

KINDS = ("jpeg", "progressive", "cmyk", "exif_rotated", "png_alpha", "png")


@dataclass(frozen=True)
class PhotoSpec:
    seed: int
    width: int
    height: int
    target_bytes: int | None = None  # wanted file size (±15 %); None: whatever the scene gives, no grain
    kind: str = "jpeg"  # one of KINDS

    @property
    def filename(self) -> str:
        ext = "png" if self.kind.startswith("png") else "jpg"
        return f"photo-{self.seed}-{self.width}x{self.height}-{self.kind}.{ext}"

    @property
    def content_type(self) -> str:
        return "image/png" if self.kind.startswith("png") else "image/jpeg"

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as a viewer shows it: an EXIF-rotated photo is stored on its side."""
        return (self.height, self.width) if self.kind == "exif_rotated" else (self.width, self.height)


# What breaks decoders and resizers, each a real photo of its kind.
ODD: dict[str, PhotoSpec] = {
    "portrait": PhotoSpec(101, 2250, 3000, 2 * MB),
    "panorama": PhotoSpec(102, 4000, 1000, 1 * MB),
    "png_alpha": PhotoSpec(103, 1200, 900, None, "png_alpha"),
    "progressive": PhotoSpec(104, 2048, 1536, 1 * MB, "progressive"),
    "cmyk": PhotoSpec(105, 1600, 1200, None, "cmyk"),
    "exif_rotated": PhotoSpec(106, 2048, 1536, 1 * MB, "exif_rotated"),  # shown as 1536 × 2048
    "strip": PhotoSpec(107, 16, 40_000, None, "png"),
}

# Sizes phones and chat apps produce: (width, height, typical JPEG bytes range at quality 90).
_SHAPES = [
    (1600, 1200, 0.5 * MB, 1.0 * MB),
    (2048, 1536, 0.7 * MB, 1.6 * MB),
    (3000, 2250, 1.5 * MB, 3.5 * MB),
    (4000, 3000, 2.5 * MB, 8.0 * MB),
    (3000, 4000, 2.5 * MB, 6.0 * MB),
]


def corpus(n: int, *, seed: int = 0, max_bytes: int | None = None, over_cap: int = 0) -> list[PhotoSpec]:
    """`n` ordinary photos (landscape and portrait, 0.5 to 8 MB), `over_cap` of them just over `max_bytes`."""
    rng = random.Random(seed)
    specs = []
    for i in range(n):
        if i < over_cap:
            if max_bytes is None:
                raise ValueError("over_cap needs max_bytes")
            target = int(max_bytes * rng.uniform(1.1, 1.4))
            side = math.sqrt(max(target, 1) / 0.3 / 12)  # ~0.3 bytes per pixel with a light grain
            w = max(64, min(4000, int(side * 4)))
            specs.append(PhotoSpec(seed * 100_000 + i, w, w * 3 // 4, target))
            continue
        w, h, lo, hi = rng.choice(_SHAPES)
        target = int(rng.uniform(lo, hi))
        if max_bytes is not None and target > max_bytes * 0.8:  # ordinary photos stay under the cap:
            target = int(max_bytes * rng.uniform(0.5, 0.8))  # smaller, as a chat app would resize them
            scale = math.sqrt(target / lo)
            w, h = max(64, int(w * scale)), max(48, int(h * scale))
        specs.append(PhotoSpec(seed * 100_000 + i, w, h, target))
    return specs


class Photos:
    """Makes photos from specs and keeps the files in `directory`, so each is generated once."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, spec: PhotoSpec) -> Path:
        path = self.directory / spec.filename
        if spec.target_bytes is not None:
            path = path.with_stem(f"{path.stem}-{spec.target_bytes}")
        if not path.exists():
            data = render(spec)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)  # atomic: a concurrent run never reads half a file
        return path

    def get(self, spec: PhotoSpec) -> bytes:
        return self.path(spec).read_bytes()

    def odd(self, name: str) -> bytes:
        return self.get(ODD[name])

    def attachment(self, spec: PhotoSpec) -> tuple[str, bytes, str]:
        """(filename, data, content type), as `FakeDiscord.post_message(attachments=...)` takes it."""
        return spec.filename, self.get(spec), spec.content_type


def cached_photos(tmp_path_factory: pytest.TempPathFactory) -> Photos:
    """Photos kept for the whole test run, in one directory whichever fixture asks for them."""
    return Photos(tmp_path_factory.getbasetemp() / "photos")


def variant(data: bytes, n: int) -> bytes:
    """The same JPEG with a comment segment saying `n`: other bytes (another content hash), same pixels.

    For benchmarks that need thousands of distinct files without paying to draw and encode each.
    """
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    text = f"variant {n}".encode()
    return data[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + data[2:]


# -- drawing -------------------------------------------------------------------------------------------


def render(spec: PhotoSpec) -> bytes:
    """The file for `spec`: a drawn scene, grained to reach the target size, encoded as its kind."""
    base = scene(spec.width, spec.height, spec.seed)
    if spec.target_bytes is None:
        return encode(base, spec.kind)
    # File size grows steadily with grain strength: search it on a log scale, a few encodes at most.
    lo, hi = 0.0, 80.0
    best = encode(base, spec.kind)
    if _close(len(best), spec.target_bytes) or len(best) > spec.target_bytes:
        return best
    sigma = 6.0
    for _ in range(6):
        data = encode(grain(base, sigma, spec.seed), spec.kind)
        if abs(len(data) - spec.target_bytes) < abs(len(best) - spec.target_bytes):
            best = data
        if _close(len(data), spec.target_bytes):
            break
        if len(data) < spec.target_bytes:
            lo = sigma
        else:
            hi = sigma
        sigma = (lo + hi) / 2 if hi < 80.0 else sigma * 2
    return best


def _close(size: int, target: int) -> bool:
    return abs(size - target) <= target * _SIZE_TOLERANCE


def encode(image: Image.Image, kind: str) -> bytes:
    buf = io.BytesIO()
    if kind == "png_alpha":
        rgba = image.convert("RGBA")
        w, h = image.size
        mask = Image.new("L", image.size, 0)
        ImageDraw.Draw(mask).ellipse((w * 0.05, h * 0.05, w * 0.95, h * 0.95), fill=255)
        rgba.putalpha(mask.filter(ImageFilter.GaussianBlur(max(1, w // 60))))  # a soft-edged cut-out
        rgba.save(buf, "PNG")
    elif kind == "png":
        image.save(buf, "PNG")
    elif kind == "cmyk":
        image.convert("CMYK").save(buf, "JPEG", quality=JPEG_QUALITY)
    elif kind == "progressive":
        image.save(buf, "JPEG", quality=JPEG_QUALITY, progressive=True, optimize=True)
    elif kind == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
        image.save(buf, "JPEG", quality=JPEG_QUALITY, exif=exif)
    elif kind == "jpeg":
        image.save(buf, "JPEG", quality=JPEG_QUALITY)
    else:
        raise ValueError(f"unknown photo kind {kind!r}")
    return buf.getvalue()


def grain(image: Image.Image, sigma: float, seed: int) -> Image.Image:
    """Film grain: luminance noise at full resolution plus softer colour noise, like a phone sensor."""
    rng = np.random.default_rng(seed)
    w, h = image.size
    pixels = np.asarray(image, dtype=np.float32)  # (H, W, 3)
    luma = rng.standard_normal((h, w, 1), dtype=np.float32) * sigma
    chroma_small = rng.standard_normal((max(1, h // 4), max(1, w // 4), 3), dtype=np.float32)
    chroma = np.asarray(
        Image.fromarray(((chroma_small * 40) + 128).clip(0, 255).astype(np.uint8)).resize((w, h)),
        dtype=np.float32,
    )
    pixels += luma
    pixels += (chroma - 128) * (sigma / 80)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    return (int(a[0] + (b[0] - a[0]) * t), int(a[1] + (b[1] - a[1]) * t), int(a[2] + (b[2] - a[2]) * t))


def _gradient(w: int, h: int, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    column = Image.new("RGB", (1, 256))
    column.putdata([_mix(top, bottom, i / 255) for i in range(256)])
    return column.resize((w, h), Image.Resampling.BILINEAR)


def scene(width: int, height: int, seed: int) -> Image.Image:
    """A landscape: sky, sun, mountains, a town with lit windows, trees, a caption. Deterministic in seed."""
    rng = random.Random(seed)
    w, h = width, height
    unit = max(1, min(w, h) // 100)  # shapes scale with the picture
    horizon = int(h * rng.uniform(0.45, 0.65))
    sky_top = (rng.randint(10, 80), rng.randint(60, 140), rng.randint(150, 255))
    sky_low = (rng.randint(200, 255), rng.randint(150, 230), rng.randint(120, 200))
    image = _gradient(w, h, sky_top, sky_low)
    ground_top = (rng.randint(40, 90), rng.randint(90, 150), 40)
    draw = ImageDraw.Draw(image)

    sun_x, sun_y, sun_r = (
        rng.uniform(0.1, 0.9) * w,
        horizon * rng.uniform(0.2, 0.7),
        unit * rng.randint(5, 10),
    )
    for k in range(6, 0, -1):  # a halo of fading rings
        r = sun_r * (1 + k * 0.35)
        draw.ellipse((sun_x - r, sun_y - r, sun_x + r, sun_y + r), fill=_mix(sky_low, (255, 240, 200), 1 / k))
    draw.ellipse((sun_x - sun_r, sun_y - sun_r, sun_x + sun_r, sun_y + sun_r), fill=(255, 250, 225))
    image.paste(_gradient(w, h - horizon, ground_top, (20, 50, 15)), (0, horizon))  # the sun sets behind it

    for layer in range(3):  # mountain ranges, paler when farther away
        shade = _mix((70, 80, 110), sky_low, 0.5 - layer * 0.2)
        points: list[tuple[float, float]] = [(0, horizon)]
        x = 0.0
        while x < w:
            x += rng.uniform(0.03, 0.12) * w
            points.append((x, horizon - rng.uniform(0.05, 0.3) * h * (1 - layer * 0.25)))
        points.append((w, horizon))
        draw.polygon(points, fill=shade)

    x = rng.uniform(0, 0.3) * w
    while x < w * rng.uniform(0.6, 1.0):  # a town: buildings with rows of windows
        bw, bh = rng.randint(4, 12) * unit, rng.randint(6, 30) * unit
        wall = (rng.randint(90, 200), rng.randint(80, 180), rng.randint(70, 160))
        draw.rectangle((x, horizon - bh, x + bw, horizon + unit), fill=wall, outline=(30, 30, 30))
        for wy in range(int(horizon - bh + unit), int(horizon - unit), 2 * unit):
            for wx in range(int(x + unit), int(x + bw - unit), 2 * unit):
                lit = (250, 220, 120) if rng.random() < 0.4 else (40, 50, 70)
                draw.rectangle((wx, wy, wx + unit, wy + unit), fill=lit)
        x += bw + rng.randint(0, 4) * unit

    for _ in range(int(w * (h - horizon) / (unit * unit * 60)) + 5):  # trees and bushes, nearer ones larger
        ty = rng.uniform(horizon, h)
        depth = (ty - horizon) / max(1, h - horizon)
        r = unit * (1 + depth * rng.uniform(2, 6))
        tx = rng.uniform(0, w)
        green = (rng.randint(10, 60), rng.randint(70, 160), rng.randint(10, 60))
        draw.rectangle((tx - r / 6, ty, tx + r / 6, ty + r * 1.2), fill=(70, 45, 25))
        draw.ellipse(
            (tx - r, ty - r * 1.5, tx + r, ty + r * 0.3), fill=green, outline=_mix(green, (0, 0, 0), 0.4)
        )

    font = ImageFont.load_default(size=max(10, unit * 4))
    caption = f"Iris test photo {seed} - {w} x {h}"
    draw.text((unit * 3 + 2, h - unit * 8 + 2), caption, fill=(0, 0, 0), font=font)
    draw.text((unit * 3, h - unit * 8), caption, fill=(255, 255, 255), font=font)
    return image.filter(ImageFilter.SMOOTH) if min(w, h) > 64 else image
