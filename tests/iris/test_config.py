from __future__ import annotations

from pathlib import Path

import pytest

from iris.config import Config, load_config, parse_config
from iris.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_loads():
    cfg = load_config(ROOT / "config.yaml")
    assert isinstance(cfg, Config)
    assert cfg.clip.preset == "ViT-B-32/laion2b_s34b_b79k"
    assert cfg.vqgan.preset == "vqgan_imagenet_f16_16384"
    assert cfg.imagine.steps == 300 and cfg.images.max_bytes == 25 * 2**20


def test_toy_profile_loads_and_is_offline():
    cfg = load_config(ROOT / "config.toy.yaml")
    assert cfg.clip.preset == "toy" and cfg.vqgan.preset == "toy"
    assert cfg.weights.offline and cfg.device == "cpu"
    assert len(cfg.classify.default_labels) == 12


def test_defaults_equal_shipped_file_where_it_is_silent():
    assert parse_config({}) == Config()


@pytest.mark.parametrize(
    "data,match",
    [
        ({"clip": {"presett": "x"}}, "unknown config key 'clip.presett'"),
        ({"imagine": {"steps": "many"}}, "imagine.steps: expected int"),
        ({"imagine": {"steps": True}}, "imagine.steps"),
        ({"imagine": {"steps": -1}}, "imagine.steps must be positive"),
        ({"precision": "fp8"}, "precision"),
        ({"device": "tpu"}, "device"),
        ({"classify": {"default_labels": "cats"}}, "expected a list"),
        ({"imagine": {"generator": "diffusion"}}, "imagine.generator"),
        ({"imagine": {"steps": 2000}}, "max_steps"),
        ([1, 2], "expected a mapping"),
        ({"discord": {"find_download_concurrency": 0}}, "find_download_concurrency must be positive"),
        ({"clip": {"text_cache": -1}}, "text_cache must be at least 0"),
        ({"discord": {"dev_guilds": ["my server"]}}, r"dev_guilds\[0\]: 'my server' is not a Discord id"),
        ({"discord": {"guilds": {"abc": {}}}}, "not a Discord id"),
        ({"discord": {"guilds": {"123456789012345678": {"max_queued_per_user": -1}}}}, "at least 0"),
        ({"discord": {"none_threshold": 1.5}}, "none_threshold must be at most 1"),
        ({"imagine": {"lr": float("nan")}}, "finite"),
        ({"manager": {"job_deadline_s": 0}}, "job_deadline_s must be positive"),
        ({"manager": {"preload": True}}, "unknown config key 'manager.preload'"),  # run always preloads
        ({"manager": {"retention_days": -1}}, "retention_days must be at least 0"),
    ],
)
def test_bad_config_names_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(data)


def test_float_accepts_int_and_files(tmp_path):
    assert parse_config({"imagine": {"lr": 1}}).imagine.lr == 1.0
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("clip: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_cache_dir(monkeypatch):
    monkeypatch.setenv("IRIS_CACHE", "/somewhere/cache")
    assert str(parse_config({}).cache_dir) == "/somewhere/cache"
    assert str(parse_config({"weights": {"cache_dir": "/x"}}).cache_dir) == "/x"


def test_unquoted_ids_are_read_as_ids():
    cfg = parse_config({"discord": {"dev_guilds": [123456789012345678]}})
    assert cfg.discord.dev_guilds == ["123456789012345678"]


@pytest.mark.parametrize(
    "data,match",
    [
        ({"classify": {"default_labels": []}}, "classify.default_labels: give at least one label"),
        ({"classify": {"default_labels": [" ", ""]}}, "classify.default_labels: give at least one label"),
        ({"classify": {"default_labels": [f"l{i}" for i in range(51)]}}, "default_labels: 51 labels"),
        (
            {"discord": {"guilds": {"123456789012345678": {"default_labels": ["x" * 500] * 80}}}},
            r"discord.guilds.123456789012345678.default_labels: labels are limited to 100 characters",
        ),
        ({"discord": {"guilds": {"123456789012345678": {"default_labels": []}}}}, "at least one label"),
    ],
)
def test_label_lists_in_the_config_pass_the_label_check(data, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(data)
