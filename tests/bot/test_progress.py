"""Images over the interaction's upload limit are re-encoded smaller, never dropped."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bot.progress import fit_image


def test_small_images_pass_unchanged():
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, format="PNG")
    assert fit_image(buf.getvalue(), 10_000, "x.png") == (buf.getvalue(), "x.png")


def test_large_images_are_reencoded_under_the_limit():
    noise = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    assert buf.tell() > 700_000
    data, name = fit_image(buf.getvalue(), 60_000, "iris-abc.png")
    assert len(data) <= 60_000 and name == "iris-abc.jpg"
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.width >= 64
