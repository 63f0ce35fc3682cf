"""The `iris` command end to end on the toy profile: real models, real files, exit codes and messages."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from iris.cli import main
from models.toy import world

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "config.toy.yaml")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--config", TOY])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def toy_png(tmp_path) -> Path:
    s = world.make_image("blue", "square", seed=12)
    path = tmp_path / "blue_square.png"
    s.save(path)
    return path


def _bomb(path: Path, side: int = 20_000) -> Path:
    """A PNG header claiming side × side pixels, with a tiny (invalid) body: no pixels allocated."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def test_classify_json(capsys, toy_png):
    code, out, _ = run(
        capsys, "classify", str(toy_png), "--labels", "red circle, blue square, green triangle", "--json"
    )
    assert code == 0
    result = json.loads(out)
    assert result[0]["image"] == str(toy_png)
    assert result[0]["labels"][0]["label"] == "blue square"
    assert abs(sum(lb["probability"] for lb in result[0]["labels"]) - 1) < 1e-4


def test_classify_text_uses_default_labels(capsys, toy_png):
    code, out, _ = run(capsys, "classify", str(toy_png))
    assert code == 0
    assert out.splitlines()[1].strip().endswith("blue square")


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda d: d / "missing.png", "no such file"),
        (lambda d: (d / "page.png").write_text("<html></html>") and d / "page.png", "not a PNG"),
        (lambda d: _bomb(d / "bomb.png"), "20000"),
        (
            lambda d: (d / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40) and d / "cut.jpg",
            "damaged",
        ),
    ],
)
def test_classify_bad_input_is_one_clear_line(capsys, tmp_path, make, match):
    path = make(tmp_path)
    code, out, err = run(capsys, "classify", str(path), "--labels", "a, b")
    assert code == 2 and out == ""
    assert err.startswith("iris: error:") and match in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_classify_empty_labels(capsys, toy_png):
    code, _, err = run(capsys, "classify", str(toy_png), "--labels", " , ")
    assert code == 2 and "at least one label" in err


def test_find_indexes_once(capsys, tmp_path):
    pics = tmp_path / "pics"
    pics.mkdir()
    for i, s in enumerate(world.samples(24, seed=8)):
        s.image.save(pics / f"{i:02d}_{s.colour}_{s.shape}.png")
    index = str(tmp_path / "idx.sqlite3")
    code, out, _ = run(capsys, "find", str(pics), "a yellow circle", "-k", "3", "--index", index, "--json")
    first = json.loads(out)
    assert code == 0 and first["index"]["embedded"] == 24 and len(first["hits"]) == 3
    assert "yellow" in Path(first["hits"][0]["path"]).name
    code, out, _ = run(capsys, "find", str(pics), "a yellow circle", "-k", "3", "--index", index, "--json")
    second = json.loads(out)
    assert second["index"]["embedded"] == 0 and second["index"]["unchanged"] == 24
    assert second["hits"] == first["hits"]
    code, _, err = run(capsys, "find", str(tmp_path / "nope"), "x", "--index", index)
    assert code == 2 and "not a folder" in err


def test_imagine_writes_png_and_is_reproducible(capsys, tmp_path):
    outs = []
    for name in ("a.png", "b.png"):
        out = tmp_path / name
        code, stdout, _ = run(
            capsys, "imagine", "a green circle", "-o", str(out), "--steps", "6", "--seed", "11", "--json"
        )
        assert code == 0
        meta = json.loads(stdout)
        assert meta["seed"] == 11 and meta["steps"] == 6 and meta["output"] == str(out)
        assert (meta["width"], meta["height"]) == (64, 64)
        outs.append(out.read_bytes())
        assert Image.open(out).size == (64, 64)
    assert outs[0] == outs[1]


@pytest.mark.parametrize(
    "args,match",
    [
        (["x" * 10_000], "10,000 characters"),
        (["a fox", "--size", "big"], "--size"),
        (["a fox", "--steps", "100000"], "steps must be between"),
        (["a fox", "--init", "/nonexistent/init.png"], "no such file"),
        (["a fox", "-o", "/nonexistent/dir/out.png"], "output folder"),
    ],
)
def test_imagine_bad_input(capsys, args, match):
    code, _, err = run(capsys, "imagine", *args)
    assert code == 2 and match in err and "Traceback" not in err


def test_bad_config_is_one_line(capsys, tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("clip:\n  presett: toy\n")
    code = main(["classify", "x.png", "--config", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "unknown config key 'clip.presett'" in err


def test_console_script_help_and_exit_code(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "iris", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "imagine" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "iris", "classify", str(tmp_path / "none.png"), "--config", TOY],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "no such file" in done.stderr and "Traceback" not in done.stderr
