"""ImagineRequest.validated: the new fields (profile, image prompts, init weight, EMA) with clear messages."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from iris.errors import BadImage, BadRequest
from iris.images import ImageLimits
from iris.request import ImagineRequest


def _png(size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def _check(**kw) -> ImagineRequest:
    return ImagineRequest("a fox", steps=10, width=64, height=64, **kw).validated(100, 256, 500)


def test_good_new_fields_pass():
    req = _check(
        profile="classic",
        image_prompts=((_png(), 2.0), (_png(), -0.5)),
        init_image=_png(),
        init_weight=0.5,
        ema=0.98,
    )
    assert req.profile == "classic"


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(profile="fancy"), "profile must be one of iris, classic, none"),
        (dict(init_weight=0.5), "an init weight needs an init image"),
        (dict(init_weight=-1.0, init_image=_png()), "init weight must be between 0 and 100"),
        (dict(init_weight=float("nan"), init_image=_png()), "init weight"),
        (dict(ema=1.0), "EMA decay"),
        (dict(ema=-0.1), "EMA decay"),
        (dict(image_prompts=((_png(), 1e9),)), "weight of image prompt 1 must be between"),
        (dict(image_prompts=((_png(), float("inf")),)), "image prompt 1"),
        (dict(image_prompts=((_png(), 1.0),) * 5), "5 image prompts were given; the limit is 4"),
    ],
)
def test_bad_values_are_refused_clearly(kw, match):
    with pytest.raises(BadRequest, match=match):
        _check(**kw)


def test_image_prompts_and_init_go_through_the_image_checks():
    with pytest.raises(BadImage, match="image prompt 2"):
        _check(image_prompts=((_png(), 1.0), (b"<html>nope</html>", 1.0)))
    with pytest.raises(BadImage, match="too large"):
        ImagineRequest("a fox", image_prompts=((_png(64), 1.0),)).validated(
            1000, 256, 500, ImageLimits(max_bytes=50)
        )
    with pytest.raises(BadImage, match="init image"):
        _check(init_image=b"")
