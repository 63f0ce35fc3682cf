"""Redraw the sample pictures beside this script: one of each toy colour and shape, from the seeded toy
world (`models/toy/world.py`), so they are the same on every machine. The README's examples use them.

    python examples/draw.py
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from anywhere in a clone, installed or not

from models.toy import world  # noqa: E402

SEED = 2024  # the seed every sample is drawn with


def draw(folder: Path = HERE) -> list[Path]:
    paths = []
    for colour in world.COLOURS:
        for shape in world.SHAPES:
            path = folder / f"{colour}_{shape}.png"
            world.make_image(colour, shape, seed=SEED).save(path, optimize=True)
            paths.append(path)
    return paths


if __name__ == "__main__":
    for p in draw():
        print(p.relative_to(Path.cwd()) if p.is_relative_to(Path.cwd()) else p)
