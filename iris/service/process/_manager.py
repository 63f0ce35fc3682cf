"""ProcessManager: the Manager API with the device work in a child process, watched and replaced.

The parent (the bot, the CLI) never imports torch. It keeps a mirror of the generation queue (fed by
the child's events and heartbeats) so the sync half of the API (imagine, cancel, status, the journal)
answers at once, does admission itself (it is the child's only submitter), and reads the journal
through a read-only SQLite connection while the child owns and writes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
import uuid
from typing import Any

from iris.config import Config
from iris.errors import (
    IrisError,
    ServiceClosed,
    report_unexpected,
)
from iris.images import ImageLimits
from iris.journal import JobState, Journal, JournalEntry
from iris.request import ImagineRequest
from iris.service import admission
from iris.service.events import TERMINAL, Cancelled, Event, Progress, Started
from iris.service.handle import JobHandle, JobSummary, ManagerStatus
from iris.service.process._child import Child, DiedAtStart, spawn
from iris.service.process._link import read_message
from iris.service.process._state import Call, Job, WorkerUnavailable, call_message, imagine_message, settle
from iris.service.process._watchdog import START_TRIES, Watchdog
from iris.service.remote import RemoteShortJobs

log = logging.getLogger(__name__)

CLOSE_MARGIN_S = 1.0  # close(): seconds past the grace for the child's last events, then SIGKILL


class ProcessManager(RemoteShortJobs, Watchdog):
    """The Manager protocol over a child process (`python -m models.serve`) that owns the device.

    Its watchdog (_watchdog.py) replaces a child that hangs or dies; `close()` ends within its grace
    plus CLOSE_MARGIN_S, killing a child that has not exited by then.
    """

    def __init__(self, config: Config, setup: str | None = None) -> None:
        """`setup`: "module:function" the child calls with its InferenceManager before starting (the
        tests' way to make a step hang or the child die; see models/serve.py)."""
        self.config = config
        self.setup = setup
        self._child: Child | None = None
        self._jobs: dict[str, Job] = {}  # queued and running generations, in queue order
        self._calls: dict[int, Call] = {}
        self._call_ids = itertools.count(1)
        self._backlog: list[dict[str, Any]] = []  # journal writes waiting for a live child
        self._hello: dict[str, Any] = {}
        self._unfinished: dict[str, JournalEntry] = {}
        self._undelivered: dict[str, JournalEntry] = {}
        self._reader: Journal | None = None  # read-only view of the child's journal
        self._started = False
        self._accepting = False
        self._closing = False
        self._broken: IrisError | None = None
        self._watch_task: asyncio.Task[None] | None = None
        grace = config.manager.watchdog_grace_s
        self.watch_every = min(0.25, grace / 4)
        self.restarts = 0  # children replaced since start()
        self._unproven = 0  # children in a row replaced before they answered anything

    # -- lifecycle ---------------------------------------------------------------------------------
    async def __aenter__(self) -> ProcessManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def pid(self) -> int | None:
        """The current child's process id (None while none runs)."""
        return self._child.pid if self._child is not None else None

    async def start(self) -> None:
        """Start the child (it opens the journal: JournalLocked if another process owns it). Once."""
        if self._started:
            return
        self._child = await self._spawn()
        self._hello = self._child.hello
        self._unfinished = {e.id: e for e in self._hello.get("unfinished", [])}
        self._undelivered = {e.id: e for e in self._hello.get("undelivered", [])}
        self._started = self._accepting = True
        self._watch_task = asyncio.create_task(self._watch(), name="iris-watchdog")
        self._watch_task.add_done_callback(_log_failure)

    async def warm_up(self) -> None:
        """Load the models in the child (starting it first if need be, as `iris run` warms up before it
        connects): missing weights raise their one-line error here."""
        await self.start()
        await self._call("warm_up", watched=False)

    async def close(self, grace_s: float | None = None) -> None:
        """Stop taking jobs; the child drains or pauses them within the grace; then it exits. A child
        that has not exited `CLOSE_MARGIN_S` after the grace (hung) is killed; jobs it never ended are
        told "shutdown" (the journal keeps them for the next start). Safe to call twice, or cancel."""
        self._accepting = False
        self._closing = True
        grace = self.config.manager.close_grace_s if grace_s is None else grace_s
        child = self._child
        try:
            if child is not None and child.send({"op": "close", "grace": grace}):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(child.gone.wait(), grace + CLOSE_MARGIN_S)
        finally:
            await self._stop_watchdog()
            if child is not None:
                await asyncio.shield(child.kill())
            self._child = None
            for job in list(self._jobs.values()):
                self._end(job, Cancelled("shutdown"))
            for call in list(self._calls.values()):
                settle(call.future, error=ServiceClosed("the service is shutting down"))
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            self._started = False

    async def _stop_watchdog(self) -> None:
        task, self._watch_task = self._watch_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _spawn(self) -> Child:
        """A child that said hello, tried START_TRIES times; WorkerUnavailable after that."""
        why = ""
        for attempt in range(1, START_TRIES + 1):
            try:
                child = await spawn(self.config, self.setup)
            except DiedAtStart as e:
                why = str(e)
                log.warning("the device worker died at start (%s), try %d of %d", why, attempt, START_TRIES)
                continue
            child.read_task = asyncio.create_task(self._read(child), name=f"iris-worker-{child.pid}")
            child.read_task.add_done_callback(_log_failure)
            return child
        raise WorkerUnavailable(
            f"the device worker died at start {START_TRIES} times in a row ({why}); see the log above"
        )

    # -- messages from the child -------------------------------------------------------------------
    async def _read(self, child: Child) -> None:
        try:
            while (message := await read_message(child.reader)) is not None:
                child.last_heard = time.monotonic()
                if child is self._child or self._closing:
                    self._on_message(child, message)
        except Exception as e:  # a garbled frame: this child cannot be trusted any more
            report_unexpected(log, e, f"reading from the device worker {child.pid}")
        finally:
            child.gone.set()

    def _on_message(self, child: Child, m: dict[str, Any]) -> None:
        op = m.get("op")
        if op == "event":
            job = self._jobs.get(m["job"])
            if job is not None:
                self._on_event(job, m["event"])
        elif op == "answer":
            call = self._calls.pop(m["id"], None)
            if call is not None:
                settle(call.future, m.get("value"), m.get("error"))
            child.proven = True
            self._pump_suspects()
        elif op == "beat":
            child.beat = m
            if m.get("loading"):
                child.loading_seen = time.monotonic()
            job = self._jobs.get(m["job"]) if m["job"] else None
            if job is not None:
                job.step = max(job.step, m["step"])
                if job.running_since is None:
                    elapsed = m["elapsed"] or 0.0
                    job.running_since = time.monotonic() - elapsed
        elif op == "closed":
            child.closed = True

    def _on_event(self, job: Job, event: Event) -> None:
        if isinstance(event, Started):
            job.running_since = job.running_since or time.monotonic()
            if job.request.seed is None:  # should it run again (a restart), it makes the same picture
                job.request = dataclasses.replace(job.request, seed=event.seed)
        elif isinstance(event, Progress):
            job.step = event.step
            if self._child is not None:
                self._child.proven = True
        if isinstance(event, TERMINAL):
            self._end(job, event)
        else:
            job.handle._publish(event)

    def _end(self, job: Job, event: Event) -> None:
        self._jobs.pop(job.id, None)
        job.handle._publish(event)

    # -- short jobs --------------------------------------------------------------------------------

    async def _short(self, op: str, *args: Any) -> Any:
        return await self._call(op, *args)

    async def _call(self, method: str, *args: Any, watched: bool = True) -> Any:
        self._check_open()
        call = self._new_call(method, list(args), watched)
        try:
            return await call.future
        finally:
            if self._calls.pop(call.id, None) is not None:  # the caller gave up
                self._pump_suspects()

    def _new_call(self, method: str, args: list[Any], watched: bool) -> Call:
        """Register a call and send it (while no child runs, the next one gets it)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        call = Call(next(self._call_ids), method, args, {}, future, watched)
        self._calls[call.id] = call
        if self._child is not None and self._child.send(call_message(call)):
            call.sent_at = time.monotonic()
        return call

    def _check_open(self) -> None:
        if self._broken is not None:
            raise self._broken
        if not self._accepting:
            raise ServiceClosed("the service is shutting down")

    # -- generations -------------------------------------------------------------------------------
    def imagine(
        self,
        request: ImagineRequest,
        owner: str,
        meta: dict[str, str] | None = None,
        job_id: str | None = None,
        max_queued_per_user: int | None = None,
    ) -> JobHandle:
        """Queue a generation; raises QueueFull, UserLimitReached, BadRequest or ServiceClosed at once
        (the caps are checked here, on the mirror of the queue). A journal write that fails in the child
        (disk full) arrives as the job's Failed event."""
        return self._enqueue(request, owner, meta, job_id, True, max_queued_per_user)

    def _enqueue(
        self,
        request: ImagineRequest,
        owner: str,
        meta: dict[str, str] | None,
        job_id: str | None,
        admit: bool,
        max_queued_per_user: int | None = None,
    ) -> JobHandle:
        self._check_open()
        im, mc = self.config.imagine, self.config.manager
        request = request.validated(im.max_steps, im.max_side, im.max_prompt_chars)
        if admit:
            queued = sum(j.running_since is None for j in self._jobs.values())
            active = sum(j.owner == owner for j in self._jobs.values())
            admission.admit(mc, queued, active, max_queued_per_user)
        job_id = job_id or uuid.uuid4().hex[:12]
        handle = JobHandle(self.cancel, job_id, owner, request)
        job = Job(job_id, owner, request, dict(meta or {}), handle)
        self._jobs[job_id] = job
        if self._child is not None:
            self._child.send(imagine_message(job))
        return handle

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job (gone from the queue at once, as in-process) or stop a running one
        within one step. False if it already ended (or its cancel is under way)."""
        job = self._jobs.get(job_id)
        if job is None or job.cancel_sent:
            return False
        job.cancel_sent = True
        sent = self._child is not None and self._child.send({"op": "cancel", "job": job_id})
        if job.running_since is None:
            if not sent:  # no child now: the next one journals it (a running one: _replace does)
                self._backlog.append({"op": "end", "job": job_id, "state": JobState.CANCELLED})
            self._end(job, Cancelled())
        return True

    def resubmit(self, entry: JournalEntry) -> JobHandle:
        """Queue an unfinished job again under its id and seed (see InferenceManager.resubmit)."""
        handle = self._enqueue(entry.resumed_request, entry.owner, entry.meta, entry.id, admit=False)
        self._unfinished.pop(entry.id, None)
        return handle

    def discard(self, entry: JournalEntry, reason: str = "discarded after a restart") -> None:
        self._unfinished.pop(entry.id, None)
        self._to_child({"op": "end", "job": entry.id, "state": JobState.CANCELLED, "error": reason})

    def unfinished(self) -> list[JournalEntry]:
        return list(self._unfinished.values())

    def undelivered(self) -> list[JournalEntry]:
        return list(self._undelivered.values())

    def mark_delivered(self, job_id: str) -> bool:
        """GENERATED → DELIVERED, written by the child (or, after close(), here: the journal is free
        then). True when the job was GENERATED as the journal reads now; never raises."""
        self._undelivered.pop(job_id, None)
        if not self._started:
            return _mark_directly(self.config.manager.journal_path, job_id)
        try:
            entry = self.journal.get(job_id)
        except Exception as e:
            report_unexpected(log, e, f"reading job {job_id}", level=logging.WARNING)
            entry = None
        self._to_child({"op": "mark", "job": job_id})
        return entry is not None and entry.state == JobState.GENERATED

    def _to_child(self, message: dict[str, Any]) -> None:
        """A journal write for the child; kept for the next child while none runs."""
        if self._child is None or not self._child.send(message):
            self._backlog.append(message)

    # -- reading -----------------------------------------------------------------------------------
    @property
    def journal(self) -> Journal:
        """The job journal, read-only here (the child writes it); open between start() and close()."""
        if not self._started:
            raise ServiceClosed("the inference manager is not running")
        if self._reader is None:
            self._reader = Journal(self.config.manager.journal_path, readonly=True)
        return self._reader

    @property
    def has_vqgan(self) -> bool:
        if "has_vqgan" in self._hello:
            return bool(self._hello["has_vqgan"])
        v = self.config.vqgan  # before the child's hello: what the config names (as the engine reads it)
        return bool(v.preset or (v.config and v.checkpoint))

    def make_request(self, prompt: str, **overrides: object) -> ImagineRequest:
        """A request with the child's defaults (its `auto` sizes and steps, resolved for its device;
        the config's until it has said hello), `overrides` applied (None values ignored), validated."""
        im = self.config.imagine
        fields: dict[str, object] = self._hello.get("defaults") or dict(
            steps=int(im.steps), width=int(im.width), height=int(im.height), cutouts=im.cutouts, lr=im.lr,
            generator=im.generator if self.has_vqgan else "pixels", profile=im.profile,
        )  # fmt: skip
        fields = {"prompt": prompt, **fields, **{k: v for k, v in overrides.items() if v is not None}}
        req = ImagineRequest(**fields)  # type: ignore[arg-type]
        limits = ImageLimits(self.config.images.max_bytes, self.config.images.max_pixels)
        return req.validated(im.max_steps, im.max_side, im.max_prompt_chars, limits)

    def status(self) -> ManagerStatus:
        running: JobSummary | None = None
        queued: list[JobSummary] = []
        for job in self._jobs.values():
            total = job.request.steps * job.request.count  # a four-up group runs `steps` per picture
            if job.running_since is not None:
                running = JobSummary(job.id, job.owner, JobState.RUNNING, job.step, total, 0)
            else:
                queued.append(JobSummary(job.id, job.owner, JobState.QUEUED, 0, total, len(queued) + 1))
        beat = self._child.beat if self._child is not None else {}
        device = beat.get("device") or self.config.device
        models = beat.get("models", [])
        return ManagerStatus(len(queued), running, queued, device, models, beat.get("step_time"))


def _mark_directly(path: str, job_id: str) -> bool:
    """After close(): a delivery that landed during the shutdown, marked in the journal now free."""
    try:
        journal = Journal(path)
    except IrisError as e:  # another process owns it now: it will redeliver; say so
        log.warning("job %s was delivered but could not be marked so: %s", job_id, e)
        return False
    try:
        return journal.move(job_id, JobState.GENERATED, JobState.DELIVERED)
    except Exception as e:
        report_unexpected(log, e, f"marking job {job_id} delivered", level=logging.WARNING)
        return False
    finally:
        journal.close()


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped", task.get_name(), exc_info=task.exception())
