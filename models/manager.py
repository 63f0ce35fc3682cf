"""The inference manager: the one owner of the device and every loaded model.

All torch work runs on ONE worker thread, so two jobs never share the GPU. The event loop talks to it
through an async API and never blocks. Scheduling: generations run FIFO, one step at a time; between two
steps (and between the slices a step is cut into) the worker runs every waiting short job (classify,
embed), batched into one forward pass. So a /classify during a 300-step /imagine waits for one slice.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from iris.config import Config
from iris.errors import (
    BadRequest,
    InternalError,
    IrisError,
    ServiceClosed,
    report_unexpected,
)
from iris.images import ImageLimits, load_image
from iris.journal import JobState, Journal, JournalEntry
from iris.request import ImagineRequest
from iris.service import admission
from iris.service.events import Cancelled
from iris.service.handle import JobHandle, JobSummary, ManagerStatus
from iris.service.results import Description, Prediction, Upscaled
from models.engine import Engine
from models.generate import Generation
from models.short_jobs import ShortJob
from models.worker import GenJob, WorkerThread, total_steps

log = logging.getLogger(__name__)

WORKER_STOP_S = 60.0  # close(): longest wait for the worker thread to end once told to stop


class InferenceManager(WorkerThread):
    """`async with InferenceManager(config) as manager:` starts the worker; leaving it shuts down cleanly."""

    def __init__(self, config: Config, engine: Engine | None = None) -> None:
        self.config = config
        self.engine = engine or Engine(config)
        self._journal: Journal | None = None  # opened (and locked) by start()
        self.step_hook: Callable[[Generation], None] | None = None  # called before each step (tests)
        self._cv = threading.Condition()
        self._short: deque[ShortJob] = deque()
        self._queue: deque[GenJob] = deque()
        self._current: GenJob | None = None
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
        self._unmarked: set[str] = set()  # delivered, but the journal write failed: tried again later

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

    @property
    def has_vqgan(self) -> bool:
        return self.engine.has_vqgan

    def make_request(self, prompt: str, **overrides: object) -> ImagineRequest:
        return self.engine.request(prompt, **overrides)

    async def warm_up(self) -> None:
        await asyncio.to_thread(lambda: (self.engine.clip, self.engine.vqgan))

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
        thread = self._thread
        while (self._current or self._queue) and time.monotonic() < deadline and thread.is_alive():
            await asyncio.sleep(0.02)
        with self._cv:
            leftovers = list(self._queue)
            self._queue.clear()
            if self._current is not None:  # stopped within a step; the journal keeps it as unfinished
                self._current.cancel.set()
        for job in leftovers:
            self._emit(job, Cancelled("shutdown"))
        while self._current is not None and thread.is_alive():  # a dead worker ended its jobs itself
            await asyncio.sleep(0.02)
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        await asyncio.to_thread(thread.join, WORKER_STOP_S)
        if thread.is_alive():  # stuck in torch: a daemon thread, it cannot keep the process alive
            log.error("the inference worker did not stop within %g s; leaving it behind", WORKER_STOP_S)
        self._thread = None
        for short in list(self._short):
            self._resolve(short.future, error=ServiceClosed("the service is shutting down"))
        self._short.clear()
        for job_id in list(self._unmarked):  # a last try before the journal closes
            self.mark_delivered(job_id)
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

    async def describe(self, image: Image.Image | bytes, top_k: int = 5) -> Description:
        """What the image shows (vocabulary phrases with scores, and an /imagine prompt): a short job."""
        im = await self._decode(image)
        job = ShortJob("describe", self._new_future(), images=[im], top_k=max(1, min(top_k, 25)))
        result: Description = await self._submit(job)
        return result

    async def upscale(self, image: Image.Image | bytes) -> Upscaled:
        """`image` at twice its side, on the worker thread (super-resolution model or labelled Lanczos)."""
        im = await self._decode(image)
        result: Upscaled = await self._submit(
            ShortJob("call", self._new_future(), run=lambda: self.engine.upscale(im))
        )
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
                admission.admit(mc, len(self._queue), active, max_queued_per_user)
            handle = JobHandle(self._cancel, job_id, owner, request)
            job = GenJob(job_id, owner, request, handle)
            try:
                self.journal.add(job_id, owner, request, meta or {})
            except IrisError:
                raise
            except Exception as e:  # disk full, a broken file: refuse the job rather than lose it later
                error_id = report_unexpected(log, e, f"journaling job {job_id}")
                raise InternalError(
                    f"I can't take new pictures right now; try again later (error id {error_id})"
                ) from e
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
        Never raises: a failed journal write is logged once and tried again with the next mark and at
        close(); should it keep failing, the next start posts the picture again.
        """
        self._undelivered.pop(job_id, None)
        changed = False
        for jid in [job_id, *(self._unmarked - {job_id})]:
            try:
                moved = self._mark(jid)
            except Exception as e:
                if jid not in self._unmarked:
                    report_unexpected(log, e, f"marking job {jid} delivered", level=logging.WARNING)
                self._unmarked.add(jid)
                continue
            self._unmarked.discard(jid)
            changed = changed or (moved and jid == job_id)
        return changed

    def _mark(self, job_id: str) -> bool:
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
        handle = self._enqueue(entry.resumed_request, entry.owner, entry.meta, entry.id, admit=False)
        self._unfinished.pop(entry.id, None)
        return handle

    def discard(self, entry: JournalEntry, reason: str = "discarded after a restart") -> None:
        """Give up an unfinished job (its place to report is gone): CANCELLED, with `reason` journaled.
        Should the write fail (logged), the next start offers the job again."""
        self._unfinished.pop(entry.id, None)
        try:
            self.journal.update(entry.id, state=JobState.CANCELLED, error=reason)
        except ServiceClosed:
            raise
        except Exception as e:
            report_unexpected(log, e, f"discarding job {entry.id}")

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job by id (e.g. from a button after a restart of the bot)."""
        return self._cancel(job_id)

    def _cancel(self, job_id: str) -> bool:
        with self._cv:
            for job in self._queue:
                if job.id == job_id:
                    self._queue.remove(job)
                    self._journal_quietly(job, state=JobState.CANCELLED)  # a failed write must not
                    self._emit(job, Cancelled())  # keep the job from ending
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
                running = JobSummary(cur.id, cur.owner, JobState.RUNNING, step, total_steps(cur.request), 0)
            queued = [
                JobSummary(j.id, j.owner, JobState.QUEUED, 0, total_steps(j.request), i)
                for i, j in enumerate(self._queue, 1)
            ]
        eng = self.engine
        models = [m for m in (eng._clip and eng._clip.name, eng._vqgan and "vqgan") if m]
        device = str(eng._clip.device) if eng._clip else self.config.device
        return ManagerStatus(len(queued), running, queued, device, models, self._step_time)

    # -- the worker thread -------------------------------------------------------------------------
