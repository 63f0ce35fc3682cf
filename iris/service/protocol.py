"""The inference manager as its callers see it: the bot and the CLI hold a `Manager` and never know
whether the device work runs on a thread of this process, in a child process, or on workers behind a
broker. Every backend keeps the same promises (see models/manager.py for the reference one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image

from iris.journal import JournalEntry
from iris.request import ImagineRequest
from iris.service.handle import JobHandle, ManagerStatus
from iris.service.results import Description, Prediction, Upscaled


class JobRecords(Protocol):
    """Read access to the job records (the journal): blocking calls, run them off the event loop."""

    def get(self, job_id: str) -> JournalEntry | None: ...

    def of_owner(self, owner: str, limit: int) -> list[JournalEntry]: ...


class Manager(Protocol):
    """The async API over the device (see models/manager.py's InferenceManager for each promise)."""

    @property
    def journal(self) -> JobRecords: ...

    @property
    def has_vqgan(self) -> bool: ...

    async def start(self) -> None: ...

    async def close(self, grace_s: float | None = None) -> None: ...

    async def warm_up(self) -> None:
        """Load the models now, so missing weights fail at start-up with their one-line message."""

    def make_request(self, prompt: str, **overrides: object) -> ImagineRequest:
        """A request with the defaults in force (the config's, sized for the device), validated."""
        ...

    async def classify(
        self,
        image: Image.Image | bytes,
        labels: Sequence[str],
        top_k: int | None = None,
        templates: str | None = None,
    ) -> list[Prediction]: ...

    async def describe(self, image: Image.Image | bytes, top_k: int = 5) -> Description: ...

    async def upscale(self, image: Image.Image | bytes) -> Upscaled: ...

    async def embed_images(self, images: Sequence[Image.Image | bytes]) -> np.ndarray: ...

    async def embed_text(self, query: str) -> np.ndarray: ...

    async def model_id(self) -> str: ...

    def imagine(
        self,
        request: ImagineRequest,
        owner: str,
        meta: dict[str, str] | None = None,
        job_id: str | None = None,
        max_queued_per_user: int | None = None,
    ) -> JobHandle: ...

    def cancel(self, job_id: str) -> bool: ...

    def status(self) -> ManagerStatus: ...

    def unfinished(self) -> list[JournalEntry]: ...

    def undelivered(self) -> list[JournalEntry]: ...

    def resubmit(self, entry: JournalEntry) -> JobHandle: ...

    def discard(self, entry: JournalEntry, reason: str = "discarded after a restart") -> None: ...

    def mark_delivered(self, job_id: str) -> bool: ...
