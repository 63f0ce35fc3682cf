"""The bot's (and the CLI's) side of the distributed mode: the `Manager` API over NATS JetStream.

Generations: `imagine()` checks the queue bound and the caps against the mirror of every job record (so
they are global), writes the job's record and puts its id on the work queue. Its handle hears Started and
Progress from the worker that runs it (`<p>.events.<job>`), Queued (global place and ETA) from this
client whenever the mirror changes them, and its end from the record: GENERATED (the picture from the
results store), FAILED or CANCELLED. Ends come from the records, which the broker keeps, so an end reached
while this bot was cut off from the broker is still heard.

Short jobs are requests to the least busy live worker, tried on another one on a timeout.

Delivery: each record names the bot that follows it. That bot delivers its picture and moves it
GENERATED → DELIVERED (compare-and-set); a bot that starts takes over (compare-and-set) the jobs of bots
that are gone: `unfinished()` (still queued or running on the workers: `resubmit` follows them again,
nothing is queued twice) and `undelivered()`. A bot keeps its id across restarts (a file in its data
directory), so a restarted bot finds its own jobs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import time
import uuid
from collections import Counter
from collections.abc import Coroutine
from dataclasses import replace
from functools import partial
from typing import IO, Any

from nats.js.errors import KeyWrongLastSequenceError

from iris.config import Automatic, Config
from iris.errors import (
    BadRequest,
    InternalError,
    IrisError,
    ServiceClosed,
    report_unexpected,
)
from iris.images import ImageLimits
from iris.journal import UNFINISHED, JobState, JournalEntry
from iris.request import ImagineRequest
from iris.service import admission, wire
from iris.service.events import Cancelled, Failed
from iris.service.handle import JobHandle, ManagerStatus
from iris.service.nats._broker import Broker, JobRecord, modify, open_broker, retrying
from iris.service.nats._follow import Followed, Following
from iris.service.nats._journal import RecordsView
from iris.service.nats._mirror import Mirror
from iris.service.nats._short import ShortJobs
from iris.service.remote import RemoteShortJobs

log = logging.getLogger(__name__)

ID_FILE = "iris-nats-bot-id"  # in the data directory: a restarted bot is the same bot


class NatsManager(RemoteShortJobs, Following):
    """The Manager API with the device work on `iris worker` processes behind NATS."""

    def __init__(self, config: Config, adopt: bool = True) -> None:
        """`adopt`: take over the jobs of bots that are gone (the bot does; the CLI does not)."""
        self.config = config
        self.adopt = adopt
        self._id_lock: IO[bytes] | None = None
        self.id = self._bot_id() if adopt else uuid.uuid4().hex[:12]
        self.broker: Broker | None = None
        self.mirror = Mirror(config.nats.heartbeat_s, self._record_changed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._followed: dict[str, Followed] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unfinished: dict[str, JournalEntry] = {}
        self._undelivered: dict[str, JournalEntry] = {}
        self.shorts = ShortJobs(self.mirror, config.manager.watchdog_grace_s)
        self._positions_due = False
        self._accepting = False
        self.journal = RecordsView(self)

    # -- lifecycle -------------------------------------------------------------------------------------
    async def __aenter__(self) -> NatsManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.broker = await open_broker(self.config, f"iris-bot {self.id}", on_reconnect=self._reconnected)
        try:
            await self.mirror.watch(self.broker)
            await self._beat()
            if self.adopt:
                await self._adopt()
        except BaseException:
            await self.mirror.stop()
            await self.broker.close()
            raise
        self._spawn(self._heartbeats(), "iris-nats-loop-heartbeat")
        self._accepting = True

    async def close(self, grace_s: float | None = None) -> None:
        """Stop following jobs (they run on: a restarted bot follows them again) and disconnect."""
        self._accepting = False
        for f in list(self._followed.values()):
            self._end(f, Cancelled("shutdown"))
        pending = [t for t in self._tasks if not t.get_name().startswith("iris-nats-loop")]
        if pending:  # deliveries being marked, cancels being written
            await asyncio.wait(pending, timeout=5.0)
        for task in list(self._tasks):
            task.cancel()
        await self.mirror.stop()
        if self.broker is not None:
            with contextlib.suppress(Exception):
                await self.broker.live.delete(f"bot.{self.id}")
            await self.broker.close()
            self.broker = None
        if self._id_lock is not None:
            self._id_lock.close()
            self._id_lock = None

    def _bot_id(self) -> str:
        """This bot's id, kept in its data directory (locked: a second bot there gets a new one)."""
        path = self.config.data_path / ID_FILE
        try:
            f = open(path, "a+b")  # noqa: SIM115 - held open (and locked) while this client lives
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return uuid.uuid4().hex[:12]
        f.seek(0)
        known = f.read().decode(errors="replace").strip()
        if not known:
            known = uuid.uuid4().hex[:12]
            f.write(known.encode())
            f.flush()
        self._id_lock = f
        return known

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.config.nats.heartbeat_s)
            with contextlib.suppress(Exception):
                await self._beat()

    async def _beat(self) -> None:
        assert self.broker is not None
        await self.broker.live.put(f"bot.{self.id}", wire.dumps({"at": time.time()}))

    async def _reconnected(self) -> None:
        self._spawn(self._rewatch(), "iris-nats-loop-rewatch")

    async def _rewatch(self) -> None:
        if self.broker is not None:
            await self.mirror.watch(self.broker)
            self._schedule_positions()

    async def _adopt(self) -> None:
        """Take over this bot's jobs from its last run, and those of bots that are gone."""
        for rec in list(self.mirror.records.values()):
            state = rec.entry.state
            if state not in (*UNFINISHED, JobState.GENERATED):
                continue
            if rec.bot != self.id and self.mirror.bot_alive(rec.bot):
                continue
            if rec.bot != self.id:
                taken = await modify(self.broker_(), rec.id, partial(self._take_over, gone=rec.bot))
                if taken is None:
                    continue
                rec = taken
            entry = rec.entry
            if entry.state == JobState.GENERATED:
                png = await self._png(rec.id)
                if png is not None:
                    self._undelivered[rec.id] = replace(entry, result_png=png)
            elif entry.state in UNFINISHED:
                self._unfinished[rec.id] = entry

    def _take_over(self, rec: JobRecord, gone: str) -> JobRecord | None:
        return rec.but(bot=self.id) if rec.bot == gone else None

    def broker_(self) -> Broker:
        if self.broker is None:
            raise ServiceClosed("the service is not running")
        return self.broker

    # -- generations -----------------------------------------------------------------------------------
    @property
    def has_vqgan(self) -> bool:
        v = self.config.vqgan
        return bool(v.preset or (v.config and v.checkpoint))

    async def warm_up(self) -> None:
        """Nothing to load here: the workers hold the models."""

    def make_request(self, prompt: str, **overrides: object) -> ImagineRequest:
        im = self.config.imagine
        # `auto` sizes are the device's: a live worker says what they are on its device
        told = next((w.get("defaults") for w in self.mirror.workers().values() if w.get("defaults")), None)
        auto = told or {}

        def pick(name: str, value: int) -> int:
            return int(auto.get(name, value)) if isinstance(value, Automatic) else value

        fields: dict[str, object] = dict(
            prompt=prompt,
            steps=pick("steps", im.steps),
            width=pick("width", im.width),
            height=pick("height", im.height),
            cutouts=im.cutouts,
            lr=im.lr,
            generator=im.generator if self.has_vqgan else "pixels",
            profile=im.profile,
        )
        fields.update({k: v for k, v in overrides.items() if v is not None})
        req = ImagineRequest(**fields)  # type: ignore[arg-type]
        limits = ImageLimits(self.config.images.max_bytes, self.config.images.max_pixels)
        return req.validated(im.max_steps, im.max_side, im.max_prompt_chars, limits)

    def imagine(
        self,
        request: ImagineRequest,
        owner: str,
        meta: dict[str, str] | None = None,
        job_id: str | None = None,
        max_queued_per_user: int | None = None,
    ) -> JobHandle:
        """Queue a generation on the workers; QueueFull, UserLimitReached, BadRequest or ServiceClosed at
        once, counted over every bot's jobs. A refusal that comes later (the broker stays away) is Failed."""
        if not self._accepting:
            raise ServiceClosed("the service is shutting down")
        im, mc = self.config.imagine, self.config.manager
        request = request.validated(im.max_steps, im.max_side, im.max_prompt_chars)
        job_id = job_id or uuid.uuid4().hex[:12]
        queued = len(self.mirror.in_state(JobState.QUEUED))
        active = sum(r.entry.owner == owner for r in self.mirror.in_state(*UNFINISHED))
        admission.admit(mc, queued, active, max_queued_per_user)  # over every bot's jobs
        if job_id in self.mirror.records:
            raise BadRequest(f"there is a job {job_id} already")
        now = time.time()
        total = request.steps * request.count
        entry = JournalEntry(
            job_id, owner, request, meta or {}, JobState.QUEUED, 0, total, request.seed, None, now, now
        )
        rec = JobRecord(entry, bot=self.id)
        limit = self.broker_().nc.max_payload
        if len(rec.dumps()) > limit * 0.9:  # the request's pictures travel in the record
            raise BadRequest(
                f"the pictures in this request are too large for the job queue ({limit // 1024} KiB at "
                "most in all); try smaller ones"
            )
        self.mirror.records[job_id] = rec  # counted at once; the broker's copy replaces it
        handle = JobHandle(self.cancel, job_id, owner, request)
        followed = self._followed[job_id] = Followed(handle)
        self._spawn(self._submit(rec, followed))
        self._schedule_positions()
        return handle

    async def _submit(self, rec: JobRecord, f: Followed) -> None:
        b = self.broker_()
        try:
            await self._subscribe(f)
            try:
                await retrying(f"queueing job {rec.id}", lambda: b.records.create(rec.id, rec.dumps()))
            except KeyWrongLastSequenceError:
                raise BadRequest(f"there is a job {rec.id} already") from None
            await retrying(
                f"queueing job {rec.id}",
                lambda: b.js.publish(b.names.jobs, rec.id.encode(), headers={"Nats-Msg-Id": rec.id}),
            )
        except IrisError as e:
            self._drop(rec.id)
            self._end(f, Failed(e))
        except Exception as e:
            self._drop(rec.id)
            error_id = report_unexpected(log, e, f"queueing job {rec.id}", level=logging.WARNING)
            self._end(f, Failed(InternalError(f"I couldn't reach the workers; try again later ({error_id})")))

    def _drop(self, job_id: str) -> None:
        rec = self.mirror.records.get(job_id)
        if rec is not None and rec.revision == 0:
            del self.mirror.records[job_id]
            self._schedule_positions()

    def cancel(self, job_id: str) -> bool:
        """Cancel a job of any bot: taken off the queue, or stopped by its worker within a step."""
        rec = self.mirror.records.get(job_id)
        if rec is None or rec.entry.state not in UNFINISHED or self.broker is None:
            return False
        self._spawn(self._cancel(job_id))
        return True

    async def _cancel(self, job_id: str, reason: str | None = None) -> None:
        b = self.broker_()
        await retrying(f"cancelling job {job_id}", lambda: b.nc.publish(b.names.cancel(job_id), b""))

        def change(r: JobRecord) -> JobRecord | None:  # a queued one: the worker that pulls it skips it
            orphan = r.entry.state == JobState.RUNNING and r.worker not in self.mirror.workers()
            if r.entry.state != JobState.QUEUED and not orphan:
                return None  # running: its worker heard the cancel (an orphan waits for redelivery)
            if reason:
                return r.but(state=JobState.CANCELLED, error=reason)
            return r.but(state=JobState.CANCELLED)

        await modify(b, job_id, change)

    def status(self) -> ManagerStatus:
        running, queued = self.mirror.summaries()
        workers = self.mirror.workers()
        devices = sorted({str(w.get("device")) for w in workers.values()})
        models = sorted({m for w in workers.values() for m in w.get("models") or []})
        device = f"{len(workers)} worker{'s' * (len(workers) != 1)} on NATS" + (
            f" ({', '.join(devices)})" if devices else ""
        )
        return ManagerStatus(
            len(queued), running[0] if running else None, queued, device, models, self.mirror.step_time()
        )

    def unfinished(self) -> list[JournalEntry]:
        """Jobs this bot took over at start that are still queued or running on the workers."""
        return list(self._unfinished.values())

    def undelivered(self) -> list[JournalEntry]:
        """Jobs this bot took over at start whose picture is made but not delivered (with it)."""
        return list(self._undelivered.values())

    def resubmit(self, entry: JournalEntry) -> JobHandle:
        """Follow an unfinished job again (it is still on the queue or running: nothing is queued twice)."""
        if not self._accepting:
            raise ServiceClosed("the service is shutting down")
        self._unfinished.pop(entry.id, None)
        handle = JobHandle(self.cancel, entry.id, entry.owner, entry.request)
        f = self._followed[entry.id] = Followed(handle)

        async def follow() -> None:
            await self._subscribe(f)
            rec = self.mirror.records.get(entry.id)
            if rec is not None:
                self._record_changed(rec)  # it may have ended meanwhile

        self._spawn(follow())
        return handle

    def discard(self, entry: JournalEntry, reason: str = "discarded after a restart") -> None:
        self._unfinished.pop(entry.id, None)
        self._spawn(self._cancel(entry.id, reason))

    def mark_delivered(self, job_id: str) -> bool:
        """GENERATED → DELIVERED (compare-and-set on the record: once, whichever bot tries)."""
        self._undelivered.pop(job_id, None)
        rec = self.mirror.records.get(job_id)
        if rec is None or rec.entry.state != JobState.GENERATED or self.broker is None:
            return False
        b = self.broker

        async def mark() -> None:
            def change(r: JobRecord) -> JobRecord | None:
                return r.but(state=JobState.DELIVERED) if r.entry.state == JobState.GENERATED else None

            await modify(b, job_id, change)

        self._spawn(mark())
        return True

    # -- short jobs ------------------------------------------------------------------------------------

    async def _short(self, op: str, *args: Any) -> Any:
        if not self._accepting:
            raise ServiceClosed("the service is shutting down")
        return await self.shorts.call(self.broker_(), op, *args)

    @property
    def answered_by(self) -> Counter[str]:
        """Short jobs answered, per worker id."""
        return self.shorts.answered_by

    # -- plumbing --------------------------------------------------------------------------------------
    def _spawn(self, work: Coroutine[Any, Any, Any], name: str = "iris-nats") -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            report_unexpected(log, task.exception(), task.get_name(), level=logging.WARNING)  # type: ignore[arg-type]
