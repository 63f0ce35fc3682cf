"""Four-up pictures: several same-size pictures in one grid image, and each one cut back out of it.

The grid is the one picture a grouped job journals and posts; a cell cut from its PNG is the picture
exactly (PNG is lossless), so the U and V buttons work from the journal alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

from iris.errors import BadRequest

SEED_BOUND = 2**63  # seeds are 0 ≤ seed < 2^63 (ImagineRequest.validated)


def picture_seed(seed: int, index: int) -> int:
    """The seed of picture `index` (1-based) of a group started with `seed`: seed, seed + 1, ..."""
    return (seed + index - 1) % SEED_BOUND


def grid_shape(count: int) -> tuple[int, int]:
    """(columns, rows) for `count` pictures: 4 → 2×2."""
    cols = math.ceil(math.sqrt(count))
    return cols, math.ceil(count / cols)


def make_grid(images: Sequence[Image.Image]) -> Image.Image:
    """Pictures of one size, left to right then top to bottom, with no gaps."""
    w, h = images[0].size
    cols, rows = grid_shape(len(images))
    grid = Image.new("RGB", (w * cols, h * rows))
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB"), ((i % cols) * w, (i // cols) * h))
    return grid


def cell(grid: Image.Image, index: int, count: int) -> Image.Image:
    """Picture `index` (1-based) of a grid of `count`."""
    if not 1 <= index <= count:
        raise BadRequest(f"there is no picture {index} in this grid of {count}")
    cols, rows = grid_shape(count)
    w, h = grid.width // cols, grid.height // rows
    x, y = ((index - 1) % cols) * w, ((index - 1) // cols) * h
    return grid.crop((x, y, x + w, y + h))
