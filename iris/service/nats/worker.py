"""`iris worker`: one device's worker behind the broker. It pulls generations from the work-queue stream
one at a time and runs them on a local manager (the one `manager.backend: local` gives, so the scheduler,
batching and watchdog are today's), forwarding each job's events and keeping its record; it answers short
jobs sent to its own subject. No torch here: the local manager loads it.

Exactly once: a job whose record is already over (GENERATED, DELIVERED, FAILED, CANCELLED) is acked and
skipped, so a redelivery after a worker died past the end (but before its ack) makes nothing twice. A
redelivered job restarts with the seed its record holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from nats.aio.msg import Msg
from nats.js import api

from iris.config import Config
from iris.errors import BadRequest, InternalError, IrisError, internal_error, report_unexpected
from iris.journal import UNFINISHED, JobState
from iris.service import wire
from iris.service.events import Cancelled, Done, Failed, Progress, Started
from iris.service.nats._broker import MAX_DELIVER, Broker, JobRecord, modify, open_broker, retrying
from iris.service.protocol import Manager
from iris.service.remote import SHORT_OPS

log = logging.getLogger(__name__)

SAVE_EVERY_S = 1.0  # a running job's step reaches its record at most this often (ETAs elsewhere)


def worker_config(config: Config, device: str | None, journal_dir: str) -> Config:
    """The local manager's config: this device, and a journal of its own (the broker's records are the
    truth; two workers on one machine must not share a journal file)."""
    manager = dataclasses.replace(
        config.manager, backend="local", journal_path=os.path.join(journal_dir, "jobs.sqlite3")
    )
    return dataclasses.replace(config, device=device or config.device, manager=manager)


# open_local(config): the manager that owns this worker's device (models/connect.py's open_manager: a
# watched child process by default). Passed in by the command line: this layer never names the engine.
OpenLocal = Callable[[Config], Manager]


class NatsWorker:
    """`await NatsWorker(config, open_local).run()` until `stop()` (SIGTERM): then it takes nothing more,
    lets the current job finish within `manager.close_grace_s` or hands it back to the queue, and returns."""

    def __init__(
        self, config: Config, open_local: OpenLocal, device: str | None = None, name: str | None = None
    ) -> None:
        self.config = config
        self.open_local = open_local
        self.device = device
        self.id = name or f"{socket.gethostname()}-{os.getpid()}"
        self.broker: Broker | None = None
        self.local: Manager | None = None
        self._stopping = asyncio.Event()
        self._current: str | None = None  # the job running now
        self._handing_back = False
        self._cancelled: deque[str] = deque(maxlen=1000)  # cancels seen (a job may arrive after its cancel)
        self._shorts = 0  # short jobs being answered now
        self._tasks: set[asyncio.Task[Any]] = set()
        self._defaults: dict[str, int] = {}

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        # The broker first: an unreachable one is said in one line before any model loads.
        self.broker = await open_broker(self.config, f"iris-worker {self.id}")
        journal_dir = tempfile.mkdtemp(prefix="iris-worker-")
        try:
            self.local = self.open_local(worker_config(self.config, self.device, journal_dir))
            await self.local.start()
            try:
                await self.local.warm_up()
                req = self.local.make_request("defaults")
                self._defaults = {"steps": req.steps, "width": req.width, "height": req.height}
                await self._serve(self.broker)
            finally:
                await self.local.close()
        finally:
            await self.broker.close()
            shutil.rmtree(journal_dir, ignore_errors=True)

    async def _serve(self, b: Broker) -> None:
        cancels = await b.nc.subscribe(b.names.cancel("*"), cb=self._on_cancel)
        shorts = await b.nc.subscribe(b.names.short(self.id), cb=self._on_short)
        beat = asyncio.create_task(self._heartbeats(b), name="iris-worker-heartbeat")
        consumer = api.ConsumerConfig(
            ack_wait=self.config.nats.ack_wait_s, max_deliver=MAX_DELIVER, max_ack_pending=-1
        )
        pull = await retrying(
            "joining the work queue",
            lambda: b.js.pull_subscribe(
                b.names.jobs, durable=b.names.consumer, stream=b.names.stream, config=consumer
            ),
        )
        log.info("worker %s: taking jobs from %s", self.id, b.names.stream)
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await pull.fetch(1, timeout=1.0)
                except Exception as e:  # nothing to do (a timeout), or the broker is away: ask again
                    if not isinstance(e, asyncio.TimeoutError | TimeoutError):
                        log.debug("worker %s: fetch: %s", self.id, type(e).__name__)
                        await asyncio.sleep(0.2)
                    continue
                for msg in msgs:
                    try:
                        await self._take(b, msg)
                    except Exception as e:  # the broker stayed away past every retry: the job goes back
                        what = f"worker {self.id}: job {msg.data.decode(errors='replace')}"
                        report_unexpected(log, e, what, level=logging.WARNING)
                        await _quietly(msg.nak())
        finally:
            beat.cancel()
            for sub in (cancels, shorts):
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            if self._tasks:  # short jobs being answered
                await asyncio.wait(set(self._tasks), timeout=5.0)
            with contextlib.suppress(Exception):
                await b.live.delete(f"worker.{self.id}")

    # -- generations -----------------------------------------------------------------------------------
    async def _take(self, b: Broker, msg: Msg) -> None:
        job_id = msg.data.decode()
        if self._stopping.is_set():  # fetched as the stop came: the next worker takes it
            await _quietly(msg.nak())
            return
        if msg.metadata.num_delivered >= MAX_DELIVER:  # it went down with every worker that tried it
            tries = MAX_DELIVER - 1
            error = InternalError(f"this picture stopped {tries} workers in a row; it won't be tried again")
            await self._end(b, job_id, JobState.FAILED, error=error, message=error.message)
            await _quietly(msg.ack())
            return
        claimed = await modify(b, job_id, self._claim)
        if claimed is None or claimed.entry.state != JobState.RUNNING:  # over (made, cancelled): once only
            log.info("worker %s: job %s is over or unknown; skipping it", self.id, job_id)
            await _quietly(msg.ack())
            return
        assert self.local is not None
        entry = claimed.entry
        request = entry.resumed_request
        try:
            handle = self.local.imagine(
                request, entry.owner, entry.meta, job_id=job_id, max_queued_per_user=1
            )
        except IrisError as e:  # the request no longer fits this worker's limits
            await self._end(b, job_id, JobState.FAILED, error=e, message=e.message)
            await _quietly(msg.ack())
            return
        self._current, self._handing_back = job_id, False
        await self._beat(b)
        keep_alive = asyncio.create_task(self._in_progress(msg), name=f"iris-wpi-{job_id}")
        hand_back = asyncio.create_task(self._hand_back_on_stop(job_id), name=f"iris-stop-{job_id}")
        if job_id in self._cancelled:
            self.local.cancel(job_id)
        try:
            await self._follow(b, msg, job_id, handle.events())
        finally:
            keep_alive.cancel()
            hand_back.cancel()
            self._current = None
            await self._beat(b)

    def _claim(self, rec: JobRecord) -> JobRecord | None:
        if rec.entry.state not in UNFINISHED:
            return None
        if rec.id in self._cancelled:
            return rec.but(state=JobState.CANCELLED)
        return rec.but(worker=self.id, state=JobState.RUNNING)

    async def _follow(self, b: Broker, msg: Msg, job_id: str, events: Any) -> None:
        saved = 0.0
        async for ev in events:
            if isinstance(ev, Started | Progress):
                await _quietly(b.nc.publish(b.names.events(job_id), wire.dumps(ev), headers=_stamp()))
            if isinstance(ev, Started):  # the seed first: a redelivered job restarts with it
                await modify(b, job_id, partial(_changed, seed=ev.seed, step=0))
            elif isinstance(ev, Progress) and (time.monotonic() - saved > SAVE_EVERY_S or ev.preview_png):
                saved = time.monotonic()
                with contextlib.suppress(Exception):  # a lost step count only dulls an ETA
                    await modify(b, job_id, partial(_changed, step=ev.step, step_s=self._step_s()), for_s=1.0)
            elif isinstance(ev, Done):
                put = partial(b.results.put, job_id, ev.png())
                await retrying(f"storing the picture of job {job_id}", put)
                await self._end(b, job_id, JobState.GENERATED, seed=ev.seed, step=ev.steps,
                                clip_score=ev.clip_score, reduced=ev.reduced)  # fmt: skip
                await _quietly(msg.ack())
            elif isinstance(ev, Failed):
                await self._end(b, job_id, JobState.FAILED, error=ev.error, message=ev.error.message)
                await _quietly(msg.ack())
            elif isinstance(ev, Cancelled):
                if self._handing_back or ev.reason != "cancelled":  # stopping: another worker takes it
                    log.info("worker %s: handing job %s back to the queue", self.id, job_id)
                    await _quietly(msg.nak())
                else:
                    await self._end(b, job_id, JobState.CANCELLED)
                    await _quietly(msg.ack())

    async def _end(
        self, b: Broker, job_id: str, state: JobState, error: IrisError | None = None,
        message: str | None = None, **changes: Any,
    ) -> None:  # fmt: skip
        def change(rec: JobRecord) -> JobRecord | None:
            if rec.entry.state not in UNFINISHED:  # ended already (a second run): keep the first end
                return None
            extra = {"error": message} if message is not None else {}
            return rec.but(failure=error, step_s=self._step_s(), state=state, **extra, **changes)

        await modify(b, job_id, change)

    async def _in_progress(self, msg: Msg) -> None:
        """Tell the broker this job is alive, so it is not handed to another worker meanwhile."""
        while True:
            await asyncio.sleep(self.config.nats.heartbeat_s)
            await _quietly(msg.in_progress())

    async def _hand_back_on_stop(self, job_id: str) -> None:
        await self._stopping.wait()
        await asyncio.sleep(self.config.manager.close_grace_s)
        assert self.local is not None
        self._handing_back = True
        self.local.cancel(job_id)

    async def _on_cancel(self, msg: Msg) -> None:
        job_id = msg.subject.rsplit(".", 1)[-1]
        self._cancelled.append(job_id)
        if job_id == self._current and self.local is not None:
            self.local.cancel(job_id)

    # -- short jobs ------------------------------------------------------------------------------------
    async def _on_short(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer(msg), name="iris-worker-short")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        assert self.local is not None
        self._shorts += 1
        try:
            try:
                call = wire.loads(msg.data)
                op = call["op"]
                if op not in SHORT_OPS:
                    raise BadRequest(f"unknown short job {op!r}")
                value = await getattr(self.local, op)(*call["args"], **call["kw"])
                reply: dict[str, Any] = {"ok": value}
            except IrisError as e:
                reply = {"error": e}
            except Exception as e:
                reply = {"error": internal_error(log, e, "a short job")}
            await _quietly(msg.respond(wire.dumps(reply)))
        finally:
            self._shorts -= 1

    # -- heartbeats ------------------------------------------------------------------------------------
    def _step_s(self) -> float | None:
        return self.local.status().step_time_s if self.local is not None else None

    async def _heartbeats(self, b: Broker) -> None:
        while True:
            await self._beat(b)
            await asyncio.sleep(self.config.nats.heartbeat_s)

    async def _beat(self, b: Broker) -> None:
        """This worker's load in the live bucket: clients send short jobs to the least busy worker."""
        assert self.local is not None
        st = self.local.status()
        beat = {
            "at": time.time(),
            "subject": b.names.short(self.id),
            "shorts": self._shorts,
            "running": self._current,
            "step_s": st.step_time_s,
            "device": st.device,
            "models": st.models,
            "defaults": self._defaults,
        }
        with contextlib.suppress(Exception):  # the broker is away: the next beat says it
            await b.live.put(f"worker.{self.id}", wire.dumps(beat))


def _changed(rec: JobRecord, **changes: Any) -> JobRecord:
    return rec.but(**changes)


def _stamp() -> dict[str, str]:
    return {"Iris-Sent": repr(time.time())}  # when the worker sent it (the benchmark's latency)


async def _quietly(aw: Any) -> None:
    """An ack, nak or publish that may fail while the broker is away: the broker redelivers, or the
    record has the truth."""
    try:
        await aw
    except Exception as e:
        log.info("NATS: %s", type(e).__name__)


def run_worker(config: Config, open_local: OpenLocal, device: str | None = None) -> int:
    """`iris worker`: serve until SIGTERM or SIGINT; 0 after a clean stop."""

    async def main() -> None:
        worker = NatsWorker(config, open_local, device)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        await worker.run()

    asyncio.run(main())
    return 0
