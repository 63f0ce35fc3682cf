"""The toy world: coloured shapes on neutral backgrounds, with captions like "a red circle".

It is how Iris proves its models offline: the toy CLIP and toy VQGAN are trained on it, and the tests
generate fresh held-out images from it. Everything is seeded, so a seed always draws the same world.
"""

from __future__ import annotations

import colorsys
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Hue centre (0..1) and a typical RGB for each colour word the toy world knows.
COLOURS: dict[str, float] = {"red": 0.0, "yellow": 0.145, "green": 0.36, "blue": 0.63}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)  # "red circle", ...
IMAGE_SIZE = 64  # px, side of every toy image
_SUPERSAMPLE = 4  # draw at 4x and downscale for anti-aliased edges


@dataclass(frozen=True)
class ToySample:
    image: Image.Image
    colour: str
    shape: str

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape}"


def _shape_rgb(rng: random.Random, colour: str) -> tuple[int, int, int]:
    # Colour jitter that keeps the hue recognisable: hue ±0.025, saturation and value high.
    hue = (COLOURS[colour] + rng.uniform(-0.025, 0.025)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _background(rng: random.Random, size: int) -> np.ndarray:
    """A neutral (low-saturation) background: flat or a gentle gradient, with mild noise. (H, W, 3) float."""

    def neutral() -> np.ndarray:
        r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.15), rng.uniform(0.08, 0.92))
        return np.array([r, g, b], dtype=np.float32)

    a, b = neutral(), neutral() if rng.random() < 0.5 else None
    if b is None:
        bg = np.broadcast_to(a, (size, size, 3)).copy()
    else:
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
        t = xs * math.cos(angle) + ys * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        bg = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
    return bg


def make_image(colour: str, shape: str, seed: int, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw one toy image: a `colour` `shape` of random size, position and tilt on a neutral background."""
    if colour not in COLOURS or shape not in SHAPES:
        raise ValueError(f"unknown toy class {colour!r} {shape!r}")
    rng = random.Random(seed)
    big = size * _SUPERSAMPLE
    bg = _background(rng, big)
    noise_rng = np.random.default_rng(seed)
    canvas = Image.fromarray((np.clip(bg, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    radius = rng.uniform(0.2, 0.42) * big  # half the shape's extent
    cx = rng.uniform(radius, big - radius)
    cy = rng.uniform(radius, big - radius)
    fill = _shape_rgb(rng, colour)
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    else:
        corners = 4 if shape == "square" else 3
        tilt = rng.uniform(-0.35, 0.35) + (math.pi / 4 if corners == 4 else -math.pi / 2)
        r = radius * (1.0 if corners == 4 else 1.1)
        if corners == 4:
            r = radius * math.sqrt(2)  # a square whose inscribed circle has `radius`
        pts = [
            (
                cx + r * math.cos(tilt + 2 * math.pi * k / corners),
                cy + r * math.sin(tilt + 2 * math.pi * k / corners),
            )
            for k in range(corners)
        ]
        pts = [(min(max(x, 0), big - 1), min(max(y, 0), big - 1)) for x, y in pts]
        draw.polygon(pts, fill=fill)
    small = np.asarray(canvas.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    small = small + noise_rng.normal(0.0, 0.015, small.shape).astype(np.float32)
    return Image.fromarray((np.clip(small, 0, 1) * 255 + 0.5).astype(np.uint8))


def sample(seed: int, size: int = IMAGE_SIZE) -> ToySample:
    """One random toy sample; the class is drawn from the seed too."""
    rng = random.Random(seed * 7919 + 17)
    colour = rng.choice(list(COLOURS))
    shape = rng.choice(SHAPES)
    return ToySample(make_image(colour, shape, seed, size), colour, shape)


def samples(n: int, seed: int, size: int = IMAGE_SIZE) -> Iterator[ToySample]:
    """`n` samples from seeds seed*1_000_003 + i (ranges of different seeds do not overlap in practice)."""
    for i in range(n):
        yield sample(seed * 1_000_003 + i, size)


def dominant_colour(image: Image.Image, min_fraction: float = 0.03) -> str | None:
    """The toy colour word that most saturated pixels are closest to, by hue; None if too few are saturated.

    A plain pixel check, independent of CLIP: it judges whether a generated image really is "red".
    """
    hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.float32) / 255.0  # (H, W, 3)
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    vivid = (s > 0.45) & (v > 0.35)
    if vivid.mean() < min_fraction:
        return None
    names = list(COLOURS)
    centres = np.array([COLOURS[n] for n in names], dtype=np.float32)
    d = np.abs(h[vivid][:, None] - centres[None, :])
    d = np.minimum(d, 1.0 - d)  # hue is circular
    counts = np.bincount(d.argmin(axis=1), minlength=len(names))
    return names[int(counts.argmax())]
