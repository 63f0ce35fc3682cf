"""/describe's engine: the built-in vocabulary ranked by the real toy CLIP, cached once per model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from iris.config import parse_config
from models.describe import Describer, read_vocabulary
from models.engine import Engine
from models.manager import InferenceManager
from tests.conftest import engine_for


def test_the_vocabulary_is_a_few_thousand_phrases_in_every_category():
    entries = read_vocabulary()
    cats = {c for c, _ in entries}
    assert cats == {"shapes", "objects", "scenes", "styles", "media", "colours"}
    assert len(entries) >= 1500 and len({p for _, p in entries}) == len(entries)
    assert ("shapes", "a red circle") in entries and ("shapes", "a blue triangle") in entries


def test_toy_colour_and_shape_on_top_for_held_out_images(toy_clip, heldout, tmp_path):
    describer = Describer(tmp_path)
    feats = toy_clip.encode_images([s.image for s in heldout])
    found = describer.describe(toy_clip, feats, top_k=3)
    right = sum(d.phrases[0].text == s.caption for d, s in zip(found, heldout, strict=True))
    accuracy = right / len(heldout)
    print(f"/describe toy accuracy: {right}/{len(heldout)} = {accuracy:.1%}")
    assert accuracy >= 0.9
    first = found[0]
    assert first.prompt.startswith(first.phrases[0].text) and first.prompt.count(",") >= 1
    assert all(0 < p.score <= 1 for p in first.phrases) and first.phrases[0].score >= first.phrases[1].score


def test_the_vocabulary_is_embedded_once_per_model_then_read_from_disk(toy_clip, heldout, tmp_path):
    feats = toy_clip.encode_images([heldout[0].image])
    describer = Describer(tmp_path)
    before = toy_clip.text_forward_passes
    first = describer.describe(toy_clip, feats)
    used = toy_clip.text_forward_passes - before
    assert used >= 1 and describer.builds == 1
    describer.describe(toy_clip, feats)
    assert toy_clip.text_forward_passes - before == used  # memory
    assert len(list((tmp_path / "describe").glob("*.npz"))) == 1
    again = Describer(tmp_path)  # a new process: the disk copy, keyed by the model id
    second = again.describe(toy_clip, feats)
    assert again.builds == 0 and toy_clip.text_forward_passes - before == used
    assert second == first
    (next((tmp_path / "describe").glob("*.npz"))).write_bytes(b"not numpy")  # damaged: rebuilt
    third = Describer(tmp_path)
    assert third.describe(toy_clip, feats) == first and third.builds == 1


async def test_describe_runs_as_a_short_job_on_the_manager(toy_engine, tmp_path):
    from models.toy import world

    data = yaml.safe_load(Path("config.toy.yaml").read_text())
    data["manager"] = {"journal_path": str(tmp_path / "jobs.sqlite3")}
    data["weights"] = {"cache_dir": str(tmp_path / "cache")}
    cfg = parse_config(data)
    engine = engine_for(cfg, toy_engine)
    assert isinstance(engine, Engine)
    async with InferenceManager(cfg, engine) as manager:
        got = await manager.describe(world.make_image("green", "triangle", seed=11), top_k=4)
    assert got.phrases[0].text == "a green triangle" and len(got.phrases) == 4
    assert isinstance(got.phrases[0].score, float) and np.isfinite(got.phrases[0].score)


def test_iris_describe_on_the_command_line(capsys, tmp_path):
    import json

    from iris.cli import main
    from models.toy import world

    path = tmp_path / "shape.png"
    world.make_image("yellow", "circle", seed=3).save(path)
    data = yaml.safe_load(Path("config.toy.yaml").read_text())
    data["weights"] = {"cache_dir": str(tmp_path / "cache")}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(data))
    assert main(["describe", str(path), "--top-k", "2", "--json", "--config", str(cfg)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result[0]["phrases"][0]["phrase"] == "a yellow circle" and len(result[0]["phrases"]) == 2
    assert result[0]["prompt"].startswith("a yellow circle")
    assert main(["describe", str(tmp_path / "missing.png"), "--config", str(cfg)]) != 0
    assert "Traceback" not in capsys.readouterr().err
