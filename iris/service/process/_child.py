"""Starting and stopping one device child (`python -m models.serve`), from the parent's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import iris
from iris.config import Automatic, Config
from iris.errors import IrisError
from iris.service.process._link import frame, read_message

log = logging.getLogger(__name__)

SPAWN_TIMEOUT_S = 120.0  # a child must say hello (torch imported, journal open) within this many seconds
SOURCE_ROOT = Path(iris.__file__).resolve().parents[1]  # holds iris/ and models/ side by side


class DiedAtStart(Exception):
    """The child ended (or went silent) before its hello: worth one more try, not an endless loop."""


@dataclasses.dataclass(eq=False)
class Child:
    proc: subprocess.Popen[bytes]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    hello: dict[str, Any]
    last_heard: float  # time.monotonic() of its last message
    beat: dict[str, Any] = dataclasses.field(default_factory=dict)  # its latest heartbeat
    gone: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # its end of the pipe closed
    closed: bool = False  # it answered a close: its exit is expected
    loading_seen: float = 0.0  # time.monotonic() of its last heartbeat saying it was loading the models
    proven: bool = False  # it answered a call or made a step: it can work (see START_TRIES)
    read_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, message: dict[str, Any]) -> bool:
        """Queue `message` for the child (never blocks); False when it is gone."""
        if self.gone.is_set() or self.writer.is_closing():
            return False
        self.writer.write(frame(message))
        return True

    def dead(self) -> bool:
        return self.gone.is_set() or self.proc.poll() is not None

    async def kill(self) -> None:
        """SIGKILL and reap it (a hung child answers nothing else); idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait)
        if self.read_task is not None:
            self.read_task.cancel()
        self.writer.close()
        self.gone.set()


def config_data(config: Config) -> dict[str, Any]:
    """`config` as the mapping parse_config reads (an `auto` value is written back as "auto", so the
    child resolves it for its own device). Paths are already absolute, so the data dir is the same."""
    data: dict[str, Any] = _plain(config)
    return data


def _plain(v: Any) -> Any:
    # not dataclasses.asdict: it deep-copies leaves, and an Automatic must become "auto"
    if isinstance(v, Automatic):
        return "auto"
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


async def spawn(config: Config, setup: str | None = None) -> Child:
    """Start a child and wait for its hello. Raises the child's own one-line error (`fatal`: a locked
    journal, a bad config), or DiedAtStart when it exits or stays silent first."""
    ours, theirs = socket.socketpair()
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    cmd = [sys.executable, "-m", "models.serve", "--fd", str(theirs.fileno()), "--parent", str(os.getpid())]
    cmd += ["--log-level", level] + (["--setup", setup] if setup else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH")) if p)
    try:
        # started by module name, never forked from this process (which may hold threads and sockets)
        proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
    except OSError as e:
        ours.close()
        raise IrisError(f"cannot start the device worker ({e.strerror or e})") from None
    finally:
        theirs.close()
    reader, writer = await asyncio.open_unix_connection(sock=ours, limit=1 << 20)
    try:
        writer.write(frame({"op": "config", "config": config_data(config)}))
        t0 = time.monotonic()
        try:
            first = await asyncio.wait_for(read_message(reader), SPAWN_TIMEOUT_S)
        except TimeoutError:
            raise DiedAtStart(f"no answer within {SPAWN_TIMEOUT_S:g} s") from None
        if first is None:
            rc = await asyncio.to_thread(proc.wait)
            raise DiedAtStart(f"it exited with code {rc}")
        if first.get("op") == "fatal":
            error = first["error"]
            raise error if isinstance(error, IrisError) else IrisError(str(error))
        log.info("device worker %d ready in %.1f s", proc.pid, time.monotonic() - t0)
        return Child(proc, reader, writer, first, time.monotonic())
    except BaseException:
        child = Child(proc, reader, writer, {}, 0.0)
        await asyncio.shield(child.kill())
        raise
