"""The README's examples, run as written in a copy of what a fresh clone holds: every shell line of the toy
profile and the Python manager snippet. A README example that stops working fails here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageChops

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# The Quick start's set-up steps: this test already runs inside such an installed environment.
SETUP = ("python3 -m venv", ". .venv/bin/activate", "pip install")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.DOTALL)


def toy_commands() -> list[str]:
    """The shell lines that run on the toy profile, set-up steps left out."""
    out = []
    for block in blocks("bash"):
        for line in block.splitlines():
            if "config.toy.yaml" not in line:
                continue
            if line.startswith(SETUP):
                line = " && ".join(p for p in line.split(" && ") if not p.strip().startswith(SETUP))
            out.append(line.strip())
    return out


COMMANDS = toy_commands()


def _shipped(paths: list[str]) -> list[str]:
    """The files a fresh clone has under `paths` (git's list; the files themselves without git)."""
    try:
        done = subprocess.run(
            ["git", "ls-files", "--", *paths], cwd=ROOT, capture_output=True, text=True, check=True
        )
        return done.stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return [
            str(p.relative_to(ROOT)) for x in paths for p in [ROOT / x, *(ROOT / x).rglob("*")] if p.is_file()
        ]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A folder holding a clone's examples and configs, and an environment whose `iris` is this tree's."""
    where = tmp_path_factory.mktemp("clone")
    for name in _shipped(["examples", "config.toy.yaml", "config.yaml"]):
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, where / name)
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "iris").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m iris "$@"\n')
    (bin_dir / "iris").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    }
    for name in ("IRIS_CONFIG", "IRIS_DATA", "IRIS_CACHE"):
        env.pop(name, None)
    return where, env


def _ranked(stdout: str) -> list[str]:
    """Names of the hits `iris find` printed, best first (text or --json)."""
    if stdout.lstrip().startswith("{"):
        return [Path(h["path"]).stem for h in json.loads(stdout)["hits"]]
    return [Path(m).stem for m in re.findall(r"^\s*\d+\.\s+[-\d.]+\s+(\S+)$", stdout, flags=re.M)]


# What each example is said to do, checked on its output (key: a piece of the command).
CHECKS = {
    'imagine "a red circle"': lambda d, out: Image.open(d / "red.png").size == (64, 64),
    "classify examples/blue_square.png": lambda d, out: out.splitlines()[1].strip().endswith("blue square"),
    '"a blue square" -k 5': lambda d, out: _ranked(out)[0] == "blue_square" and len(_ranked(out)) == 5,
    '"a square -blue"': lambda d, out: all(
        n.endswith("_square") and not n.startswith("blue") for n in _ranked(out)
    ),
    "--image examples/red_circle.png": lambda d, out: _ranked(out)[0] == "red_circle",
    "cd examples": lambda d, out: (
        _ranked(out)[0] == "yellow_triangle" and (d / "examples" / "iris-index.toy.sqlite3").is_file()
    ),
    'imagine "a yellow triangle': lambda d, out: Image.open(d / "y.png").size == (64, 64),
}


def test_the_readme_has_the_toy_examples():
    assert len(COMMANDS) >= 6
    for key in CHECKS:
        assert any(key in c for c in COMMANDS), f"no README example contains {key!r}"


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command(clone, command):
    where, env = clone
    done = subprocess.run(
        ["bash", "-c", command], cwd=where, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    for key, check in CHECKS.items():
        if key in command:
            assert check(where, done.stdout), done.stdout


def test_readme_manager_snippet(clone):
    where, env = clone
    (snippet,) = [b for b in blocks("python") if "InferenceManager" in b]
    (where / "snippet.py").write_text(snippet)
    done = subprocess.run(
        [sys.executable, "snippet.py"], cwd=where, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[:2] == ["blue", "square"]
    assert Image.open(where / "red-circle.png").size == (64, 64)


def test_the_sample_pictures_are_the_toy_worlds(clone, tmp_path):
    """`python examples/draw.py` (named in the README) redraws exactly the shipped pictures."""
    where, env = clone
    shipped = sorted((where / "examples").glob("*.png"))
    assert len(shipped) == 12
    fresh = tmp_path / "examples"
    fresh.mkdir()
    shutil.copy2(where / "examples" / "draw.py", fresh / "draw.py")
    subprocess.run(
        [sys.executable, "examples/draw.py"], cwd=tmp_path, env=env, check=True, capture_output=True
    )
    for png in shipped:
        a, b = Image.open(png).convert("RGB"), Image.open(fresh / png.name).convert("RGB")
        assert ImageChops.difference(a, b).getbbox() is None, png.name
