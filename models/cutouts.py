"""Augmented cutouts as batched tensor ops (one affine_grid + one grid_sample for all of them).

VQGAN+CLIP scores many random views of the image rather than the image itself, which keeps the
optimisation from fitting CLIP with pixel noise. The toy CLIP is trained with the same views, so it
judges generated images the way it was taught to judge photos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CutoutConfig:
    min_scale: float = 0.45  # smallest cutout side, as a fraction of the image's shorter side
    max_scale: float = 1.0  # largest cutout side, same unit
    max_rotate: float = 15.0  # degrees, uniform in ±max_rotate
    flip: bool = True  # random horizontal flips
    brightness: float = 0.08  # additive, uniform in ±brightness (pixels in [0, 1])
    contrast: float = 0.1  # multiplicative around the cutout mean, uniform in 1 ± contrast
    noise: float = 0.1  # max std of the Gaussian noise; each cutout draws its std in [0, noise]


def make_cutouts(
    images: torch.Tensor,
    count: int,
    size: int,
    cfg: CutoutConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`count` random views of each image, resized to `size`.

    images: (B, C, H, W) in [0, 1]. Returns (B * count, C, size, size), image-major, not clamped
    (noise and jitter may leave [0, 1] slightly, as in the references).
    """
    b, c, h, w = images.shape
    n = b * count
    dev, dt = images.device, images.dtype

    def rand(*shape: int) -> torch.Tensor:
        # Draw on the CPU generator so a seed gives the same views on every device.
        return torch.rand(*shape, generator=generator).to(dev, dt)

    aspect = w / h  # grid coordinates are normalised per axis: keep crops square in pixels
    scale = cfg.min_scale + (cfg.max_scale - cfg.min_scale) * rand(n)  # (N,)
    sx = scale * min(1.0, 1.0 / aspect)
    sy = scale * min(1.0, aspect)
    angle = (rand(n) * 2 - 1) * math.radians(cfg.max_rotate)
    flip = torch.where(rand(n) < 0.5, -1.0, 1.0).to(dt) if cfg.flip else torch.ones(n, device=dev, dtype=dt)
    tx = (rand(n) * 2 - 1) * (1 - sx).clamp(min=0)
    ty = (rand(n) * 2 - 1) * (1 - sy).clamp(min=0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([sx * cos * flip, -sx * sin, tx], dim=1),
            torch.stack([sy * sin * flip, sy * cos, ty], dim=1),
        ],
        dim=1,
    )  # (N, 2, 3): output grid -> input coordinates
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    src = images.repeat_interleave(count, dim=0)  # (N, C, H, W)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if cfg.brightness or cfg.contrast:
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        gain = 1 + (rand(n, 1, 1, 1) * 2 - 1) * cfg.contrast
        shift = (rand(n, 1, 1, 1) * 2 - 1) * cfg.brightness
        out = (out - mean) * gain + mean + shift
    if cfg.noise:
        sigma = rand(n, 1, 1, 1) * cfg.noise
        out = out + sigma * torch.randn(out.shape, generator=generator).to(dev, dt)
    return out
