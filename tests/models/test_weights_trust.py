"""Using what the cache holds: a full unpickle only for checked bytes; `iris download` with no network."""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from iris.config import parse_config
from iris.errors import WeightsCorrupt
from models import weights
from models.engine import Engine
from models.toy import TOY_VQGAN_CONFIG, TOY_VQGAN_WEIGHTS
from models.weights import Source, VQGANPreset, WeightFile
from models.weights.verify import sidecar


def pickled_ckpt() -> bytes:
    """The toy VQGAN as an old Lightning file that pickles more than tensors (its hyper-parameters)."""
    buf = io.BytesIO()
    sd = load_file(str(TOY_VQGAN_WEIGHTS))
    torch.save({"state_dict": sd, "hyper_parameters": argparse.Namespace(lr=4.5e-6)}, buf)
    return buf.getvalue()


CKPT = pickled_ckpt()
CKPT_SHA = hashlib.sha256(CKPT).hexdigest()


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IRIS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A folder standing for a public host (file:// sources): the toy config and the pickling checkpoint."""
    folder = tmp_path / "origin"
    folder.mkdir()
    (folder / "model.yaml").write_bytes(TOY_VQGAN_CONFIG.read_bytes())
    (folder / "last.ckpt").write_bytes(CKPT)
    return folder


def _preset(monkeypatch: pytest.MonkeyPatch, origin: Path, sha256: str | None = None) -> None:
    preset = VQGANPreset(
        "tiny",
        "the toy VQGAN",
        WeightFile("model.yaml", "config", (Source((origin / "model.yaml").as_uri()),)),
        WeightFile("last.ckpt", "checkpoint", (Source((origin / "last.ckpt").as_uri()),), sha256),
        len(CKPT),
        4,
    )
    monkeypatch.setitem(weights.VQGAN_PRESETS, "tiny", preset)


def _engine(tmp_path: Path, **vqgan: object) -> Engine:
    cfg = parse_config(
        {
            "device": "cpu",
            "weights": {"cache_dir": str(tmp_path / "cache")},
            "clip": {"preset": "toy"},
            "vqgan": {"preset": "tiny", **vqgan},
        }
    )
    return Engine(cfg)


def test_checkpoint_verified_at_download_is_unpickled(tmp_path, monkeypatch, origin):
    _preset(monkeypatch, origin)
    vqgan = _engine(tmp_path).vqgan
    assert vqgan is not None and vqgan.codebook.shape == (512, 32)
    ckpt = tmp_path / "cache/vqgan/tiny/last.ckpt"
    assert sidecar(ckpt).read_text().split()[0] == CKPT_SHA
    # A later start: the recorded sha256 still matches, so the file is still trusted.
    assert _engine(tmp_path).vqgan is not None


def test_known_sha256_makes_a_cached_file_trusted(tmp_path, monkeypatch, origin):
    _preset(monkeypatch, origin, sha256=CKPT_SHA)
    folder = tmp_path / "cache/vqgan/tiny"
    folder.mkdir(parents=True)
    (folder / "model.yaml").write_bytes(TOY_VQGAN_CONFIG.read_bytes())
    (folder / "last.ckpt").write_bytes(CKPT)  # put there by hand: no record, but the digest is known
    assert _engine(tmp_path).vqgan is not None


def test_unrecorded_pickling_checkpoint_needs_trust_pickle(tmp_path, monkeypatch, origin):
    _preset(monkeypatch, origin)
    _engine(tmp_path).vqgan  # noqa: B018 -- downloads and records
    ckpt = tmp_path / "cache/vqgan/tiny/last.ckpt"
    sidecar(
        ckpt
    ).unlink()  # e.g. a cache copied without its records: nothing says these are the bytes checked
    with pytest.raises(WeightsCorrupt) as info:
        _engine(tmp_path).vqgan  # noqa: B018
    assert "trust_pickle" in info.value.message and "sha256" in info.value.message
    assert _engine(tmp_path, trust_pickle=True).vqgan is not None


def test_download_with_no_network_is_one_clear_line(tmp_path, monkeypatch, capsys, caplog):
    from iris import cli

    def no_network(*args: object, **kwargs: object) -> object:
        # Stands in for a machine with no network (the test machine may have one to package registries).
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    config = tmp_path / "config.yaml"
    config.write_text(f"weights: {{cache_dir: {tmp_path / 'cache'}}}\n")
    for names in ([], ["vqgan_imagenet_f16_16384"]):
        assert cli.main(["download", "--config", str(config), *names]) == 2
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert out == "" and len(lines) == 1, err
        assert lines[0].startswith("iris: error:") and "Traceback" not in err
        assert "no network" in lines[0] or "resolve" in lines[0], lines[0]
        # No retry warnings (the hub client's back-off would log one per attempt, for ~25 s per file).
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        caplog.clear()
    # The VQGAN's line names each of its sources and the ways out.
    assert "heibox.uni-heidelberg.de" in lines[0] and "github.com/Eleiber" in lines[0]
    assert "weights.mirrors" in lines[0] and "vqgan.checkpoint" in lines[0]


def test_cache_dir_has_one_home(monkeypatch, tmp_path):
    monkeypatch.delenv("IRIS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert parse_config({}).cache_dir == tmp_path / "x" / "iris"
    monkeypatch.setenv("IRIS_CACHE", str(tmp_path / "a"))
    assert parse_config({}).cache_dir == tmp_path / "a"
