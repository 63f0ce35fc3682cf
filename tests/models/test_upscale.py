"""Upscale: an ESRGAN-architecture network (tiny, randomly initialised, built here: no weights can be
downloaded) loaded through the same loader as real weights, and the Lanczos fallback, labelled."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from spandrel.architectures.ESRGAN import ESRGAN

from iris.config import parse_config
from iris.errors import WeightsCorrupt, WeightsUnavailable
from models.toy import world
from models.upscale import LANCZOS_LABEL, lanczos, load_upscaler, upscale
from models.weights import UPSCALER_PRESETS, download, upscaler_path
from tests.conftest import engine_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_esrgan(tmp_path) -> Path:
    torch.manual_seed(0)
    net = ESRGAN(num_filters=8, num_blocks=1, scale=2)  # the RRDBNet of ESRGAN, 2 upsampling convs
    path = tmp_path / "tiny-esrgan-x2.pth"
    torch.save(net.state_dict(), path)
    return path


def config(tmp_path: Path, **imagine):
    data = yaml.safe_load((ROOT / "config.toy.yaml").read_text())
    data["imagine"].update(imagine)
    data["weights"] = {"cache_dir": str(tmp_path / "cache"), "offline": True}
    return parse_config(data)


def test_the_network_doubles_the_side_and_is_named(tiny_esrgan):
    model = load_upscaler(tiny_esrgan, torch.device("cpu"))
    image = world.make_image("red", "circle", seed=1)
    up = upscale(image, model)
    out = Image.open(io.BytesIO(up.png))
    assert out.size == (128, 128) == (up.width, up.height)
    assert "ESRGAN ×2" in up.label and "Lanczos" not in up.label
    # the network's own output, not a resampling: a random network does not match Lanczos
    ref = np.asarray(lanczos(image), dtype=np.float32)
    assert np.abs(np.asarray(out, dtype=np.float32) - ref).mean() > 5


def test_the_fallback_is_lanczos_and_says_so():
    image = world.make_image("blue", "square", seed=2)
    up = upscale(image, None)
    assert up.label == LANCZOS_LABEL == "upscaled with Lanczos (no super-resolution model installed)"
    assert Image.open(io.BytesIO(up.png)).tobytes() == lanczos(image).tobytes()


def test_files_that_are_not_a_super_resolution_model(tmp_path):
    with pytest.raises(WeightsUnavailable):
        load_upscaler(tmp_path / "missing.pth", torch.device("cpu"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a model")
    with pytest.raises(WeightsCorrupt):
        load_upscaler(junk, torch.device("cpu"))


def test_the_engine_uses_the_configured_model_or_falls_back(tmp_path, tiny_esrgan, toy_engine, caplog):
    image = world.make_image("green", "triangle", seed=3)
    with_model = engine_for(config(tmp_path, upscaler=str(tiny_esrgan)), toy_engine)
    assert "ESRGAN" in with_model.upscale(image).label
    none = engine_for(config(tmp_path), toy_engine)
    assert none.upscale(image).label == LANCZOS_LABEL
    # a preset not in the cache, offline: one warning, then the labelled fallback
    missing = engine_for(config(tmp_path, upscaler="RealESRGAN_x2plus"), toy_engine)
    assert missing.upscale(image).label == LANCZOS_LABEL
    assert missing.upscale(image).label == LANCZOS_LABEL
    assert sum("falls back to Lanczos" in r.message for r in caplog.records) == 1


def test_the_upscaler_preset_goes_through_the_weights_registry(tmp_path, tiny_esrgan):
    assert "RealESRGAN_x2plus" in UPSCALER_PRESETS
    with pytest.raises(WeightsUnavailable, match="iris download RealESRGAN_x2plus"):
        upscaler_path("RealESRGAN_x2plus", tmp_path, offline=True)
    cached = upscaler_path("RealESRGAN_x2plus", tmp_path, download=False)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(tiny_esrgan.read_bytes())  # as if downloaded: the registry finds it offline
    assert download(["RealESRGAN_x2plus"], tmp_path, offline=True) == [cached]
    assert load_upscaler(cached, torch.device("cpu")).scale == 2
