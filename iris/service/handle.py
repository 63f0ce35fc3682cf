"""The caller's side of the inference manager: job handles and status records (plain data, no torch)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from iris.errors import JobCancelled
from iris.journal import JobState
from iris.request import ImagineRequest
from iris.service.events import TERMINAL, Cancelled, Done, Event, Failed


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

    def __init__(
        self, cancel: Callable[[str], bool], job_id: str, owner: str, request: ImagineRequest
    ) -> None:
        """`cancel(job_id)`: the manager's way to stop this job (in this process, or sent to a worker)."""
        self.id = job_id
        self.owner = owner
        self.request = request
        self._cancel = cancel
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
        return self._cancel(self.id)

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
