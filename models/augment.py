"""The augmentations of a cutout that are not a crop: perspective, colour jitter, erasing.

Written as a few batched torch ops (the references use kornia for the same effects) so that every random
number comes from the job's own generator on the device, and nothing is read back to the host.
`rand(*shape)` is the caller's uniform [0, 1) sampler bound to that generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from models.cutouts import CutoutConfig

Rand = Callable[..., torch.Tensor]

# The four corners of a view in normalised coordinates, and the inward direction of each.
_CORNERS = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))


def perspective_grid(grid: torch.Tensor, strength: torch.Tensor, rand: Rand) -> torch.Tensor:
    """Warp a sampling grid (N, S, S, 2) in perspective.

    Like kornia's RandomPerspective(distortion_scale): each corner of the view moves inward by up to
    `strength` (N,) half-sides per axis, and the image is mapped onto that smaller quadrilateral. The grid
    maps output to source, so it gets the homography from the moved corners back to the corners.
    """
    n = grid.shape[0]
    dev, dt = grid.device, grid.dtype
    src = _constant("corners", dev, dt).expand(n, 4, 2)  # (N, 4, 2)
    dst = src - src * strength[:, None, None] * rand(n, 4, 2)  # moved inward
    h = homography(dst, src)  # (N, 3, 3): output point → source point
    ones = torch.ones_like(grid[..., :1])
    p = torch.einsum("nij,nhwj->nhwi", h, torch.cat([grid, ones], dim=-1))  # (N, S, S, 3)
    return p[..., :2] / p[..., 2:]


def homography(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The (N, 3, 3) homographies taking the four points a (N, 4, 2) to b (N, 4, 2), with h33 = 1."""
    x, y = a[..., 0], a[..., 1]
    u, v = b[..., 0], b[..., 1]
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], dim=-1)  # (N, 4, 8)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], dim=-1)
    m = torch.cat([rows_u, rows_v], dim=1)  # (N, 8, 8)
    rhs = torch.cat([u, v], dim=1)  # (N, 8)
    # solve_ex: no error check, which would wait for the device; four corners in general position
    # (inward moves below a half-side keep them so) always give a regular system. Double: it is tiny.
    sol = torch.linalg.solve_ex(m.double(), rhs.double()).result.to(a.dtype)
    return torch.cat([sol, torch.ones_like(sol[:, :1])], dim=1).view(-1, 3, 3)


# RGB ↔ YIQ: a hue rotation is a rotation of the I/Q plane.
_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))

_TABLES: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}  # a few per device and dtype


def _constant(name: str, dev: torch.device, dt: torch.dtype) -> torch.Tensor:
    """A constant table on the device, copied there once (a copy per step would wait for the host)."""
    key = (name, dev, dt)
    if key not in _TABLES:
        with torch.inference_mode(False), torch.no_grad():
            yiq = torch.tensor(_YIQ, dtype=torch.float64)
            table = {"corners": torch.tensor(_CORNERS), "yiq": yiq, "yiq_inv": torch.linalg.inv(yiq)}[name]
            _TABLES[key] = table.to(dev, dt)
    return _TABLES[key]


def colour_jitter(x: torch.Tensor, cfg: CutoutConfig, on: torch.Tensor, rand: Rand) -> torch.Tensor:
    """Brightness (additive), contrast, saturation and hue of each view (N, 3, S, S); `on` (N,) in {0, 1}."""
    n = x.shape[0]
    dev, dt = x.device, x.dtype

    def amount(limit: float) -> torch.Tensor:  # (N, 1, 1, 1) uniform in ±limit where on
        return ((rand(n) * 2 - 1) * limit * on).view(n, 1, 1, 1)

    if cfg.contrast or cfg.brightness:  # one pass: x · gain + (mean · (1 − gain) + shift)
        gain = 1 + amount(cfg.contrast) if cfg.contrast else torch.ones_like(on).view(n, 1, 1, 1)
        offset = amount(cfg.brightness) if cfg.brightness else torch.zeros_like(gain)
        if cfg.contrast:
            offset = offset + x.mean(dim=(1, 2, 3), keepdim=True) * (1 - gain)
        x = torch.addcmul(offset, x, gain)
    if cfg.saturation and x.shape[1] == 3:
        grey = (x * _constant("yiq", dev, dt)[0].view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = grey + (x - grey) * (1 + amount(cfg.saturation))
    if cfg.hue and x.shape[1] == 3:
        angle = amount(cfg.hue).view(n) * 2 * math.pi
        cos, sin = angle.cos(), angle.sin()
        zero, one = torch.zeros_like(cos), torch.ones_like(cos)
        rot = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], dim=1).view(n, 3, 3)
        m = _constant("yiq_inv", dev, dt) @ rot @ _constant("yiq", dev, dt)  # (N, 3, 3)
        x = torch.einsum("nij,njhw->nihw", m, x)
    return x


def erase(x: torch.Tensor, p: float, area: tuple[float, float], rand: Rand) -> torch.Tensor:
    """With probability p, zero one random rectangle in every view (the same one for the whole batch).

    The rectangle covers `area` (a range, fraction of the view) with an aspect drawn log-uniformly in
    [0.3, 1/0.3], as kornia's RandomErasing(same_on_batch=True) does in the references.
    """
    s = x.shape[-1]
    dev, dt = x.device, x.dtype
    apply = (rand(1) < p).to(dt)
    a = area[0] + (area[1] - area[0]) * rand(1)
    ratio = torch.exp((rand(1) * 2 - 1) * math.log(1 / 0.3))
    eh, ew = (a * ratio).sqrt().clamp(max=1), (a / ratio).sqrt().clamp(max=1)
    y0, x0 = rand(1) * (1 - eh), rand(1) * (1 - ew)
    t = (torch.arange(s, device=dev, dtype=dt) + 0.5) / s
    rows = ((t >= y0) & (t < y0 + eh)).to(dt)
    cols = ((t >= x0) & (t < x0 + ew)).to(dt)
    mask = rows[:, None] * cols[None, :] * apply  # (S, S)
    return x * (1 - mask)
