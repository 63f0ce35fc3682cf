"""Generation mechanics: determinism, stopping, sizes, prompts, init images; quality on the toy world."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from iris.errors import BadImage, BadRequest
from iris.request import ImagineRequest
from models.generate import (
    PixelGeneration,
    VQGANGeneration,
    clamp_with_grad,
    create_generation,
    spherical_dist_sq,
    vector_quantize,
)
from models.toy import world


def _req(prompt: str = "a red circle", **kw) -> ImagineRequest:
    base = dict(prompt=prompt, seed=3, steps=4, width=64, height=64, cutouts=4, lr=0.1)
    base.update(kw)
    return ImagineRequest(**base)


def test_same_seed_same_image_different_seed_differs(toy_clip, toy_vqgan):
    a = VQGANGeneration(toy_clip, toy_vqgan, _req()).run()
    b = VQGANGeneration(toy_clip, toy_vqgan, _req()).run()
    c = VQGANGeneration(toy_clip, toy_vqgan, _req(seed=4)).run()
    assert a.image.tobytes() == b.image.tobytes()
    assert a.image.tobytes() != c.image.tobytes()
    assert (a.seed, a.steps, a.stopped) == (3, 4, False)


def test_seed_is_applied_before_z_is_drawn(toy_clip, toy_vqgan):
    # Disturbing torch's global RNG between jobs must not change a seeded job (the nerdyrodent bug).
    torch.manual_seed(0)
    a = VQGANGeneration(toy_clip, toy_vqgan, _req(steps=1))
    torch.rand(1000)
    b = VQGANGeneration(toy_clip, toy_vqgan, _req(steps=1))
    assert torch.equal(a.z, b.z)


def test_size_rounded_to_factor_and_should_stop(toy_clip, toy_vqgan):
    gen = VQGANGeneration(toy_clip, toy_vqgan, _req(width=70, height=50, steps=10))
    calls = []
    result = gen.run(on_step=calls.append, should_stop=lambda: len(calls) >= 3)
    assert result.image.size == (68, 48)  # toy VQGAN factor 4
    assert result.stopped and result.steps == 3
    assert [c.step for c in calls] == [1, 2, 3] and all(c.total == 10 for c in calls)
    assert gen.preview().size == (68, 48)


def test_z_stays_within_codebook_range(toy_clip, toy_vqgan):
    gen = VQGANGeneration(toy_clip, toy_vqgan, _req(lr=5.0, steps=3))
    gen.run()
    assert (gen.z >= gen.z_min - 1e-6).all() and (gen.z <= gen.z_max + 1e-6).all()


def test_init_image_is_the_start(toy_clip, toy_vqgan):
    sample = world.sample(77)
    buf = io.BytesIO()
    sample.image.save(buf, format="PNG")
    gen = VQGANGeneration(toy_clip, toy_vqgan, _req(init_image=buf.getvalue(), steps=1))
    start = gen.preview()
    assert world.dominant_colour(start) == sample.colour
    with pytest.raises(BadImage):
        VQGANGeneration(toy_clip, toy_vqgan, _req(init_image=b"<html>not an image</html>"))


def test_weighted_and_negative_prompts(toy_clip):
    gen = PixelGeneration(toy_clip, _req("a red circle:2 | a blue square:-0.5", steps=1))
    assert gen.weights.tolist() == [2.0, -0.5]
    assert gen.prompt_emb.shape[0] == 2
    with pytest.raises(BadRequest):
        PixelGeneration(toy_clip, _req("blurry:-1"))


def test_create_generation_without_vqgan(toy_clip):
    assert isinstance(create_generation(toy_clip, None, _req(generator="pixels")), PixelGeneration)
    with pytest.raises(BadRequest, match="no VQGAN"):
        create_generation(toy_clip, None, _req(generator="vqgan"))


def test_straight_through_and_clamp_gradients():
    cb = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    x = torch.tensor([[0.2, 0.1], [0.9, 0.7]], requires_grad=True)
    q = vector_quantize(x, cb)
    assert torch.equal(q.detach(), torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones(2, 2))  # gradient passes straight through

    y = torch.tensor([-0.5, 0.5, 1.5], requires_grad=True)
    # loss pulls every value up: the one below 0 gets its gradient (it points back into range),
    # the one above 1 does not (it points further out)
    (-clamp_with_grad(y, 0.0, 1.0)).sum().backward()
    assert y.grad.tolist() == [-1.0, -1.0, 0.0]


def test_spherical_distance():
    a = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    d = spherical_dist_sq(a, a)
    assert torch.allclose(d.diagonal(), torch.zeros(3), atol=1e-6)
    assert torch.allclose(
        spherical_dist_sq(a[:1], -a[:1]), torch.tensor([[2 * (torch.pi / 2) ** 2]]), atol=1e-4
    )


# -- quality on the toy world (an independent pixel judge, not only CLIP's own score) -----------------
@pytest.mark.parametrize("colour", ["red", "green", "blue", "yellow"])
def test_vqgan_generation_steers_to_the_prompt_colour(toy_clip, toy_vqgan, colour):
    raised, right_colour = 0, 0
    for seed in range(5):
        req = ImagineRequest(
            f"a {colour} circle", seed=seed, steps=40, width=64, height=64, cutouts=16, lr=0.1
        )
        result = VQGANGeneration(toy_clip, toy_vqgan, req).run()
        raised += result.clip_score > result.start_score
        right_colour += world.dominant_colour(result.image) == colour
    assert raised >= 4, f"CLIP score rose for only {raised}/5 seeds"
    assert right_colour >= 4, f"dominant colour was {colour} for only {right_colour}/5 seeds"


def test_pixel_generation_steers_to_the_prompt_colour(toy_clip):
    for colour in world.COLOURS:
        req = ImagineRequest(
            f"a {colour} square",
            seed=1,
            steps=40,
            width=64,
            height=64,
            cutouts=16,
            lr=0.05,
            generator="pixels",
        )
        result = PixelGeneration(toy_clip, req).run()
        assert result.clip_score > result.start_score
        assert world.dominant_colour(result.image) == colour


def test_preview_is_a_png_sized_image(toy_clip, toy_vqgan):
    gen = VQGANGeneration(toy_clip, toy_vqgan, _req(steps=1))
    img = gen.preview()
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (64, 64)


def test_a_sliced_step_is_the_same_step(toy_clip, toy_vqgan):
    whole = VQGANGeneration(toy_clip, toy_vqgan, _req(cutouts=8, steps=3))
    sliced = VQGANGeneration(toy_clip, toy_vqgan, _req(cutouts=8, steps=3))
    calls = []
    a = whole.step()
    b = sliced.step(between=lambda: calls.append(1), slice_size=3)
    assert abs(a - b) < 1e-6
    # the same gradient reached the latents (Adam then amplifies float noise in near-zero entries,
    # so the gradients, not later latents, are compared)
    torch.testing.assert_close(whole.z.grad, sliced.z.grad, atol=1e-7, rtol=1e-4)
    assert whole.z.grad.abs().sum() > 0
    assert len(calls) == 3  # slices of 3, 3, 2 cutouts: two boundaries + one before the decoder backward
