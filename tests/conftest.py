"""Shared fixtures: the shipped toy models (loaded once per session) and held-out toy images."""

from __future__ import annotations

import sys

import pytest
import torch

pytest_plugins = ["tests.pg_server"]  # pg_server, pg_url: a real PostgreSQL for the index tests

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _hub_offline_stays_in_its_test(monkeypatch):
    """In-process CLI runs of offline configs set HF_HUB_OFFLINE (and the hub's constant) for the whole
    process, as they should for a real run; in the test process each test starts from the original."""
    for var in ("HF_HUB_OFFLINE", "IRIS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="session")
def toy_clip():
    from models.clip import load_clip

    return load_clip("toy", device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def toy_vqgan():
    from models.toy import TOY_VQGAN_CONFIG, TOY_VQGAN_WEIGHTS
    from models.vqgan import load_vqgan

    return load_vqgan(TOY_VQGAN_CONFIG, TOY_VQGAN_WEIGHTS)


@pytest.fixture(scope="session")
def heldout():
    """240 fresh toy samples from a seed range no training run uses."""
    from models.toy import world

    return list(world.samples(240, seed=424_242))


@pytest.fixture(scope="session")
def toy_engine(toy_clip, toy_vqgan):
    """An engine holding the loaded toy models; `engine_for` gives each test one with its own config."""
    from pathlib import Path

    from iris.config import load_config
    from models.engine import Engine

    engine = Engine(load_config(Path(__file__).resolve().parents[1] / "config.toy.yaml"))
    engine._clip, engine._vqgan = toy_clip, toy_vqgan
    return engine


def engine_for(config, shared):
    """A new Engine with `config` that reuses `shared`'s loaded models (loading them again costs seconds)."""
    from models.engine import Engine

    engine = Engine(config)
    engine._clip, engine._vqgan = shared._clip, shared._vqgan
    return engine
