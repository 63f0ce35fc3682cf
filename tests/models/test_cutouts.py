"""Cutouts: prefiltered downscaling (every pixel gets a gradient, fine patterns turn grey), the profiles,
and reproducible draws from the job's own generator."""

from __future__ import annotations

import pytest
import torch

from iris.errors import BadRequest
from iris.request import PROFILES as REQUEST_PROFILES
from models.cutouts import CutoutConfig, make_cutouts
from models.recipes import PROFILES, profile

WHOLE = CutoutConfig(min_scale=1.0, flip=False, max_rotate=0, brightness=0, contrast=0, noise=0)


def _checkerboard(side: int, square: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return ((x // square + y // square) % 2).float()[None, None].expand(1, 3, side, side)


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_pixel_gets_a_gradient_at_512(name):
    img = torch.rand(1, 3, 512, 512, requires_grad=True)
    make_cutouts(img, 32, 224, PROFILES[name], torch.Generator().manual_seed(0)).sum().backward()
    covered = (img.grad.abs().sum(1) > 0).float().mean().item()
    assert covered > 0.99, f"only {covered:.1%} of the pixels get a gradient"


def test_one_whole_view_of_a_512_image_touches_every_pixel():
    # one bilinear grid_sample from 512 to 224 skips 23 % of the pixels: they would get no gradient
    img = torch.rand(1, 3, 512, 512, requires_grad=True)
    make_cutouts(img, 1, 224, WHOLE, torch.Generator().manual_seed(0)).sum().backward()
    assert (img.grad.abs().sum(1) > 0).float().mean().item() == 1.0


def test_a_fine_checkerboard_turns_grey_not_into_stripes():
    # 2-px squares at 512 → 224: finer than the output grid can hold; a sampler without a prefilter
    # turns it into a coarse aliased pattern of nearly full contrast
    out = make_cutouts(_checkerboard(512, 2), 2, 224, WHOLE, torch.Generator().manual_seed(0))
    assert abs(out.mean().item() - 0.5) < 0.02
    assert out.std().item() < 0.05, f"the cutout still shows a pattern (std {out.std().item():.3f})"
    # a coarse checkerboard (16-px squares) stays a checkerboard: the prefilter does not blur everything
    coarse = make_cutouts(_checkerboard(512, 16), 2, 224, WHOLE, torch.Generator().manual_seed(0))
    assert coarse.std().item() > 0.4


@pytest.mark.parametrize("name", list(PROFILES))
def test_same_generator_same_views_and_shapes(name):
    img = torch.rand(2, 3, 80, 96)
    a = make_cutouts(img, 5, 32, PROFILES[name], torch.Generator().manual_seed(7))
    b = make_cutouts(img, 5, 32, PROFILES[name], torch.Generator().manual_seed(7))
    c = make_cutouts(img, 5, 32, PROFILES[name], torch.Generator().manual_seed(8))
    assert a.shape == (10, 3, 32, 32) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_profiles_differ_in_augmentation():
    img = torch.rand(1, 3, 64, 64)
    g = torch.Generator
    none = make_cutouts(img, 8, 64, PROFILES["none"], g().manual_seed(1))
    # no augmentation and crops of the whole side at 64 → 64: every view is the image itself
    assert torch.allclose(none, img.expand(8, -1, -1, -1), atol=1e-5)
    classic = make_cutouts(img, 8, 64, PROFILES["classic"], g().manual_seed(1))
    assert (classic - img).abs().mean() > 0.05  # warped, jittered, erased, noisy


def test_classic_views_are_warped_in_perspective():
    # perspective alone (always on) maps the image onto a smaller quadrilateral: black corners
    cfg = CutoutConfig(
        min_scale=1.0,
        flip=False,
        affine_p=0,
        max_rotate=0,
        perspective=0.7,
        perspective_p=1.0,
        padding="zeros",
        brightness=0,
        contrast=0,
        noise=0,
    )
    out = make_cutouts(torch.ones(1, 3, 64, 64), 16, 64, cfg, torch.Generator().manual_seed(0))
    corners = out[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners < 0.5).float().mean() > 0.5
    assert out[:, :, 32, 32].min() > 0.99  # the centre stays inside the image


def test_profile_names_are_the_requests():
    assert tuple(PROFILES) == REQUEST_PROFILES
    with pytest.raises(BadRequest, match="classic"):
        profile("fancy")
