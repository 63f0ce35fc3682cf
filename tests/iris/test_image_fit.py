"""load_image(fit=...): reduced while decoding to CLIP's size, and long strips cropped, never blown up."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, JpegImagePlugin

from iris.images import MAX_ASPECT, ImageLimits, load_image


def _jpeg(width: int, height: int) -> bytes:
    ramp = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    pixels = np.broadcast_to(ramp, (height, width, 3)).copy()
    pixels[..., 2] = np.linspace(255, 0, height, dtype=np.uint8)[:, None]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_a_big_jpeg_is_decoded_at_a_fraction_of_its_size(monkeypatch):
    loaded = []
    load = JpegImagePlugin.JpegImageFile.load

    def watched(self):  # the real decoder: which size did it decode at?
        loaded.append(self.size)
        return load(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", watched)
    image = load_image(_jpeg(4000, 3000), fit=224)
    assert image.mode == "RGB" and image.size == (299, 224)
    assert loaded and max(loaded[0]) <= 500  # DCT scaling at 1/8: 500 × 375, never 4000 × 3000
    assert load_image(_jpeg(4000, 3000)).size == (4000, 3000)  # without fit: as before


def test_a_long_strip_is_cropped_not_blown_up():
    strip = Image.new("L", (16, 2_500_000), 128)  # 40 million pixels: inside the pixel limit
    buf = io.BytesIO()
    strip.save(buf, format="PNG")
    image = load_image(buf.getvalue(), ImageLimits(max_pixels=40_000_000), fit=224)
    assert image.mode == "RGB" and image.size == (16, 16 * MAX_ASPECT)


def test_small_and_transparent_images_keep_their_size():
    rgba = Image.new("RGBA", (100, 60), (255, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    image = load_image(buf.getvalue(), fit=224)
    assert image.size == (100, 60) and image.getpixel((5, 5)) == (255, 255, 255)
