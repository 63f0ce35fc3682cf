"""iris.images on a small corpus of real files written at test time: good, odd, broken and hostile."""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from iris.errors import BadImage
from iris.images import ImageLimits, image_sha256, load_image, read_image_bytes, sniff

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)

Save = Callable[..., Path]


@pytest.fixture
def save(tmp_path: Path) -> Save:
    """save(image, "name.ext", **options) -> the path it was written to, under tmp_path."""

    def _save(im: Image.Image, name: str, **options: Any) -> Path:
        path = tmp_path / name
        im.save(path, **options)
        return path

    return _save


def encode(im: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """RGB noise: incompressible, so its files are big enough to cut and to exceed small byte limits."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8))


def close(pixel: object, expected: tuple[int, ...], tol: int = 12) -> bool:
    """Whether a getpixel() result is within tol of expected in every channel (lossy formats drift)."""
    assert isinstance(pixel, tuple)
    return all(abs(x - y) <= tol for x, y in zip(pixel, expected, strict=True))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width × height RGB pixels, with a tiny IDAT: no pixels are ever allocated."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# --- good files -------------------------------------------------------------------------------------------


def test_png_round_trip_is_exact(save: Save) -> None:
    original = noise((17, 11))
    im = load_image(save(original, "noise.png"))
    assert im.mode == "RGB"
    assert im.size == (17, 11)
    assert im.tobytes() == original.tobytes()


def test_jpeg_round_trip_from_path_and_bytes(save: Save) -> None:
    path = save(Image.new("RGB", (32, 24), (200, 40, 90)), "photo.jpg", quality=95)
    for im in (load_image(path), load_image(path.read_bytes(), name="photo.jpg")):
        assert im.mode == "RGB"
        assert im.size == (32, 24)
        assert close(im.getpixel((16, 12)), (200, 40, 90))


def test_webp(save: Save) -> None:
    im = load_image(save(Image.new("RGB", (20, 10), GREEN), "leaf.webp", lossless=True))
    assert (im.mode, im.size, im.getpixel((5, 5))) == ("RGB", (20, 10), GREEN)


@pytest.mark.parametrize("ext", ["gif", "webp"])
def test_animation_gives_its_first_frame(save: Save, ext: str) -> None:
    red, blue = Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)
    path = save(red, f"anim.{ext}", save_all=True, append_images=[blue], duration=100, loop=0)
    with Image.open(path) as check:
        assert getattr(check, "n_frames", 1) == 2  # the fixture really is animated
    im = load_image(path)
    assert im.mode == "RGB"
    assert close(im.getpixel((8, 8)), RED)


def test_exif_orientation_is_applied(save: Save) -> None:
    # 40×20, left half red, right half blue; orientation 6 means "rotate 90° clockwise to display".
    im = Image.new("RGB", (40, 20), BLUE)
    im.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    loaded = load_image(save(im, "phone.jpg", exif=exif, quality=95))
    assert loaded.size == (20, 40)
    assert close(loaded.getpixel((10, 5)), RED)  # the left half is now on top
    assert close(loaded.getpixel((10, 35)), BLUE)


def test_cmyk_jpeg_keeps_its_colour(save: Save) -> None:
    path = save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "print.jpg", quality=95)  # pure red ink
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    im = load_image(path)
    assert im.mode == "RGB"
    assert close(im.getpixel((8, 8)), RED, tol=20)


def test_16_bit_grey_png_is_scaled_not_clipped(save: Save) -> None:
    levels = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(levels), "depth.png")
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # really 16-bit on disk
    im = load_image(path)
    assert im.mode == "RGB"
    # Pillow's own convert() would give 255 for everything above 255.
    assert [im.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (3, 3, 3), (128, 128, 128), WHITE]


@pytest.mark.parametrize(
    ("mode", "ext", "clear", "solid"),
    [
        ("RGBA", "png", (0, 0, 0, 0), (0, 0, 255, 255)),
        ("LA", "png", (0, 0), (0, 255)),
        ("P", "gif", 0, 1),  # palette index 0 is transparent
    ],
)
def test_transparency_is_composited_over_white(
    save: Save, mode: str, ext: str, clear: object, solid: object
) -> None:
    im = Image.new(mode, (10, 10), solid)  # type: ignore[arg-type]
    if mode == "P":
        im.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
        im.info["transparency"] = 0
    im.paste(clear, (0, 0, 5, 10))  # type: ignore[arg-type]
    loaded = load_image(save(im, f"sticker.{ext}"))
    assert loaded.mode == "RGB"
    assert loaded.getpixel((2, 5)) == WHITE  # not black: the hidden colour must not show
    expected = (0, 0, 0) if mode == "LA" else BLUE
    assert loaded.getpixel((7, 5)) == expected


@pytest.mark.parametrize(("mode", "ext"), [("1", "bmp"), ("L", "tiff"), ("P", "png")])
def test_other_modes_become_rgb(save: Save, mode: str, ext: str) -> None:
    im = Image.new("L", (8, 8), 0)
    im.paste(255, (4, 0, 8, 8))
    loaded = load_image(save(im.convert(mode), f"plain.{ext}"))
    assert loaded.mode == "RGB"
    assert (loaded.getpixel((1, 1)), loaded.getpixel((6, 1))) == ((0, 0, 0), WHITE)


# --- bad files --------------------------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "cat.png"
    with pytest.raises(BadImage, match="no such file") as err:
        load_image(path)
    assert str(path) in err.value.message


def test_folder(tmp_path: Path) -> None:
    with pytest.raises(BadImage, match="folder"):
        load_image(tmp_path)


def test_empty_file_and_empty_bytes(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(BadImage, match=r"'.*empty\.jpg' is empty"):
        load_image(path)
    with pytest.raises(BadImage, match=r"^The image is empty\."):
        load_image(b"")


def test_html_saved_as_png(tmp_path: Path) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(b"<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>\n")
    with pytest.raises(BadImage, match=r"not a PNG.*web page") as err:
        load_image(path, name="cat.png")
    assert err.value.message.startswith("'cat.png'")


def test_truncated_jpeg(save: Save) -> None:
    path = save(noise((64, 64)), "cut.jpg", quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BadImage, match="damaged or incomplete") as err:
        load_image(path)
    assert "cut.jpg" in err.value.message


@pytest.mark.parametrize(
    ("width", "height", "max_pixels"),
    [
        (20_000, 20_000, 40_000_000),  # past twice Pillow's limit: Pillow refuses it while opening
        (8_000, 6_000, 40_000_000),  # under Pillow's limit, over ours
        (10_000, 10_000, 200_000_000),  # under ours, over Pillow's: its warning must not be ignored
    ],
)
def test_decompression_bomb_is_refused_from_its_header(
    tmp_path: Path, width: int, height: int, max_pixels: int
) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(width, height))
    filters = list(warnings.filters)
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(BadImage, match=rf"'.*bomb\.png' is too large: {width}×{height} pixels"):
        load_image(path, ImageLimits(max_pixels=max_pixels))
    assert limit == Image.MAX_IMAGE_PIXELS
    assert warnings.filters == filters


def test_pixel_limit_applies_to_real_images(save: Save) -> None:
    path = save(Image.new("RGB", (20, 20), RED), "small.png")
    with pytest.raises(BadImage, match="20×20 pixels"):
        load_image(path, ImageLimits(max_pixels=399))
    assert load_image(path, ImageLimits(max_pixels=400)).size == (20, 20)


def test_too_many_bytes(save: Save) -> None:
    path = save(noise((32, 32)), "big.png")  # ~3 KiB of noise
    limits = ImageLimits(max_bytes=1000)
    with pytest.raises(BadImage, match=r"'.*big\.png' is too large: 3 KiB \(the limit is 1000 bytes\)"):
        load_image(path, limits)
    with pytest.raises(BadImage, match="too large"):
        read_image_bytes(path, limits)
    with pytest.raises(BadImage, match=r"^'upload\.png' is too large"):
        load_image(path.read_bytes(), limits, name="upload.png")
    assert load_image(path, ImageLimits(max_bytes=path.stat().st_size)).size == (32, 32)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"])
def test_any_cut_or_corruption_gives_bad_image(fmt: str, caplog: pytest.LogCaptureFixture) -> None:
    data = encode(noise((12, 12)), fmt)
    step = max(1, len(data) // 25)
    damaged = [data[:n] for n in range(1, len(data), step)]
    damaged += [data[:n] + b"\xff" * 8 + data[n + 8 :] for n in range(8, len(data), step)]
    for sample in damaged:
        try:
            im = load_image(sample, name="x")
        except BadImage:
            continue
        assert im.mode == "RGB"  # some damage is survivable; a stray non-BadImage exception is not
    # Damage is expected, not a bug: nothing may reach the "unexpected error" warning with its traceback.
    assert not [r for r in caplog.records if r.name == "iris.images" and r.levelno >= logging.WARNING]


# --- helpers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"])
def test_sniff_real_files(fmt: str) -> None:
    expected = {"JPEG": "jpeg", "WEBP": "webp"}.get(fmt, fmt.lower())
    assert sniff(encode(Image.new("RGB", (4, 4)), fmt)) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"<html>",
        b"BMW is a car maker, not a bitmap",
        b"RIFF\x00\x00\x00\x00WAVEfmt ",
        b"GIF8",
        b"\xff\xd8",
    ],
)
def test_sniff_rejects_lookalikes(data: bytes) -> None:
    assert sniff(data) is None


def test_image_sha256() -> None:
    assert image_sha256(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert image_sha256(b"abc") == hashlib.sha256(b"abc").hexdigest()


def test_parallel_decodes_leave_the_warnings_machinery_alone() -> None:
    """catch_warnings is process-wide: used from several threads at once, one thread's exit can restore
    another's recording state, so later warnings vanish into a list forever. Decoding must not touch it."""
    import threading

    data = encode(noise((192, 192)), "PNG")
    filters = list(warnings.filters)
    show = (warnings.showwarning, warnings._showwarnmsg_impl)  # type: ignore[attr-defined]
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def decode_many() -> None:
        start.wait()
        try:
            for _ in range(40):
                assert load_image(data).size == (192, 192)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=decode_many) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert warnings.filters == filters
    assert (warnings.showwarning, warnings._showwarnmsg_impl) == show  # type: ignore[attr-defined]
