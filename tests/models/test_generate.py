"""Generation mechanics: determinism, stopping, sizes, prompts, init images; quality on the toy world."""

from __future__ import annotations

import io
import math

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
# iris: the toy config's profile, 5 seeds; classic: config.yaml's default, 3 seeds (time: 5 pass there too)
@pytest.mark.parametrize("profile,seeds", [("iris", 5), ("classic", 3)])
@pytest.mark.parametrize("colour", ["red", "green", "blue", "yellow"])
def test_vqgan_generation_steers_to_the_prompt_colour(toy_clip, toy_vqgan, colour, profile, seeds):
    raised, right_colour = 0, 0
    for seed in range(seeds):
        req = ImagineRequest(
            f"a {colour} circle",
            seed=seed,
            steps=40,
            width=64,
            height=64,
            cutouts=16,
            lr=0.1,
            profile=profile,
        )
        result = VQGANGeneration(toy_clip, toy_vqgan, req).run()
        raised += result.clip_score > result.start_score
        right_colour += world.dominant_colour(result.image) == colour
    assert raised >= seeds - 1, f"CLIP score rose for only {raised}/{seeds} seeds"
    assert right_colour >= seeds - 1, f"dominant colour was {colour} for only {right_colour}/{seeds} seeds"


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


# -- init images on Gumbel models ---------------------------------------------------------------------
def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_gumbel_init_image_starts_from_codebook_vectors(toy_clip):
    # a tiny Gumbel VQGAN from taming's modules with random weights: the encoder's raw output is the input
    # of the code projection, not a codebook vector; the start must be the quantised embedding
    from models.vqgan import VQGAN, VQGANConfig

    torch.manual_seed(0)
    dd = dict(
        double_z=False,
        z_channels=32,
        resolution=32,
        in_channels=3,
        out_ch=3,
        ch=32,
        ch_mult=[1, 2],
        num_res_blocks=1,
        attn_resolutions=[],
        dropout=0.0,
    )
    vq = VQGAN(VQGANConfig(dd, n_embed=64, embed_dim=32, gumbel=True)).eval().requires_grad_(False)
    req = _req(init_image=_png(world.sample(5).image), width=32, height=32, steps=1)
    gen = VQGANGeneration(toy_clip, vq, req)
    z = gen.z.detach().movedim(1, 3).reshape(-1, 32)  # (positions, C)
    assert z.shape[0] == 16 * 16
    # the code the model itself picks for the init image, at every position
    codes = vq.codes(vq.encode(gen.init_image * 2 - 1)).flatten()
    assert torch.equal(z, vq.codebook[codes]), "the start is not the codebook vector of each position"


# -- a step that does not wait for the device ---------------------------------------------------------
_SYNCS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


@pytest.fixture
def host_reads(monkeypatch):
    """Counts reads of tensor values to the host made by Iris's own code (torch's internals, such as
    Adam's CPU step counter, do not wait for a GPU and are not counted)."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    ours = (str(root / "models"), str(root / "iris"))
    calls: list[str] = []
    for name in _SYNCS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *a, _name=name, _original=original, **kw):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(ours):
                calls.append(f"{_name} from {Path(caller).name}:{sys._getframe(1).f_lineno}")
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return calls


@pytest.mark.parametrize("profile", ["iris", "classic", "none"])
def test_a_step_reads_nothing_back_unless_asked(toy_clip, toy_vqgan, host_reads, profile):
    gen = VQGANGeneration(toy_clip, toy_vqgan, _req(steps=5, profile=profile, cutouts=4))
    host_reads.clear()  # set-up may read (the start score)
    for _ in range(2):
        assert math.isnan(gen.step(read_loss=False))
    gen.step(between=lambda: None, slice_size=2, wants_slice=lambda: True, read_loss=False)
    assert host_reads == []
    loss = gen.step()  # reading the loss is one read, on demand
    assert math.isfinite(loss) and len(host_reads) == 1
    assert gen.last_loss == loss


def test_slices_are_cut_only_when_someone_waits(toy_clip, toy_vqgan):
    whole = VQGANGeneration(toy_clip, toy_vqgan, _req(cutouts=8, steps=3))
    idle = VQGANGeneration(toy_clip, toy_vqgan, _req(cutouts=8, steps=3))
    busy = VQGANGeneration(toy_clip, toy_vqgan, _req(cutouts=8, steps=3))
    calls: list[str] = []
    a = whole.step()
    b = idle.step(lambda: False, between=lambda: calls.append("idle"), slice_size=3)
    waiting = iter([True, False])  # a short job waits at the first boundary only
    c = busy.step(lambda: next(waiting), between=lambda: calls.append("busy"), slice_size=3)
    assert calls == ["busy"]
    assert abs(a - b) < 1e-6 and abs(a - c) < 1e-6
    torch.testing.assert_close(whole.z.grad, busy.z.grad, atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("profile", ["classic", "none"])
def test_every_profile_is_reproducible(toy_clip, toy_vqgan, profile):
    a = VQGANGeneration(toy_clip, toy_vqgan, _req(profile=profile)).run()
    b = VQGANGeneration(toy_clip, toy_vqgan, _req(profile=profile)).run()
    assert a.image.tobytes() == b.image.tobytes()


# -- image prompts, init weight, EMA ------------------------------------------------------------------
def test_image_prompts_join_the_targets_with_their_weight(toy_clip):
    blue = _png(world.make_image("blue", "square", seed=1))
    gen = PixelGeneration(toy_clip, _req("a circle", image_prompts=((blue, 2.5), (blue, -0.5)), steps=1))
    assert gen.weights.tolist() == [1.0, 2.5, -0.5]
    assert gen.prompt_emb.shape[0] == 3
    # the same picture seen through different random views: nearly the same embedding
    assert (gen.prompt_emb[1] @ gen.prompt_emb[2]).item() > 0.95
    with pytest.raises(BadImage, match="image prompt 1"):
        PixelGeneration(toy_clip, _req("a circle", image_prompts=((b"<html>", 1.0),)))


def test_an_image_prompt_steers_the_colour(toy_clip, toy_vqgan):
    right = 0
    for seed in range(3):
        blue = world.make_image("blue", "circle", seed=100 + seed)
        req = ImagineRequest(
            "a red circle:0.1",
            seed=seed,
            steps=40,
            width=64,
            height=64,
            cutouts=16,
            image_prompts=((_png(blue), 1.0),),
        )
        right += world.dominant_colour(VQGANGeneration(toy_clip, toy_vqgan, req).run().image) == "blue"
    assert right >= 2


def test_init_weight_keeps_the_image_near_the_init(toy_clip):
    init = _png(world.sample(11).image)
    kw = dict(prompt="a green triangle", init_image=init, steps=6, lr=0.05, generator="pixels")
    free = PixelGeneration(toy_clip, _req(**kw))
    held = PixelGeneration(toy_clip, _req(**kw, init_weight=100.0))
    free.run(), held.run()
    far = (free.image() - free.init_image).abs().mean()
    near = (held.image() - held.init_image).abs().mean()
    assert near < 0.85 * far  # Adam moves every pixel at first; the pull keeps them closer


def test_ema_of_the_latents_is_what_is_shown(toy_clip, toy_vqgan):
    gen = VQGANGeneration(toy_clip, toy_vqgan, _req(ema=0.75, steps=3))
    z0 = gen.z.detach().clone()
    gen.step()
    torch.testing.assert_close(gen.ema_latent, 0.75 * z0 + 0.25 * gen.z.detach())
    with torch.no_grad():
        assert torch.equal(gen.shown(), gen.render(gen.ema_latent))
    assert VQGANGeneration(toy_clip, toy_vqgan, _req(steps=1)).ema_latent is None
