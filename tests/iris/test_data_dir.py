"""One data directory holds all state: journal, index, settings, weights cache (and the bot's heartbeat)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from iris.cli import main
from iris.config import Config, load_config, parse_config
from models.toy import world

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for name in ("IRIS_DATA", "IRIS_CACHE", "IRIS_CONFIG", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)


def _state_files(cfg: Config) -> list[Path]:
    return [Path(cfg.manager.journal_path), Path(cfg.index.path), cfg.cache_dir, cfg.heartbeat_path]


def test_relative_state_lives_in_the_data_dir(tmp_path):
    cfg = parse_config({"data_dir": str(tmp_path / "data")})
    assert all(p.parent == tmp_path / "data" for p in _state_files(cfg))
    assert cfg.cache_dir == tmp_path / "data" / "cache"
    assert Path(cfg.manager.journal_path).name == "iris-jobs.sqlite3"
    # absolute paths stay where they are written; a relative cache dir goes inside too
    cfg = parse_config(
        {"data_dir": str(tmp_path), "index": {"path": "/elsewhere/i.sqlite3"}, "weights": {"cache_dir": "w"}}
    )
    assert cfg.index.path == "/elsewhere/i.sqlite3" and cfg.cache_dir == tmp_path / "w"
    # every section's `path` or `*_path` is state: /settings' store too, when the config has one
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        for f in dataclasses.fields(value) if dataclasses.is_dataclass(value) else ():
            if f.name == "path" or f.name.endswith("_path"):
                assert Path(getattr(value, f.name)).is_absolute(), (section.name, f.name)


def test_iris_data_names_the_data_dir_and_the_key_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("IRIS_DATA", str(tmp_path / "env"))
    cfg = parse_config({})
    assert all(p.parent == tmp_path / "env" for p in _state_files(cfg))
    assert parse_config({"data_dir": str(tmp_path / "key")}).data_path == tmp_path / "key"
    monkeypatch.setenv("IRIS_CACHE", "/somewhere/cache")  # a cache named on its own still wins
    assert str(parse_config({}).cache_dir) == "/somewhere/cache"


def test_a_plain_run_keeps_state_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(ROOT / "config.toy.yaml")
    assert cfg.data_dir is None and not cfg.data_dir_chosen
    assert Path(cfg.manager.journal_path) == tmp_path / "iris-jobs.toy.sqlite3"
    assert Path(cfg.index.path) == tmp_path / "iris-index.toy.sqlite3"
    assert cfg.cache_dir == Path(os.path.expanduser("~")) / ".cache" / "iris"  # as before: shared weights
    assert load_config(ROOT / "config.yaml").data_dir is None  # the shipped file names none


def test_the_cli_writes_its_index_into_the_data_dir(tmp_path, monkeypatch, capsys):
    pics = tmp_path / "pics"
    pics.mkdir()
    world.make_image("red", "circle", 1).save(pics / "a.png")
    monkeypatch.chdir(pics)
    monkeypatch.setenv("IRIS_DATA", str(tmp_path / "state" / "iris"))  # made on first use
    code = main(["find", "a red circle", "--config", str(ROOT / "config.toy.yaml"), "--json"])
    out = capsys.readouterr().out
    assert code == 0 and [Path(h["path"]).name for h in json.loads(out)["hits"]] == ["a.png"]
    assert (tmp_path / "state" / "iris" / "iris-index.toy.sqlite3").is_file()
    assert sorted(p.name for p in pics.iterdir()) == ["a.png"]  # nothing written into the searched folder


def test_a_data_dir_that_cannot_be_made_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("IRIS_DATA", str(tmp_path / "file" / "data"))
    code = main(["find", "x", "--config", str(ROOT / "config.toy.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot make the data directory" in err and "Traceback" not in err
