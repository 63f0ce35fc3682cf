"""The toy world and the shipped toy models: the quality bars that prove the engine offline."""

from __future__ import annotations

import numpy as np
import torch

from iris.index import ImageIndex, index_folder
from models.toy import world


def test_world_is_seeded_and_complete():
    a, b = world.sample(5), world.sample(5)
    assert a.image.tobytes() == b.image.tobytes() and a.label == b.label
    assert world.sample(6).image.tobytes() != a.image.tobytes()
    labels = {s.label for s in world.samples(300, seed=1)}
    assert labels == set(world.CLASSES) and len(world.CLASSES) == 12
    assert a.caption == f"a {a.colour} {a.shape}"


def test_dominant_colour_judge(heldout):
    assert all(world.dominant_colour(s.image) == s.colour for s in heldout)
    from PIL import Image

    assert world.dominant_colour(Image.new("RGB", (32, 32), (128, 128, 128))) is None  # nothing vivid


def test_toy_vqgan_reconstructs_and_keeps_colour(toy_vqgan, heldout):
    x = torch.from_numpy(np.stack([np.asarray(s.image) for s in heldout])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        rec = ((toy_vqgan.reconstruct(x * 2 - 1) + 1) / 2).clamp(0, 1)
    mae = (rec - x).abs().mean().item()
    from models.generate import to_pil

    kept = sum(world.dominant_colour(to_pil(r[None])) == s.colour for r, s in zip(rec, heldout, strict=True))
    assert len(heldout) >= 200
    assert mae <= 0.06, f"MAE {mae:.4f}"
    assert kept / len(heldout) >= 0.95, f"colour kept on {kept}/{len(heldout)}"


def test_search_finds_blue_squares(toy_clip, tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    samples = list(world.samples(200, seed=515_151))
    for i, s in enumerate(samples):
        s.image.save(folder / f"{i:03d}_{s.colour}_{s.shape}.png")
    assert sum(s.label == "blue square" for s in samples) >= 10
    with ImageIndex(tmp_path / "index.sqlite3") as index:
        report = index_folder(index, folder, lambda ims: toy_clip.encode_images(ims), toy_clip.name)
        assert report.embedded == 200
        hits = index.search(
            toy_clip.encode_texts(["a blue square"])[0], [f"folder:{folder.resolve()}"], toy_clip.name, k=10
        )
    names = [h.key for h in hits]
    assert names[0].endswith("_blue_square.png"), names
    assert sum(n.endswith("_blue_square.png") for n in names) >= 8, names
