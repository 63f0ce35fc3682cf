"""The job records as the bot reads them (`manager.journal`): blocking calls, made from a thread."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import TYPE_CHECKING

from iris.journal import JobState, JournalEntry

if TYPE_CHECKING:
    from iris.service.nats.client import NatsManager

RESULT_WAIT_S = 30.0  # a blocking read waits this long for a picture from the results store


class RecordsView:
    """The job records as the bot reads them (blocking calls, from a thread): the mirror, with the
    picture fetched from the results store."""

    def __init__(self, manager: NatsManager) -> None:
        self._m = manager

    def get(self, job_id: str) -> JournalEntry | None:
        rec = self._m.mirror.records.get(job_id)
        if rec is None:
            return None
        entry = rec.entry
        loop = self._m._loop
        on_loop = loop is not None and _running_loop() is loop
        if entry.state in (JobState.GENERATED, JobState.DELIVERED) and loop is not None and not on_loop:
            fut = asyncio.run_coroutine_threadsafe(self._m._png(job_id), loop)
            with contextlib.suppress(Exception):
                entry = replace(entry, result_png=fut.result(RESULT_WAIT_S))
        return entry

    def of_owner(self, owner: str, limit: int) -> list[JournalEntry]:
        mine = [r.entry for r in list(self._m.mirror.records.values()) if r.entry.owner == owner]
        return sorted(mine, key=lambda e: e.created, reverse=True)[:limit]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
