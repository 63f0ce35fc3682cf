"""The worker thread's half of the inference manager: what runs on its one thread.

It takes the next short jobs or generation step, runs it, and keeps the manager's state consistent
whatever happens (a failed journal write, an error after the last step, out of memory): every job ends
with exactly one final event and the worker moves on. `InferenceManager` (models/manager.py) inherits
this and adds the async API, admission and the lifecycle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from iris.config import Config
from iris.errors import IrisError, JobTimedOut, OutOfMemory, internal_error, report_unexpected
from iris.journal import JobState, Journal
from iris.request import ImagineRequest
from iris.service.events import Cancelled, Done, Event, Failed, Progress, Queued, Started
from iris.service.handle import JobHandle
from models.engine import Engine
from models.generate import Generation, png_bytes
from models.group import AnyGeneration
from models.short_jobs import ShortJob, run_batch, take_batch

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0  # journal retention runs at start, then at most this often


@dataclass(eq=False)
class GenJob:
    id: str
    owner: str
    request: ImagineRequest
    handle: JobHandle
    cancel: threading.Event = field(default_factory=threading.Event)
    gen: AnyGeneration | None = None
    started_at: float | None = None
    oom_tries: int = 0
    reduced: list[str] = field(default_factory=list)
    last_position: int | None = None
    journal_failed: bool = False  # a journal write failed (logged once)


class WorkerThread:
    """The worker thread's methods; the state they share is set up by InferenceManager.__init__."""

    config: Config
    engine: Engine
    step_hook: Callable[[Generation], None] | None  # called before each step (tests)
    clock: Callable[[], float]  # Unix time, for retention
    forward_batches: int
    _cv: threading.Condition  # guards the queues and _current; the worker waits on it
    _short: deque[ShortJob]
    _queue: deque[GenJob]
    _current: GenJob | None
    _accepting: bool
    _stop: bool
    _loop: asyncio.AbstractEventLoop | None
    _step_time: float | None  # seconds per step, moving average
    _next_prune: float  # clock() time of the next retention pass

    @property
    def journal(self) -> Journal:
        raise NotImplementedError  # InferenceManager's

    def _worker(self) -> None:
        """The thread's body. Should anything escape the loop, no caller is left waiting: the manager
        stops taking jobs and every job and short job ends (`_worker_died`)."""
        try:
            self._work()
        except BaseException as e:  # logged there, with an error id; the thread then ends quietly
            self._worker_died(e)

    def _work(self) -> None:
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
            except BaseException as e:  # the worker survives anything (even a BaseException raised in a
                # step, as SystemExit is), and never retries the same failure; it stops only on _stop
                if short:
                    error = self._user_error(e)
                    for one in short:  # those already settled stay as they are
                        self._resolve(one.future, error=error)
                elif target is None:
                    report_unexpected(log, e, "the inference worker")
                else:
                    self._end(
                        target, Failed(self._user_error(e, f"job {target.id}")), JobState.FAILED, error=str(e)
                    )
            self._prune_if_due()

    def _worker_died(self, e: BaseException) -> None:
        """The worker thread is ending on an error: fail what it would have run, take nothing more."""
        error = self._user_error(e, "the inference worker")
        with self._cv:
            self._accepting = False
            jobs = ([self._current] if self._current is not None else []) + list(self._queue)
            self._queue.clear()
            shorts = list(self._short)
            self._short.clear()
        for job in jobs:
            try:
                self._end(job, Failed(error), JobState.FAILED, error=str(e))
            except Exception as again:  # the others must still hear the end
                report_unexpected(log, again, f"ending job {job.id}")
        for short in shorts:
            self._resolve(short.future, error=error)

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
            run_batch(
                self.engine.clip,
                batch,
                self._settle_short,
                self.config.clip.batch_size,
                self.engine.describe_features,
            )
        except BaseException as e:  # even a BaseException fails only the short jobs, not the step around
            if len(batch) == 1:
                self._settle_short(batch[0], None, e)
                return
            log.warning("a batch of %d short jobs failed; running them one by one", len(batch))
            for job in batch:  # so a bad job fails alone
                self._run_short([job])

    def _settle_short(self, job: ShortJob, value: Any, error: BaseException | None) -> None:
        self._resolve(job.future, value, None if error is None else self._user_error(error))

    def _start_job(self, job: GenJob) -> None:
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

    def _step_job(self, job: GenJob) -> None:
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
            # The loss is read (a wait for the device) only on steps whose event shows it; a step is cut
            # into slices only while a short job is actually waiting (len() of a deque is atomic).
            nxt = gen.steps_done + 1
            read = nxt % self.config.imagine.preview_every == 0 or nxt >= gen.total
            loss = gen.step(
                lambda: bool(self._short),
                between=self._run_waiting_short,
                slice_size=self.config.manager.step_slice,
                read_loss=read,
            )
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

    def _finish(self, job: GenJob, gen: AnyGeneration) -> None:
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

    def _retry_after_oom(self, job: GenJob) -> None:
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

    def _end(
        self, job: GenJob, event: Event, state: JobState, error: str | None = None, **result: Any
    ) -> None:
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

    def _journal_quietly(self, job: GenJob, **changes: Any) -> None:
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
            ahead = total_steps(self._current.request) - done
        for pos, job in enumerate(self._queue, 1):
            ahead += total_steps(job.request)
            if force or job.last_position != pos:
                job.last_position = pos
                self._emit(job, Queued(pos, ahead * st if st is not None else None))

    def _emit(self, job: GenJob, event: Event) -> None:
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


def total_steps(request: ImagineRequest) -> int:
    """Steps of the whole job: a four-up group runs `steps` for each picture."""
    return request.steps * request.count


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
