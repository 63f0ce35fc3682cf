"""Augmented cutouts as batched tensor ops, every random number drawn on the image's device.

VQGAN+CLIP scores many random views of the image rather than the image itself, which keeps the
optimisation from fitting CLIP with pixel noise. A view is a square crop, warped (flip, rotation, shear,
translation, perspective), resized to CLIP's input and jittered (colour, erasing, noise). The geometry of
all views is one sampling grid per view, so a step costs a few `grid_sample` calls whatever the count.

Downscaling is prefiltered: a crop that shrinks by a factor f is sampled from a copy of the image blurred
for f (a small pyramid of blurred copies, one per half octave, blended per view), so no pixel is skipped
by the sampler and fine patterns average to grey instead of aliasing into stripes. Up to f = √2 the
bilinear sampler itself still reads every pixel (its taps are under 2 px apart), so level 0 is the image
as it is and serves those views alone: at 256 px for CLIP's 224, one sampling pass does it all.

Nothing here reads a value back to the host: the number of pyramid levels follows from Python numbers
(sizes and the profile), so a step never waits for the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.augment import colour_jitter, erase, perspective_grid


@dataclass(frozen=True)
class CutoutConfig:
    """One recipe of views (see models/recipes.py for the named profiles)."""

    min_scale: float | None = 0.45  # smallest crop side, fraction of the shorter side; None: CLIP's input
    max_scale: float = 1.0  # largest crop side, same unit
    cut_pow: float = 1.0  # crop side = min + (max − min) · u^cut_pow, u uniform: > 1 favours small crops
    pool: float = 0.0  # share of max pooling mixed into the (average) prefilter: 0.5 in the references
    flip: bool = True  # random horizontal flips
    affine_p: float = 1.0  # probability that a view is rotated/sheared/translated
    max_rotate: float = 15.0  # degrees, uniform in ±max_rotate
    translate: float = 0.0  # fraction of the crop side, uniform in ±translate per axis
    shear: float = 0.0  # degrees of shear along x, uniform in ±shear
    perspective: float = 0.0  # corner displacement, fraction of half the side (0.7 in the references)
    perspective_p: float = 0.0  # probability that a view is warped in perspective
    padding: str = "reflection"  # what warps show outside the image: "reflection", "zeros" or "border"
    jitter_p: float = 1.0  # probability that a view's colours are jittered
    brightness: float = 0.08  # additive, uniform in ±brightness (pixels in [0, 1])
    contrast: float = 0.1  # multiplicative around the view's mean, uniform in 1 ± contrast
    saturation: float = 0.0  # blend with grey, uniform in 1 ± saturation
    hue: float = 0.0  # rotation of the hue circle, uniform in ±hue turns
    erase_p: float = 0.0  # probability that a rectangle is erased (the same one for all views of a step)
    erase_area: tuple[float, float] = (0.1, 0.4)  # erased area, fraction of the view
    noise: float = 0.1  # max std of the Gaussian noise; each view draws its std in [0, noise]


# Pyramid levels are spaced a half octave apart: level j prefilters for a downscale by 2^(j/2).
_LEVELS_PER_OCTAVE = 2
_MAX_LEVEL = 10  # 32× downscale


def crop_range(cfg: CutoutConfig, side: int, size: int) -> tuple[float, float]:
    """Smallest and largest crop side in pixels for an image whose shorter side is `side`."""
    lo = min(side, size) if cfg.min_scale is None else cfg.min_scale * side
    hi = max(lo, cfg.max_scale * side)
    return lo, hi


def _level(factor: float | torch.Tensor) -> float | torch.Tensor:
    """Continuous pyramid level of a downscale factor: 0 up to √2, then one per half octave."""
    if isinstance(factor, torch.Tensor):
        return (factor.clamp(min=1).log2() * _LEVELS_PER_OCTAVE - 1).clamp(min=0)
    return max(0.0, math.log2(max(1.0, factor)) * _LEVELS_PER_OCTAVE - 1)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), reflecting at the borders."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    h, w = x.shape[-2:]
    if h > radius and w > radius:
        x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    else:  # a tiny image: replicate instead (reflect needs more pixels than the radius)
        x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _max_filter(x: torch.Tensor, k: int) -> torch.Tensor:
    """Max over a k×k window around each pixel (same size out)."""
    if k <= 1:
        return x
    x = F.pad(x, ((k - 1) // 2, k // 2, (k - 1) // 2, k // 2), mode="replicate")
    return F.max_pool2d(x, k, stride=1)


def prefiltered(image: torch.Tensor, level: int, pool: float) -> torch.Tensor:
    """The image prefiltered for pyramid `level`: Gaussian (≈ average pooling), mixed with max pooling."""
    if level == 0:
        return image
    f = 2 ** ((level + 1) / _LEVELS_PER_OCTAVE)  # the downscale factor level j is made for
    out = _blur(image, 0.5 * f)  # σ = f/2: the Nyquist band of the smaller grid keeps < 10 % contrast
    if pool:
        out = (1 - pool) * out + pool * _max_filter(image, round(f))
    return out


def make_cutouts(
    images: torch.Tensor,
    count: int,
    size: int,
    cfg: CutoutConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`count` random views of each image, resized to `size`.

    images: (B, C, H, W) in [0, 1]. Returns (B * count, C, size, size), image-major, not clamped
    (noise and jitter may leave [0, 1] slightly, as in the references). `generator` must live on the
    images' device (a CPU generator for CPU images); it makes the views reproducible.
    """
    b, _, h, w = images.shape
    n = b * count
    dev, dt = images.device, images.dtype

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=dev, dtype=dt)

    def chance(p: float) -> torch.Tensor:  # (N,) 1.0 where an augmentation applies
        return (rand(n) < p).to(dt) if p < 1 else torch.ones(n, device=dev, dtype=dt)

    # -- where each view looks: a crop of side `crop` px, then a warp inside the crop ---------------
    short = min(h, w)
    lo, hi = crop_range(cfg, short, size)
    crop = lo + (hi - lo) * rand(n).pow(cfg.cut_pow)  # (N,) px
    sx, sy = crop / w, crop / h  # crop half-sides in normalised coordinates
    cx = (rand(n) * 2 - 1) * (1 - sx).clamp(min=0)
    cy = (rand(n) * 2 - 1) * (1 - sy).clamp(min=0)

    grid = _base_grid(size, dev, dt).expand(n, -1, -1, -1)  # (N, S, S, 2), x then y, in [-1, 1]
    if cfg.perspective and cfg.perspective_p:
        grid = perspective_grid(grid, cfg.perspective * chance(cfg.perspective_p), rand)
    on = chance(cfg.affine_p)
    angle = (rand(n) * 2 - 1) * math.radians(cfg.max_rotate) * on
    shear = (rand(n) * 2 - 1) * math.radians(cfg.shear) * on
    tx = (rand(n) * 2 - 1) * 2 * cfg.translate * on
    ty = (rand(n) * 2 - 1) * 2 * cfg.translate * on
    flip = torch.where(rand(n) < 0.5, -1.0, 1.0).to(dt) if cfg.flip else torch.ones(n, device=dev, dtype=dt)
    cos, sin, tan = angle.cos(), angle.sin(), shear.tan()
    # (N, 2, 2) crop-space warp: rotation · x-shear · flip, then the crop's scale per axis
    a = torch.stack([cos * flip, cos * tan - sin, sin * flip, sin * tan + cos], dim=1).view(n, 2, 2)
    a = a * torch.stack([sx, sy], dim=1)[:, :, None]
    shift = torch.stack([cx + tx * sx, cy + ty * sy], dim=1)  # (N, 2)
    grid = torch.einsum("nij,nhwj->nhwi", a, grid) + shift[:, None, None, :]

    # -- sample, prefiltered for each view's downscale factor ---------------------------------------
    factor = crop / size  # (N,) source px per output px
    first = math.floor(_level(lo / size))
    last = min(_MAX_LEVEL, math.ceil(_level(hi / size)))
    level = _level(factor)
    assert isinstance(level, torch.Tensor)
    level = level.clamp(max=last)
    out = None
    for j in range(first, last + 1):
        part = _sample(prefiltered(images, j, cfg.pool), grid, count, cfg.padding)
        if last > first:  # blend the two levels around each view's own
            part = part * (1 - (level - j).abs()).clamp(min=0)[:, None, None, None]
        out = part if out is None else out + part
    assert out is not None

    # -- colours, erasing, noise -------------------------------------------------------------------
    out = colour_jitter(out, cfg, chance(cfg.jitter_p), rand)
    if cfg.erase_p:
        out = erase(out, cfg.erase_p, cfg.erase_area, rand)
    if cfg.noise:
        sigma = rand(n, 1, 1, 1) * cfg.noise
        out = torch.addcmul(out, sigma, torch.randn(out.shape, generator=generator, device=dev, dtype=dt))
    return out


def _sample(src: torch.Tensor, grid: torch.Tensor, count: int, padding: str) -> torch.Tensor:
    """grid_sample every view of each image in one call. src (B, C, H, W), grid (B·count, S, S, 2)."""
    b, c = src.shape[:2]
    n, s = grid.shape[:2]
    g = grid.reshape(b, count * s, s, 2)  # the views of one image stacked along y: no copy of the image
    out = F.grid_sample(src, g, mode="bilinear", padding_mode=padding, align_corners=False)
    return out.view(b, c, count, s, s).transpose(1, 2).reshape(n, c, s, s)


def _base_grid(size: int, dev: torch.device, dt: torch.dtype) -> torch.Tensor:
    """(1, S, S, 2) pixel centres in normalised coordinates (align_corners=False)."""
    t = (torch.arange(size, device=dev, dtype=dt) * 2 + 1) / size - 1
    y, x = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([x, y], dim=-1)[None]
