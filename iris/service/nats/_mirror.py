"""A bot's copy of the deployment's state, kept current by watching the broker's buckets: every job's
record (all bots' jobs: caps, positions and ETAs are global) and the live bots and workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from iris.journal import JobState
from iris.service import wire
from iris.service.handle import JobSummary
from iris.service.nats._broker import Broker, JobRecord, is_alive, retrying

log = logging.getLogger(__name__)


class Mirror:
    def __init__(self, heartbeat_s: float, on_record: Callable[[JobRecord], None]) -> None:
        self.records: dict[str, JobRecord] = {}
        self.beats: dict[str, dict[str, Any]] = {}  # live key (bot.<id>, worker.<id>) -> its last beat
        self.heartbeat_s = heartbeat_s
        self._on_record = on_record  # called for every changed record (on the event loop)
        self._watchers: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def watch(self, b: Broker) -> None:
        """(Re)start watching both buckets: the whole state first, then every change. After a broker
        restart the old watchers are gone with their consumers: this replaces them and catches up."""
        await self.stop()
        records: dict[str, JobRecord] = {}
        beats: dict[str, dict[str, Any]] = {}
        rec_w = await retrying("watching the job records", lambda: self._initial(b.records, records, True))
        live_w = await retrying("watching the workers", lambda: self._initial(b.live, beats, False))
        self._watchers = [rec_w, live_w]
        old = self.records
        for job_id, rec in old.items():  # submitted while the broker was away: not written yet
            if rec.revision == 0 and job_id not in records:
                records[job_id] = rec
        self.records, self.beats = records, beats
        for job_id, rec in records.items():
            if job_id not in old or old[job_id].revision != rec.revision:
                self._on_record(rec)
        for w, is_records in ((rec_w, True), (live_w, False)):
            self._tasks.append(asyncio.create_task(self._follow(w, is_records), name="iris-nats-watch"))

    async def _initial(self, kv: KeyValue, into: dict[str, Any], is_records: bool) -> Any:
        watcher = await kv.watchall()
        async for entry in watcher:
            if entry is None:  # the current state is in; changes follow
                return watcher
            self._apply(entry, into, is_records, notify=False)
        return watcher

    async def _follow(self, watcher: Any, is_records: bool) -> None:
        async for entry in watcher:
            if entry is not None:
                try:
                    self._apply(entry, self.records if is_records else self.beats, is_records, notify=True)
                except Exception:
                    log.exception("a bad update of %s", entry.key)

    def _apply(self, entry: Any, into: dict[str, Any], is_records: bool, notify: bool) -> None:
        if entry.operation in (KV_DEL, KV_PURGE):
            into.pop(entry.key, None)
            return
        if not is_records:
            into[entry.key] = wire.loads(entry.value)
            return
        rec = JobRecord.loads(entry.value, entry.revision)
        old = into.get(entry.key)
        if old is not None and old.revision >= rec.revision > 0:
            return  # an older write, seen late
        into[entry.key] = rec
        if notify:
            self._on_record(rec)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        for w in self._watchers:
            with contextlib.suppress(Exception):
                await w.stop()
        self._watchers = []

    # -- what the state says -------------------------------------------------------------------------
    def workers(self) -> dict[str, dict[str, Any]]:
        """Live workers by id."""
        return {
            k.split(".", 1)[1]: v
            for k, v in self.beats.items()
            if k.startswith("worker.") and is_alive(v, self.heartbeat_s)
        }

    def bot_alive(self, bot_id: str) -> bool:
        return is_alive(self.beats.get(f"bot.{bot_id}"), self.heartbeat_s)

    def in_state(self, *states: JobState) -> list[JobRecord]:
        """Records in any of `states`, in submission order (the order workers take them)."""
        found = [r for r in self.records.values() if r.entry.state in states]
        return sorted(found, key=lambda r: (r.entry.created, r.id))

    def step_time(self) -> float | None:
        """Seconds per step on the workers (their last reports, averaged)."""
        times = [w["step_s"] for w in self.workers().values() if w.get("step_s")]
        times += [r.step_s for r in self.in_state(JobState.RUNNING) if r.step_s]
        return sum(times) / len(times) if times else None

    def positions(self) -> dict[str, tuple[int, float | None]]:
        """Each queued job's place (1 = next to start) and ETA (s, None until a step time is known):
        the steps of the running jobs and of those ahead, shared by the live workers."""
        st = self.step_time()
        lanes = max(1, len(self.workers()))
        ahead = sum(max(0, r.entry.total - r.entry.step) for r in self.in_state(JobState.RUNNING))
        out: dict[str, tuple[int, float | None]] = {}
        for pos, rec in enumerate(self.in_state(JobState.QUEUED), 1):
            ahead += rec.entry.total
            out[rec.id] = (pos, ahead * st / lanes if st is not None else None)
        return out

    def summaries(self) -> tuple[list[JobSummary], list[JobSummary]]:
        """(running, queued) as status lists them."""
        running = [
            JobSummary(r.id, r.entry.owner, JobState.RUNNING, r.entry.step, r.entry.total, 0)
            for r in self.in_state(JobState.RUNNING)
        ]
        queued = [
            JobSummary(r.id, r.entry.owner, JobState.QUEUED, 0, r.entry.total, i)
            for i, r in enumerate(self.in_state(JobState.QUEUED), 1)
        ]
        return running, queued
