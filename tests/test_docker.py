"""The self-host files, checked statically (no Docker engine in the tests): the Dockerfile's layers,
user and health check, compose.yaml, .dockerignore and the constraints file."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def first(kind: str, pred=lambda args: True) -> int:
    return next(i for i, (k, a) in enumerate(instructions()) if k == kind and pred(a))


def test_dependencies_are_installed_before_the_source_is_copied():
    steps = instructions()
    copies = [(i, a.split()) for i, (k, a) in enumerate(steps) if k == "COPY"]
    deps = first("RUN", lambda a: "pip install" in a and "-c constraints.txt" in a)
    source = first("COPY", lambda a: a.split()[0] == ".")
    project = first("RUN", lambda a: "pip install" in a and "--no-deps" in a)
    assert deps < source < project
    # what the dependency layer sees: only the project's metadata and the pins, no source
    before = [f for i, words in copies if i < deps for f in words[:-1]]
    assert sorted(before) == ["constraints.txt", "pyproject.toml"]
    assert not any("--no-deps" in a for k, a in steps[:source] if k == "RUN")


def test_the_dependency_step_installs_exactly_pyprojects_dependencies(tmp_path):
    run = instructions()[first("RUN", lambda a: "tomllib" in a)][1]
    words = shlex.split(run)
    at = words.index("python")  # the one-liner that lists pyproject's dependencies (torch comes first)
    assert words[at + 1] == "-c"
    code = words[at + 2]
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    wanted = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert done.stdout.split("\n")[:-1] == wanted and len(wanted) >= 10


def test_constraints_pin_every_dependency_within_pyproject():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"not a pin: {line}"
            pins[canonicalize_name(name)] = version.strip()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    for req in reqs:
        version = pins.get(canonicalize_name(req.name))
        assert version is not None, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} breaks {req}"


def test_the_container_runs_as_a_user_that_owns_the_data_volume():
    steps = instructions()
    user = [a for k, a in steps if k == "USER"][-1]
    assert user not in ("root", "0")
    made = next(a for k, a in steps if k == "RUN" and "useradd" in a)
    assert re.search(rf"chown\s+{user}(:{user})?\s+(\S+\s+)*/data\b", made), made
    assert first("RUN", lambda a: "useradd" in a) < first("USER") < first("CMD")
    env = " ".join(a for k, a in steps if k == "ENV")
    assert "IRIS_DATA=/data" in env and "IRIS_CONFIG=/config/config.yaml" in env
    assert "/data" in next(a for k, a in steps if k == "VOLUME")
    assert "IRIS_CACHE" not in env  # the cache follows the data directory: /data/cache


def test_the_config_is_mounted_not_baked_in():
    steps = instructions()
    cmd = [a for k, a in steps if k == "CMD"][-1]
    assert yaml.safe_load(cmd) == ["iris", "run"]  # the config comes from IRIS_CONFIG
    assert not any(k == "COPY" and "config.yaml" in a.split() for k, a in steps)
    assert ignored("config.yaml")


def test_the_healthcheck_reads_the_heartbeat():
    check = [a for k, a in instructions() if k == "HEALTHCHECK"][-1]
    options, _, cmd = check.partition("CMD")
    assert yaml.safe_load(cmd.strip()) == ["iris", "status", "--local"]
    start = re.search(r"--start-period=(\d+)(s|m)", options)
    assert start and int(start[1]) * (60 if start[2] == "m" else 1) >= 120  # models load before the beats


def test_compose_reads_the_token_from_env_and_reserves_a_gpu():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    # `docker compose up` starts the services of no profile: exactly the one bot, as on one machine
    (service,) = [s for s in compose["services"].values() if not s.get("profiles")]
    env_file = service["env_file"]
    assert ".env" in ([env_file] if isinstance(env_file, str) else env_file)
    assert "DISCORD_TOKEN" not in str(service.get("environment", ""))
    volumes = service["volumes"]
    data = next(v for v in volumes if v.split(":")[1] == "/data")
    assert data.split(":")[0] in compose["volumes"]  # a named volume, kept across rebuilds
    assert any(v.rsplit(":", 2)[1] == "/config/config.yaml" and v.endswith(":ro") for v in volumes)
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert service["build"] == "."


# -- .dockerignore -----------------------------------------------------------------------------------------


def _regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern rules: anchored at the context root, `*` within a segment, `**` across them,
    and a match of a folder covers what is inside it."""
    out = ""
    for part in re.split(r"(\*\*/?|\*|\?)", pattern.strip("/")):
        out += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
    return re.compile(out + "(/.*)?")


def ignored(path: str) -> bool:
    result = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if _regex(line.lstrip("!")).fullmatch(path):
            result = not negate
    return result


def test_dockerignore_keeps_out_environments_caches_state_and_secrets():
    for path in [
        ".venv/bin/python",
        ".venv-ci/lib/x.py",
        ".git/HEAD",
        "iris/__pycache__/cli.cpython-312.pyc",
        "models/toy/__pycache__/world.cpython-311.pyc",
        ".pytest_cache/v/cache",
        ".mypy_cache/3.11/iris.json",
        ".ruff_cache/x",
        "iris_bot.egg-info/PKG-INFO",
        "iris-jobs.sqlite3",
        "iris-index.toy.sqlite3",
        "iris-jobs.sqlite3-wal",
        "iris-jobs.sqlite3.lock",
        "examples/iris-index.toy.sqlite3",
        "iris-heartbeat.json",
        ".env",
        "config.yaml",
    ]:
        assert ignored(path), path
    # what the image needs stays in: the copied files, the source, the shipped toy models
    for path in [
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        "iris/cli/__init__.py",
        "bot/run.py",
        "models/toy/iris-toy-clip.safetensors",
        "models/toy/iris-toy-vqgan.yaml",
        "config.toy.yaml",
    ]:
        assert not ignored(path), path
    assert (ROOT / "models/toy/iris-toy-clip.safetensors").is_file()


def test_the_installed_package_has_every_data_file_the_code_reads():
    """The image installs the project with `pip install .`, which copies only declared package data: a
    data file left out works from a clone and fails in the container."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    try:
        shipped = subprocess.run(
            ["git", "ls-files", "iris", "models", "bot"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: the files on disk
        shipped = [
            str(p.relative_to(ROOT))
            for d in ("iris", "models", "bot")
            for p in (ROOT / d).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        ]
    for name in (Path(f) for f in shipped if not f.endswith(".py")):
        patterns = data.get(".".join(name.parent.parts), [])
        assert any(name.match(p) for p in patterns), f"{name} is not in pyproject's package-data"


def test_the_scale_profile_adds_the_broker_the_database_and_a_gpu_worker():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    scale = {name: s for name, s in compose["services"].items() if "scale" in s.get("profiles", [])}
    assert {"nats", "postgres", "worker"} <= set(scale)
    nats = scale["nats"]
    assert "-js" in nats["command"]
    store = nats["command"][nats["command"].index("-sd") + 1]
    assert any(v.split(":")[1] == store and v.split(":")[0] in compose["volumes"] for v in nats["volumes"])
    assert "pgvector" in scale["postgres"]["image"]
    worker = scale["worker"]
    assert worker["command"][-1] == "worker"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    # the scale config the README names selects the broker and PostgreSQL, with the compose host names
    config = yaml.safe_load((ROOT / "config.scale.yaml").read_text())
    assert config["manager"]["backend"] == "nats"
    assert "//nats:" in config["nats"]["url"] and "@postgres/" in config["index"]["url"]
