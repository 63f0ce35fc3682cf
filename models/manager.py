"""The inference manager: the one owner of the device and every loaded model.

All torch work runs on ONE worker thread, so two jobs never share the GPU. The event loop talks to it
through an async API and never blocks. Scheduling: generations run FIFO, one step at a time; between two
steps (and between the slices a step is cut into) the worker runs every waiting short job (classify,
embed), batched into one forward pass. So a /classify during a 300-step /imagine waits for one slice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from iris.config import Config
from iris.errors import (
    BadRequest,
    IrisError,
    JobTimedOut,
    OutOfMemory,
    QueueFull,
    ServiceClosed,
    UserLimitReached,
    internal_error,
    report_unexpected,
)
from iris.images import ImageLimits, load_image
from iris.request import ImagineRequest
from models.clip import Prediction
from models.engine import Engine
from models.events import Cancelled, Done, Event, Failed, Progress, Queued, Started
from models.generate import Generation, png_bytes
from models.handle import JobHandle, JobSummary, ManagerStatus
from models.journal import JobState, Journal, JournalEntry
from models.short_jobs import ShortJob, run_batch, take_batch

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0  # journal retention runs at start, then at most this often


@dataclass(eq=False)
class _Job:
    id: str
    owner: str
    request: ImagineRequest
    handle: JobHandle
    cancel: threading.Event = field(default_factory=threading.Event)
    gen: Generation | None = None
    started_at: float | None = None
    oom_tries: int = 0
    reduced: list[str] = field(default_factory=list)
    last_position: int | None = None
    journal_failed: bool = False  # a journal write failed (logged once)


class InferenceManager:
    """`async with InferenceManager(config) as manager:` starts the worker; leaving it shuts down cleanly."""

    def __init__(self, config: Config, engine: Engine | None = None) -> None:
        self.config = config
        self.engine = engine or Engine(config)
        self._journal: Journal | None = None  # opened (and locked) by start()
        self.step_hook: Callable[[Generation], None] | None = None  # called before each step (tests)
        self._cv = threading.Condition()
        self._short: deque[ShortJob] = deque()
        self._queue: deque[_Job] = deque()
        self._current: _Job | None = None
        self._accepting = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._step_time: float | None = None
        self._unfinished: dict[str, JournalEntry] = {}
        self._undelivered: dict[str, JournalEntry] = {}
        self.clock: Callable[[], float] = time.time  # Unix time for retention (tests move it)
        self._next_prune = 0.0  # clock() time of the next journal retention pass
        self.forward_batches = 0  # short-job batches run (each one image forward pass at most)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def __aenter__(self) -> InferenceManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def journal(self) -> Journal:
        """The job journal (read it with `journal.get(job_id)`); open between start() and close()."""
        if self._journal is None:
            raise ServiceClosed("the inference manager is not running")
        return self._journal

    async def start(self) -> None:
        """Open the journal (JournalLocked if another manager owns it) and start the worker."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._open_journal)  # file I/O (and retention) off the event loop
        self._accepting = True
        self._thread = threading.Thread(target=self._worker, name="iris-inference", daemon=True)
        self._thread.start()

    async def close(self, grace_s: float | None = None) -> None:
        """Stop taking jobs; drain or cancel what is left within the grace period; stop the worker."""
        if self._thread is None:
            self._close_journal()
            return
        self._accepting = False
        grace = self.config.manager.close_grace_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        if not self.config.manager.drain_on_close:
            with self._cv:
                queued, self._queue = list(self._queue), deque()
            for job in queued:  # kept as unfinished in the journal: offered back on the next start
                self._emit(job, Cancelled("shutdown"))
        while (self._current or self._queue) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        with self._cv:
            leftovers = list(self._queue)
            self._queue.clear()
            if self._current is not None:  # stopped within a step; the journal keeps it as unfinished
                self._current.cancel.set()
        for job in leftovers:
            self._emit(job, Cancelled("shutdown"))
        while self._current is not None:
            await asyncio.sleep(0.02)
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        for short in list(self._short):
            self._resolve(short.future, error=ServiceClosed("the service is shutting down"))
        self._short.clear()
        self._close_journal()

    def _open_journal(self) -> None:
        self._journal = Journal(self.config.manager.journal_path)
        self._prune_if_due()  # first: a job past retention is not offered back
        self._unfinished = {e.id: e for e in self._journal.unfinished()}
        self._undelivered = {e.id: e for e in self._journal.in_states(JobState.GENERATED)}

    def _close_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    # -- short jobs --------------------------------------------------------------------------------
    async def classify(
        self,
        image: Image.Image | bytes,
        labels: Sequence[str],
        top_k: int | None = None,
        templates: str | None = None,
    ) -> list[Prediction]:
        labels = self.engine.check_labels(list(labels))
        im = await self._decode(image)
        job = ShortJob(
            "classify",
            self._new_future(),
            images=[im],
            labels=labels,
            top_k=top_k or self.config.classify.top_k,
            templates=templates or self.config.classify.templates,
        )
        result: list[Prediction] = await self._submit(job)
        return result

    async def embed_images(self, images: Sequence[Image.Image | bytes]) -> np.ndarray:
        decoded = [await self._decode(im) for im in images]
        result: np.ndarray = await self._submit(ShortJob("images", self._new_future(), images=decoded))
        return result

    async def embed_text(self, query: str) -> np.ndarray:
        if not query.strip():
            raise BadRequest("the query is empty")
        result: np.ndarray = await self._submit(ShortJob("text", self._new_future(), text=query))
        return result

    async def model_id(self) -> str:
        """The CLIP model's id (embeddings of different ids do not mix); loads the model if needed."""
        name: str = await self._submit(ShortJob("model_id", self._new_future()))
        return name

    async def _decode(self, image: Image.Image | bytes) -> Image.Image:
        if isinstance(image, Image.Image):
            return image
        limits = ImageLimits(self.config.images.max_bytes, self.config.images.max_pixels)
        return await asyncio.to_thread(load_image, image, limits)

    def _new_future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, job: ShortJob) -> Any:
        if not self._accepting:
            raise ServiceClosed("the service is shutting down")
        with self._cv:
            self._short.append(job)
            self._cv.notify_all()
        return await job.future

    # -- generations -------------------------------------------------------------------------------
    def imagine(
        self,
        request: ImagineRequest,
        owner: str,
        meta: dict[str, str] | None = None,
        job_id: str | None = None,
        max_queued_per_user: int | None = None,
    ) -> JobHandle:
        """Queue a generation; raises QueueFull, UserLimitReached, BadRequest or ServiceClosed at once.

        `max_queued_per_user` overrides the config's cap (per-server settings).
        """
        return self._enqueue(
            request, owner, meta, job_id, admit=True, max_queued_per_user=max_queued_per_user
        )

    def _enqueue(
        self,
        request: ImagineRequest,
        owner: str,
        meta: dict[str, str] | None,
        job_id: str | None,
        admit: bool,
        max_queued_per_user: int | None = None,
    ) -> JobHandle:
        """Validate, apply the queue bound and per-user caps when `admit`, journal and queue the job."""
        if not self._accepting:
            raise ServiceClosed("the service is shutting down")
        im, mc = self.config.imagine, self.config.manager
        request = request.validated(im.max_steps, im.max_side, im.max_prompt_chars)
        job_id = job_id or uuid.uuid4().hex[:12]
        with self._cv:
            if admit:
                active = sum(j.owner == owner for j in self._queue)
                active += self._current is not None and self._current.owner == owner
                if len(self._queue) >= mc.max_queue:
                    raise QueueFull(len(self._queue))
                queued_cap = mc.max_queued_per_user if max_queued_per_user is None else max_queued_per_user
                limit = queued_cap + mc.max_running_per_user
                if active >= limit:
                    raise UserLimitReached(
                        f"you already have {active} generation{'s' * (active > 1)} queued or running "
                        f"(the limit is {limit}); wait for one to finish or cancel it"
                    )
            handle = JobHandle(self, job_id, owner, request)
            job = _Job(job_id, owner, request, handle)
            self.journal.add(job_id, owner, request, meta or {})
            self._queue.append(job)
            self._publish_positions_locked()
            self._cv.notify_all()
        return handle

    def unfinished(self) -> list[JournalEntry]:
        """Jobs the previous run left queued or running, for the caller to resubmit or discard."""
        return list(self._unfinished.values())

    def undelivered(self) -> list[JournalEntry]:
        """Jobs the previous run GENERATED but never saw delivered, oldest first, each with its result
        (`result_png`, `seed`, `step`, `clip_score`, `reduced`): deliver each, then `mark_delivered` it.

        A snapshot taken at start(): jobs generated during this run are delivered from their Done event.
        """
        return list(self._undelivered.values())

    def mark_delivered(self, job_id: str) -> bool:
        """Record that a GENERATED job's picture reached its place: GENERATED → DELIVERED.

        Idempotent; True only when this call changed the state (False for an unknown job, a job not
        generated yet, or one already delivered). A restart redelivers every job not marked. Works after
        close() too (deliveries may finish during a shutdown), while no other process owns the journal.
        """
        self._undelivered.pop(job_id, None)
        if self._journal is not None:
            return self._journal.move(job_id, JobState.GENERATED, JobState.DELIVERED)
        # After close(): a delivery that was still under way (waiting out a rate limit) lands during the
        # shutdown. Open the journal just for this, so the next start does not post the picture again.
        try:
            journal = Journal(self.config.manager.journal_path)
        except IrisError as e:  # another process owns it now: it will redeliver; say so
            log.warning("job %s was delivered but could not be marked so: %s", job_id, e)
            return False
        try:
            return journal.move(job_id, JobState.GENERATED, JobState.DELIVERED)
        finally:
            journal.close()

    def resubmit(self, entry: JournalEntry) -> JobHandle:
        """Queue an unfinished job again under its id, with the seed it was started with (so a resumed
        job makes the picture it would have made). The queue bound and per-user caps do not apply: the
        job was admitted before the restart. Raises BadRequest (the request no longer fits the config's
        limits) or ServiceClosed; the caller then discards it."""
        request = entry.request
        if entry.seed is not None:
            request = dataclasses.replace(request, seed=entry.seed)
        handle = self._enqueue(request, entry.owner, entry.meta, entry.id, admit=False)
        self._unfinished.pop(entry.id, None)
        return handle

    def discard(self, entry: JournalEntry, reason: str = "discarded after a restart") -> None:
        """Give up an unfinished job (its place to report is gone): CANCELLED, with `reason` journaled."""
        self.journal.update(entry.id, state=JobState.CANCELLED, error=reason)
        self._unfinished.pop(entry.id, None)

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job by id (e.g. from a button after a restart of the bot)."""
        return self._cancel(job_id)

    def _cancel(self, job_id: str) -> bool:
        with self._cv:
            for job in self._queue:
                if job.id == job_id:
                    self._queue.remove(job)
                    self.journal.update(job_id, state=JobState.CANCELLED)
                    self._emit(job, Cancelled())
                    self._publish_positions_locked()
                    return True
            if self._current is not None and self._current.id == job_id and not self._current.cancel.is_set():
                self._current.cancel.set()
                self._cv.notify_all()
                return True
        return False

    def status(self) -> ManagerStatus:
        with self._cv:
            cur = self._current
            running = None
            if cur is not None:
                step = cur.gen.steps_done if cur.gen else 0
                running = JobSummary(cur.id, cur.owner, JobState.RUNNING, step, cur.request.steps, 0)
            queued = [
                JobSummary(j.id, j.owner, JobState.QUEUED, 0, j.request.steps, i)
                for i, j in enumerate(self._queue, 1)
            ]
        eng = self.engine
        models = [m for m in (eng._clip and eng._clip.name, eng._vqgan and "vqgan") if m]
        device = str(eng._clip.device) if eng._clip else self.config.device
        return ManagerStatus(len(queued), running, queued, device, models, self._step_time)

    # -- the worker thread -------------------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            with self._cv:
                while not (self._short or self._queue or self._current or self._stop):
                    self._cv.wait()
                if self._stop:
                    return
                short = take_batch(self._short, self.config.manager.short_batch_size)
                job = self._current
                start = None
                if not short and job is None and self._queue:
                    start = self._current = self._queue.popleft()
                    self._publish_positions_locked()
            target = start or job
            try:
                if short:
                    self._run_short(short)
                elif start is not None:
                    self._start_job(start)
                elif job is not None:
                    self._step_job(job)
            except Exception as e:  # the worker must survive anything, and never retry the same failure
                if short or target is None:
                    report_unexpected(log, e, "the inference worker")
                else:
                    self._end(
                        target, Failed(self._user_error(e, f"job {target.id}")), JobState.FAILED, error=str(e)
                    )
            self._prune_if_due()

    def _prune_if_due(self) -> None:
        """Retention: delete jobs over for `manager.retention_days`, at start and then at most hourly."""
        days = self.config.manager.retention_days
        now = self.clock()
        if days <= 0 or now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY_S
        try:
            deleted = self.journal.prune(now - days * 86400)
        except Exception as e:  # retention can wait for the next pass; jobs must not
            report_unexpected(log, e, "the journal retention pass")
            return
        if deleted:
            log.info("journal: deleted %d jobs finished more than %g days ago", deleted, days)

    def _run_waiting_short(self) -> None:
        """Between two slices of a step: run every short job that is waiting (on this same thread)."""
        while True:
            with self._cv:
                batch = take_batch(self._short, self.config.manager.short_batch_size)
            if not batch:
                return
            self._run_short(batch)

    def _run_short(self, batch: list[ShortJob]) -> None:
        self.forward_batches += 1
        try:
            run_batch(self.engine.clip, batch, self._settle_short)
        except Exception as e:
            if len(batch) == 1:
                self._settle_short(batch[0], None, e)
                return
            log.warning("a batch of %d short jobs failed; running them one by one", len(batch))
            for job in batch:  # so a bad job fails alone
                self._run_short([job])

    def _settle_short(self, job: ShortJob, value: Any, error: BaseException | None) -> None:
        self._resolve(job.future, value, None if error is None else self._user_error(error))

    def _start_job(self, job: _Job) -> None:
        if job.cancel.is_set():
            self._end(job, Cancelled(), JobState.CANCELLED)
            return
        try:
            gen = self.engine.new_generation(job.request)
        except Exception as e:
            self._end(job, Failed(self._user_error(e, f"job {job.id}")), JobState.FAILED, error=str(e))
            return
        gen.before_step = self.step_hook
        job.gen = gen
        job.started_at = time.monotonic()
        if job.request.seed is None:  # a retry after out-of-memory keeps the same seed
            job.request = dataclasses.replace(job.request, seed=gen.seed)
        self._journal_quietly(job, state=JobState.RUNNING, seed=gen.seed, step=0)
        w, h = gen.size
        reduced = "; ".join(job.reduced) or None
        self._emit(job, Started(gen.seed, w, h, job.request.cutouts, reduced))

    def _step_job(self, job: _Job) -> None:
        gen = job.gen
        assert gen is not None and job.started_at is not None
        if job.cancel.is_set():
            # a shutdown keeps it for the next start
            state = JobState.CANCELLED if self._accepting else JobState.RUNNING
            self._end(job, Cancelled("cancelled" if self._accepting else "shutdown"), state)
            return
        elapsed = time.monotonic() - job.started_at
        deadline = self.config.manager.job_deadline_s
        if elapsed > deadline:
            err = JobTimedOut(
                f"the generation ran past its {deadline:g} s limit after {gen.steps_done} steps"
            )
            self._end(job, Failed(err), JobState.FAILED, error=err.message)
            return
        t0 = time.perf_counter()
        out_of_memory = False
        try:
            loss = gen.step(between=self._run_waiting_short, slice_size=self.config.manager.step_slice)
        except torch.OutOfMemoryError:
            out_of_memory = True  # retried below, outside this block: the traceback pins the step's frames
        except Exception as e:
            self._end(job, Failed(self._user_error(e, f"job {job.id}")), JobState.FAILED, error=str(e))
            return
        if out_of_memory:
            del gen  # our last reference to the failed attempt's tensors
            self._retry_after_oom(job)
            return
        dt = time.perf_counter() - t0
        self._step_time = dt if self._step_time is None else 0.8 * self._step_time + 0.2 * dt
        every = self.config.imagine.preview_every
        preview = None
        if gen.steps_done % every == 0 and not gen.done:
            try:
                preview = png_bytes(gen.preview())
            except Exception as e:  # the step still counts; only its picture is missing
                report_unexpected(log, e, f"the preview of job {job.id}", level=logging.WARNING)
            self._journal_quietly(job, step=gen.steps_done)
            with self._cv:
                self._publish_positions_locked(force=True)
        remaining = (gen.total - gen.steps_done) * self._step_time
        self._emit(job, Progress(gen.steps_done, gen.total, loss, remaining, preview))
        if gen.done:
            self._finish(job, gen)

    def _finish(self, job: _Job, gen: Generation) -> None:
        """After the last step: the final picture (any error ends the job now, as Failed), GENERATED."""
        try:
            result = gen.result()
            png = png_bytes(result.image)
        except torch.OutOfMemoryError:
            err: IrisError = OutOfMemory(
                "the device ran out of memory while making the final picture; try a smaller size"
            )
            self._end(job, Failed(err), JobState.FAILED, error=err.message)
            return
        except Exception as e:
            self._end(job, Failed(self._user_error(e, f"job {job.id}")), JobState.FAILED, error=str(e))
            return
        reduced = "; ".join(job.reduced) or None
        done = Done(result.image, result.seed, result.steps, result.clip_score, reduced)
        self._end(
            job, done, JobState.GENERATED,
            result_png=png, seed=result.seed, clip_score=result.clip_score, reduced=reduced,
        )  # fmt: skip

    def _retry_after_oom(self, job: _Job) -> None:
        """Free memory, then retry with fewer cutouts, then with a smaller size; then fail."""
        job.gen = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        job.oom_tries += 1
        req = job.request
        if job.oom_tries == 1 and req.cutouts > 1:
            new = dataclasses.replace(req, cutouts=max(1, req.cutouts // 2))
            job.reduced.append(f"cutouts {req.cutouts} → {new.cutouts}")
        elif job.oom_tries <= 2 and min(req.width, req.height) > 32:
            w, h = max(32, int(req.width * 0.75)), max(32, int(req.height * 0.75))
            new = dataclasses.replace(req, width=w, height=h)
            job.reduced.append(f"size {req.width}×{req.height} → {w}×{h}")
        else:
            err = OutOfMemory(
                f"the device ran out of memory even at {req.width}×{req.height} with {req.cutouts} cutouts; "
                "try a smaller size"
            )
            self._end(job, Failed(err), JobState.FAILED, error=err.message)
            return
        log.warning("job %s ran out of memory; retrying with %s", job.id, job.reduced[-1])
        job.request = new
        self._start_job(job)

    def _end(self, job: _Job, event: Event, state: JobState, error: str | None = None, **result: Any) -> None:
        """Journal the job's last state, free the worker, tell the caller — the last two even when the
        journal write fails (disk full): the caller always hears the end, and the worker moves on."""
        changes: dict[str, Any] = {"state": state, **result}
        if error is not None:
            changes["error"] = error
        if job.gen is not None:
            changes["step"] = job.gen.steps_done
        try:
            self._journal_quietly(job, **changes)
        finally:
            with self._cv:
                if self._current is job:
                    self._current = None
                job.gen = None
            self._emit(job, event)

    def _journal_quietly(self, job: _Job, **changes: Any) -> None:
        """A journal write that must not stop the job: a failure (disk full) is logged, once per job."""
        try:
            self.journal.update(job.id, **changes)
        except Exception as e:
            if not job.journal_failed:
                report_unexpected(log, e, f"the journal write for job {job.id}")
            job.journal_failed = True

    # -- plumbing ----------------------------------------------------------------------------------
    def _publish_positions_locked(self, force: bool = False) -> None:
        """Tell each queued job its position and ETA when they change (call with the lock held)."""
        st = self._step_time
        ahead = 0
        if self._current is not None:
            done = self._current.gen.steps_done if self._current.gen else 0
            ahead = self._current.request.steps - done
        for pos, job in enumerate(self._queue, 1):
            ahead += job.request.steps
            if force or job.last_position != pos:
                job.last_position = pos
                self._emit(job, Queued(pos, ahead * st if st is not None else None))

    def _emit(self, job: _Job, event: Event) -> None:
        self._call_soon(job.handle._publish, event)

    def _resolve(
        self, future: asyncio.Future[Any], value: Any = None, error: BaseException | None = None
    ) -> None:
        def settle() -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

        self._call_soon(settle)

    def _call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if _running_loop() is loop:  # already on the loop's thread: deliver in order, now
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    @staticmethod
    def _user_error(e: BaseException, what: str = "a short job") -> IrisError:
        return internal_error(log, e, what)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
