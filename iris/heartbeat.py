"""The bot's heartbeat: a small JSON file in the data directory that `iris run` rewrites every
HEARTBEAT_EVERY_S seconds and `iris status --local` (Docker's HEALTHCHECK) reads.

A beat says what was true when it was written: the gateway connection, whether the inference worker
answered a probe, and the queue. A beat older than STALE_AFTER_S means the bot is gone or wedged.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from iris.errors import BadFile

HEARTBEAT_EVERY_S = 30.0  # seconds between two beats
STALE_AFTER_S = 3 * HEARTBEAT_EVERY_S + 5  # three missed beats (a little slack for a busy event loop)
MAX_BEAT_BYTES = 64 * 2**10  # a beat is a few hundred bytes; more is not a heartbeat file


@dataclass(frozen=True)
class Heartbeat:
    gateway: bool  # logged in and connected to Discord's gateway
    worker: bool  # the inference manager's worker thread answered a probe
    queued: int  # generations waiting
    running: int  # generations running (0 or 1)
    state: str = "running"  # "running", or "stopped" (written last by a clean shutdown)
    time: float = field(default_factory=time.time)  # Unix seconds when written
    pid: int = field(default_factory=os.getpid)

    def problems(self, now: float | None = None, stale_after: float = STALE_AFTER_S) -> list[str]:
        """What is wrong, in words; [] when healthy."""
        age = (time.time() if now is None else now) - self.time
        out = []
        if self.state != "running":
            out.append(f"the bot has {self.state}")
        elif age > stale_after:
            out.append(f"the last heartbeat is {age:.0f} s old (stale after {stale_after:.0f} s)")
        else:
            if not self.gateway:
                out.append("not connected to Discord")
            if not self.worker:
                out.append("the inference worker does not answer")
        return out


def write(path: str | os.PathLike[str], beat: Heartbeat) -> None:
    """Write `beat` next to `path`, then rename it over: a reader never sees half a beat."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(asdict(beat)), encoding="utf-8")
        os.replace(tmp, p)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def read(path: str | os.PathLike[str]) -> Heartbeat:
    """The last beat; BadFile (one line) when there is none or it is not a heartbeat file."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_BEAT_BYTES + 1)
    except FileNotFoundError:
        raise BadFile(f"no heartbeat at {p}: the bot is not running with this data directory") from None
    except OSError as e:
        raise BadFile(f"cannot read the heartbeat {p}: {e.strerror or e}") from None
    if len(raw) > MAX_BEAT_BYTES:
        raise BadFile(f"{p} is not a heartbeat file")
    try:
        data = json.loads(raw)
        beat = Heartbeat(
            gateway=bool(data["gateway"]),
            worker=bool(data["worker"]),
            queued=int(data["queued"]),
            running=int(data["running"]),
            state=str(data["state"]),
            time=float(data["time"]),
            pid=int(data["pid"]),
        )
    except (ValueError, TypeError, KeyError):
        raise BadFile(f"{p} is not a heartbeat file") from None
    return beat
