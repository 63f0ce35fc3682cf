"""Four-up grids: pictures in, the same pictures cut back out; the seeds of a group."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from iris.errors import BadRequest
from iris.grid import SEED_BOUND, cell, make_grid, picture_seed
from models.toy import world


def test_cells_of_a_png_grid_are_the_pictures_exactly():
    pictures = [
        world.make_image(c, "circle", seed=i) for i, c in enumerate(("red", "yellow", "green", "blue"))
    ]
    buf = io.BytesIO()
    make_grid(pictures).save(buf, format="PNG")
    grid = Image.open(io.BytesIO(buf.getvalue()))
    assert grid.size == (128, 128)
    for i, picture in enumerate(pictures, 1):
        assert cell(grid, i, 4).tobytes() == picture.convert("RGB").tobytes()
    for bad in (0, 5):
        with pytest.raises(BadRequest):
            cell(grid, bad, 4)


def test_picture_seeds_follow_the_group_seed_and_stay_in_range():
    assert [picture_seed(7, i) for i in range(1, 5)] == [7, 8, 9, 10]
    assert picture_seed(SEED_BOUND - 1, 2) == 0
