"""Pictures for /find answers: a small thumbnail kept per indexed image, and the numbered result grid.

The grid is drawn from the stored thumbnails only: Discord's CDN links expire after about a day, and a
query never downloads anything. Both run in a worker thread (PIL work stays off the event loop).
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

from iris.images import sniff

THUMB_SIDE = 256  # px: the longest side of a stored thumbnail
THUMB_QUALITY = 75  # WebP quality of a stored thumbnail: about 5 KB for a photo (JPEG at 80: 8 KB)
THUMB_METHOD = 2  # WebP effort: 6 ms a thumbnail at 5.4 KB; the default 4 costs 10 ms for 5.1 KB
CELL = 128  # px: the side of one grid cell
COLUMNS = 3
BACKGROUND = (32, 34, 37)  # Discord's dark grey: a cell with no picture


def thumbnail(image: Image.Image) -> bytes:
    """A WebP of at most THUMB_SIDE px a side, from an RGB image."""
    small = image.copy()
    small.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    small.convert("RGB").save(buf, format="WEBP", quality=THUMB_QUALITY, method=THUMB_METHOD)
    return buf.getvalue()


def grid(thumbs: list[bytes | None]) -> bytes:
    """Numbered thumbnails, 3 per row, as one PNG (a missing or unreadable thumbnail is a grey cell)."""
    cols = min(COLUMNS, max(1, len(thumbs)))
    rows = (len(thumbs) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * CELL, rows * CELL), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, data in enumerate(thumbs):
        x, y = (i % cols) * CELL, (i // cols) * CELL
        im = _open(data)
        if im is not None:
            im.thumbnail((CELL, CELL))
            sheet.paste(im, (x + (CELL - im.width) // 2, y + (CELL - im.height) // 2))
        draw.rectangle((x, y, x + 22, y + 16), fill=(0, 0, 0))
        draw.text((x + 4, y + 2), str(i + 1), fill=(255, 255, 255))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def _open(data: bytes | None) -> Image.Image | None:
    """Our own thumbnail, from the index: still checked (WebP or JPEG, small) since the file is on disk."""
    if not data or sniff(data) not in ("webp", "jpeg"):
        return None
    try:
        with Image.open(io.BytesIO(data), formats=["WEBP", "JPEG"]) as im:
            if max(im.size) > THUMB_SIDE:
                return None
            return im.convert("RGB")
    except (OSError, ValueError):
        return None
