"""The `iris` command end to end on the toy profile: real models, real files, exit codes and messages."""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import subprocess
import sys
import threading
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


@pytest.fixture
def shapes(tmp_path) -> Path:
    """Every colour × shape of the toy world, twice, named by what they show."""
    pics = tmp_path / "shapes"
    pics.mkdir()
    for colour in world.COLOURS:
        for shape in world.SHAPES:
            for seed in (1, 2):
                world.make_image(colour, shape, seed=seed).save(pics / f"{colour}_{shape}_{seed}.png")
    return pics


def _hit_names(out: str) -> list[str]:
    return [Path(h["path"]).stem.rsplit("_", 1)[0] for h in json.loads(out)["hits"]]


def test_find_takes_the_query_algebra(capsys, shapes, tmp_path):
    index = str(tmp_path / "idx.sqlite3")
    code, out, err = run(capsys, "find", str(shapes), "a square -blue", "-k", "6", "--index", index, "--json")
    assert code == 0, err
    assert json.loads(out)["terms"] == [{"text": "a square", "weight": 1.0}, {"text": "blue", "weight": -1.0}]
    names = _hit_names(out)
    assert all(n.endswith("_square") for n in names[:4]) and not any(n.startswith("blue") for n in names)
    # `+` adds a term and `:weight` sets how hard it pulls
    for weight, top in (("0.2", "red_circle"), ("5", "blue_square")):
        query = f"a red circle +a blue square:{weight}"
        code, out, _ = run(capsys, "find", str(shapes), query, "-k", "2", "--index", index, "--json")
        assert code == 0 and _hit_names(out) == [top] * 2, (query, _hit_names(out))
    code, _, err = run(capsys, "find", str(shapes), "a square -a square", "--index", index)
    assert code == 2 and "cancel each other" in err


def test_find_searches_with_an_image(capsys, shapes, tmp_path):
    query = tmp_path / "query.png"
    world.make_image("green", "triangle", seed=99).save(query)
    index = str(tmp_path / "idx.sqlite3")
    code, out, err = run(
        capsys, "find", str(shapes), "--image", str(query), "-k", "2", "--index", index, "--json"
    )
    assert code == 0, err
    assert _hit_names(out) == ["green_triangle"] * 2 and json.loads(out)["image"] == str(query)
    # an image and words together; and a bad image is one line before any model loads
    argv = ["find", "--image", str(query), "--index", index, "--json", "--config", TOY]
    code = main([*argv, "--", str(shapes), "-green"])  # after `--`, a query may start with "-"
    out = capsys.readouterr().out
    assert code == 0 and not _hit_names(out)[0].startswith("green")
    (tmp_path / "bad.png").write_text("not a picture")
    code, _, err = run(capsys, "find", str(shapes), "--image", str(tmp_path / "bad.png"), "--index", index)
    assert code == 2 and "not a PNG" in err
    code, _, err = run(capsys, "find", "--index", index)
    assert code == 2 and "--image" in err


def test_find_searches_the_current_folder_by_default(capsys, shapes, tmp_path, monkeypatch):
    monkeypatch.chdir(shapes)
    index = str(tmp_path / "idx.sqlite3")
    code, out, err = run(capsys, "find", "a yellow circle", "-k", "2", "--index", index, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["folder"] == str(shapes.resolve()) and _hit_names(out) == ["yellow_circle"] * 2
    assert all(Path(h["path"]).parent == shapes.resolve() for h in result["hits"])
    # --image with one word: the word is the folder
    monkeypatch.chdir(tmp_path)
    img = str(shapes / "red_square_1.png")
    code, out, _ = run(capsys, "find", "shapes", "--image", img, "-k", "1", "--index", index, "--json")
    assert code == 0 and _hit_names(out) == ["red_square"]
    code, _, err = run(capsys, "find", "a", "b", "c", "--index", index)
    assert code == 2 and "quote" in err


@pytest.mark.parametrize("where", ["before", "after"])
def test_common_options_before_or_after_the_command(capsys, toy_png, where):
    labels = ["--labels", "red circle, blue square"]
    common = ["--config", TOY, "--json"]
    argv = [*common, "classify", str(toy_png), *labels]
    if where == "after":
        argv = ["classify", str(toy_png), *labels, *common]
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)[0]["labels"][0]["label"] == "blue square"


def test_config_from_the_environment(capsys, toy_png, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ./config.yaml here
    monkeypatch.setenv("IRIS_CONFIG", TOY)
    code = main(["classify", str(toy_png), "--json"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)[0]["labels"][0]["label"] == "blue square"  # toy default labels


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


# -- every kind of path ------------------------------------------------------------------------------------
# Real files of each kind: a folder, a FIFO (opening one for reading blocks until a writer comes: the CLI
# must not hang), devices, a read-only place. Each case must give one line and exit 2, and leave what is
# there as it was.


def _read_only_dir(tmp_path: Path) -> Path:
    """A folder no file can be created in (root ignores permission bits: /proc refuses even root)."""
    if os.geteuid() == 0:
        return Path("/proc")
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d


def _fifo(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    os.mkfifo(path)
    return path


INPUT_KINDS = {
    "missing": (lambda d: d / "missing.png", "no such file"),
    "folder": (lambda d: (d / "dir.png").mkdir() or d / "dir.png", "folder"),
    "fifo": (lambda d: _fifo(d, "pipe.png"), "not a regular file"),
    "dev_zero": (lambda d: Path("/dev/zero"), "not a regular file"),
    "dev_urandom": (lambda d: Path("/dev/urandom"), "not a regular file"),
    "dev_null": (lambda d: Path("/dev/null"), "not a regular file"),
    "empty": (lambda d: (d / "empty.png").write_bytes(b"") or d / "empty.png", "empty"),
}


def run_bounded(capsys, *argv: str, unblock: Path | None = None) -> tuple[int, str, str]:
    """`run`, failing (not hanging) if the command blocks: e.g. in open() of a FIFO nobody writes to."""
    result: list[tuple[int, str, str]] = []
    worker = threading.Thread(target=lambda: result.append(run(capsys, *argv)), daemon=True)
    worker.start()
    worker.join(60)
    if worker.is_alive() and unblock is not None:
        os.close(os.open(unblock, os.O_RDWR | os.O_NONBLOCK))  # let the stuck open() return
        worker.join(10)
    assert result, f"iris {' '.join(argv)} hung"
    return result[0]


def _one_line(code: int, out: str, err: str, match: str) -> None:
    assert code == 2, (code, err)
    assert err.startswith("iris: error:") and match in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("kind", list(INPUT_KINDS))
def test_classify_input_of_every_kind(capsys, tmp_path, kind):
    make, match = INPUT_KINDS[kind]
    path = make(tmp_path)
    code, out, err = run_bounded(capsys, "classify", str(path), "--labels", "a, b", unblock=path)
    _one_line(code, out, err, match)


@pytest.mark.parametrize("kind", list(INPUT_KINDS))
def test_imagine_init_of_every_kind(capsys, tmp_path, kind):
    make, match = INPUT_KINDS[kind]
    path = make(tmp_path)
    out_png = tmp_path / "out.png"
    code, out, err = run_bounded(
        capsys, "imagine", "a fox", "--steps", "1", "--init", str(path), "-o", str(out_png), unblock=path
    )
    _one_line(code, out, err, match)
    assert not out_png.exists()


def _dev_full_link(d: Path) -> Path:
    link = d / "full.png"
    link.symlink_to("/dev/full")  # replacing the link would be harmless; writing through it is refused
    return link


OUTPUT_KINDS = {
    "folder": (lambda d: (d / "dir.png").mkdir() or d / "dir.png", "is a folder"),
    "fifo": (lambda d: _fifo(d, "pipe.png"), "not a regular file"),
    "device": (_dev_full_link, "not a regular file"),
    "missing_folder": (lambda d: d / "nope" / "out.png", "does not exist"),
    "read_only_folder": (lambda d: _read_only_dir(d) / "iris-out.png", "cannot write"),
    "unknown_extension": (lambda d: d / "out.jpgx", ".png"),
    "no_extension": (lambda d: d / "out", ".png"),
}


@pytest.mark.parametrize("kind", list(OUTPUT_KINDS))
def test_imagine_output_of_every_kind(capsys, tmp_path, kind):
    make, match = OUTPUT_KINDS[kind]
    path = make(tmp_path)
    before = os.lstat(path) if os.path.lexists(path) else None
    code, out, err = run_bounded(capsys, "imagine", "a fox", "--steps", "1", "-o", str(path), unblock=path)
    _one_line(code, out, err, match)
    after = os.lstat(path) if os.path.lexists(path) else None
    assert (before and (before.st_mode, before.st_ino)) == (after and (after.st_mode, after.st_ino))


def _null_device(d: Path) -> Path:
    """A character device like /dev/null, made in the test's folder: a broken build that opened it as a
    database would write its side files there, not into /dev."""
    path = d / "null.sqlite3"
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError):
        pytest.skip("cannot make a device node here")
    return path


INDEX_KINDS = {
    "text_file": (
        lambda d: (d / "notes.txt").write_text("not a database\n" * 10) and d / "notes.txt",
        "SQLite",
    ),
    "image_file": (lambda d: world.make_image("red", "circle", 1).save(d / "i.png") or d / "i.png", "SQLite"),
    "folder": (lambda d: (d / "idx").mkdir() or d / "idx", "folder"),
    "fifo": (lambda d: _fifo(d, "idx.sqlite3"), "not a regular file"),
    "device": (lambda d: _null_device(d), "not a regular file"),
    "read_only_folder": (lambda d: _read_only_dir(d) / "iris-idx.sqlite3", "cannot"),
}


@pytest.mark.parametrize("kind", list(INDEX_KINDS))
def test_find_index_of_every_kind(capsys, tmp_path, kind):
    make, match = INDEX_KINDS[kind]
    path = make(tmp_path)
    before = path.read_bytes() if path.is_file() else None
    pics = tmp_path / "pics"
    pics.mkdir()
    world.make_image("red", "circle", 1).save(pics / "a.png")
    code, out, err = run_bounded(
        capsys, "find", str(pics), "a red circle", "--index", str(path), unblock=path
    )
    _one_line(code, out, err, match)
    if before is not None:
        assert path.read_bytes() == before  # not turned into a database


def test_find_skips_fifos_in_the_folder(capsys, tmp_path):
    pics = tmp_path / "pics"
    pics.mkdir()
    world.make_image("red", "circle", 1).save(pics / "a.png")
    os.mkfifo(pics / "b.png")
    code, out, err = run_bounded(
        capsys, "find", str(pics), "a red circle", "--index", str(tmp_path / "i.sqlite3"), "--json"
    )
    assert code == 0, err
    assert [Path(h["path"]).name for h in json.loads(out)["hits"]] == ["a.png"]


@pytest.mark.parametrize(
    "argv,match",
    [
        (["imagine", "a fox", "--lr", "1e39"], "learning rate"),
        (["imagine", "a fox", "--lr", "nan"], "learning rate"),
        (["imagine", "a fox", "--lr", "inf"], "learning rate"),
        (["imagine", "a fox", "--lr", "1e-300"], "learning rate"),
        (["imagine", "a fox", "--steps", str(10**30)], "steps"),
        (["imagine", "a fox", "--steps", "0"], "steps"),
        (["imagine", "a fox", "--seed", str(2**64)], "seed"),
        (["imagine", "a fox", "--seed", "-1"], "seed"),
        (["imagine", "a fox", "--size", f"{10**40}x64"], "width"),
        (["imagine", "a fox", "--size", "64x-64"], "height"),
        (["imagine", "a fox", "--size", "1e40"], "--size"),
        (["imagine", "a fox", "--cutouts", str(10**20)], "cutouts"),
        (["imagine", "a fox", "--preview-every", "0"], "--preview-every"),
        (["imagine", "a fox", "--preview-every", str(10**30)], "--preview-every"),
        (["classify", "x.png", "--top-k", "0"], "--top-k"),
        (["classify", "x.png", "--top-k", str(10**30)], "--top-k"),
        (["find", ".", "x", "-k", "0"], "-k"),
        (["find", ".", "x", "-k", str(10**30)], "-k"),
    ],
)
def test_numbers_out_of_range_are_one_line(capsys, tmp_path, argv, match):
    code, out, err = run(capsys, *argv, *(["-o", str(tmp_path / "o.png")] if argv[0] == "imagine" else []))
    _one_line(code, out, err, match)


CONFIG_KINDS = {
    "missing": (lambda d: d / "none.yaml", "not found"),
    "folder": (lambda d: d, "folder"),
    "fifo": (lambda d: _fifo(d, "c.yaml"), "not a regular file"),
    "dev_zero": (lambda d: Path("/dev/zero"), "not a regular file"),
    "binary": (lambda d: (d / "c.yaml").write_bytes(b"\xff\xfe\x00" * 100) and d / "c.yaml", "UTF-8"),
}


@pytest.mark.parametrize("kind", list(CONFIG_KINDS))
def test_config_path_of_every_kind(capsys, tmp_path, kind):
    make, match = CONFIG_KINDS[kind]
    path = make(tmp_path)
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(main(["classify", "x.png", "--config", str(path)]))
    )
    worker.daemon = True
    worker.start()
    worker.join(60)
    if worker.is_alive():
        os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK))
        worker.join(10)
    assert result, "hung"
    _one_line(result[0], "", capsys.readouterr().err, match)


def test_a_damaged_file_gives_one_line_without_library_warnings(tmp_path):
    """Pillow warns (UserWarning) while reading a cut TIFF: the person still sees one line, no warnings."""
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, "TIFF", exif=b"Exif\0\0II*\0\x08\0\0\0")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(buf.getvalue()[:8])
    done = subprocess.run(
        [sys.executable, "-m", "iris", "classify", str(cut), "--labels", "a, b", "--config", TOY],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("iris: error:") and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_find_uses_the_configured_postgresql_index(capsys, shapes, tmp_path, pg_url):
    """Without --index, `iris find` opens the index the config names: index.url puts it in PostgreSQL."""
    import yaml

    from iris.config import parse_config
    from iris.index.pg import PgIndex

    config = yaml.safe_load((ROOT / "config.toy.yaml").read_text())
    config["index"] = {**config.get("index", {}), "url": pg_url}
    config["data_dir"] = str(tmp_path / "data")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["find", str(shapes), "a red circle", "-k", "2", "--config", str(path), "--json"])
    out = capsys.readouterr().out
    assert code == 0 and _hit_names(out)[0] == "red_circle"
    assert not list((tmp_path / "data").glob("*index*"))  # no SQLite file was made
    with PgIndex(pg_url, parse_config(config).index) as index:
        assert index.count() == len(list(shapes.iterdir()))
