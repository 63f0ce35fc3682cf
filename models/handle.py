"""The caller's side of the inference manager: job handles and status records (plain data)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from iris.errors import JobCancelled
from iris.request import ImagineRequest
from models.events import TERMINAL, Cancelled, Done, Event, Failed
from models.journal import JobState

if TYPE_CHECKING:
    from models.manager import InferenceManager


@dataclass(frozen=True)
class JobSummary:
    id: str
    owner: str
    state: JobState  # QUEUED or RUNNING
    step: int
    total: int
    position: int  # 0 while running, 1.. while queued


@dataclass(frozen=True)
class ManagerStatus:
    queue_length: int
    running: JobSummary | None
    queued: list[JobSummary]
    device: str
    models: list[str]
    step_time_s: float | None  # recent seconds per generation step (moving average)


class JobHandle:
    """The caller's side of one generation job. Use from the event loop's thread."""

    def __init__(self, manager: InferenceManager, job_id: str, owner: str, request: ImagineRequest) -> None:
        self.id = job_id
        self.owner = owner
        self.request = request
        self._manager = manager
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._future: asyncio.Future[Done] = asyncio.get_running_loop().create_future()
        self._future.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "not retrieved"
        self.last_event: Event | None = None

    async def events(self) -> AsyncIterator[Event]:
        """Every event in order, ending with Done, Failed or Cancelled."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, TERMINAL):
                return

    def cancel(self) -> bool:
        """Remove the job from the queue, or stop it within one step. False if it already ended."""
        return self._manager._cancel(self.id)

    async def result(self) -> Done:
        """The Done event; raises the job's error if it failed or was cancelled."""
        return await asyncio.shield(self._future)

    def _publish(self, event: Event) -> None:
        self.last_event = event
        self._events.put_nowait(event)
        if self._future.done():
            return
        if isinstance(event, Done):
            self._future.set_result(event)
        elif isinstance(event, Failed):
            self._future.set_exception(event.error)
        elif isinstance(event, Cancelled):
            self._future.set_exception(JobCancelled(f"the job was {event.reason}"))
