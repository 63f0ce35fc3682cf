"""What a generation job tells its caller, as plain dataclasses (the bot reads these; no torch inside)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from PIL import Image

from iris.errors import IrisError


@dataclass(frozen=True)
class Queued:
    position: int  # 1 = next to start
    eta_s: float | None  # seconds until this job should be done; None until a step time is measured


@dataclass(frozen=True)
class Started:
    seed: int
    width: int
    height: int
    cutouts: int
    reduced: str | None = None  # set when an out-of-memory retry reduced the settings


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    loss: float  # NaN unless this step shows a preview or is the last (reading it waits for the device)
    eta_s: float | None  # seconds left for this job
    preview_png: bytes | None = None  # only on the configured preview cadence


@dataclass(frozen=True)
class Done:
    image: Image.Image = field(repr=False)
    seed: int
    steps: int
    clip_score: float
    reduced: str | None = None

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, format="PNG")
        return buf.getvalue()


@dataclass(frozen=True)
class Failed:
    error: IrisError  # user-facing; unexpected errors arrive wrapped with an error id


@dataclass(frozen=True)
class Cancelled:
    reason: str = "cancelled"  # "cancelled" by a person, or "shutdown"


Event = Queued | Started | Progress | Done | Failed | Cancelled
TERMINAL = (Done, Failed, Cancelled)
