"""The watchdog: the parent's judgement of its device child, and the child's replacement.

The watchdog (a task on the event loop, every min(0.25 s, watchdog_grace_s / 4)) replaces the child:
- when a generation has run past `manager.job_deadline_s` + `manager.watchdog_grace_s` without
  ending: the step under way did not return within the job's remaining deadline plus the grace (the
  child checks the deadline itself between steps, so a live child never gets there);
- when a short job (classify, embed...) has waited `watchdog_grace_s` for its answer, or the child
  sent nothing at all (not even its heartbeat) for that long, unless it is loading the models (a
  short job waits for one slice of a step at most, so a live child answers well within the grace);
- when the child exits or is killed (its pipe closes).
The running job then fails with a one-line error naming the step (JobTimedOut for a hang,
InternalError for a crash; it is not retried: the same step may hang again), journaled FAILED.
When the child hung inside a batch of short jobs instead (its heartbeat says so), the generation is
not to blame: it runs again from its start with its seed. Each short job that had waited past the
grace then gets a strike; struck ones go to the new child one at a time, alone (so a request that
hangs every child takes no other down with it), and fail with JobTimedOut at CALL_STRIKES.
A new child is started and warmed up; waiting short jobs are sent again, and queued generations
are queued again in order under their ids, their handles still receiving events. Two children in a
row that die before their hello (bad weights that crash the process, a broken install) stop the
restarts: everything waiting fails with WorkerUnavailable, and so does every later call.

Defaults: `watchdog_grace_s` 30 s, `job_deadline_s` 900 s (config); START_TRIES 2, CALL_STRIKES 2,
CLOSE_MARGIN_S 1 s, a child's hello within SPAWN_TIMEOUT_S 120 s, its heartbeat every
min(1 s, grace / 4). Two children in a row replaced before they answered anything (weights that
crash the process while loading) end the restarts too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from iris.config import Config
from iris.errors import InternalError, IrisError, JobTimedOut
from iris.journal import JobState
from iris.service.events import Cancelled, Event, Failed
from iris.service.process._child import Child
from iris.service.process._state import Call, Job, WorkerUnavailable, call_message, imagine_message, settle

log = logging.getLogger(__name__)

START_TRIES = 2  # children in a row that may die before their hello; then the worker is reported broken
CALL_STRIKES = 2  # a short job waiting on this many hung children fails instead of being sent again


class Watchdog:
    """ProcessManager's watchdog half; the state it shares is set up by ProcessManager.__init__."""

    config: Config
    watch_every: float  # seconds between two checks
    restarts: int  # children replaced since start()
    _child: Child | None
    _jobs: dict[str, Job]
    _calls: dict[int, Call]
    _backlog: list[dict[str, Any]]
    _closing: bool
    _accepting: bool
    _broken: IrisError | None
    _unproven: int  # children in a row replaced before they answered anything

    async def _spawn(self) -> Child:
        raise NotImplementedError  # ProcessManager's

    def _end(self, job: Job, event: Event) -> None:
        raise NotImplementedError  # ProcessManager's

    def _new_call(self, method: str, args: list[Any], watched: bool) -> Call:
        raise NotImplementedError  # ProcessManager's

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watch_every)
            child = self._child
            if child is None or self._closing:
                continue
            verdict = self._diagnose(child)
            if verdict is not None:
                await self._replace(child, *verdict)

    def _diagnose(self, child: Child) -> tuple[bool, str] | None:
        """(hung, what happened) when `child` must be replaced, else None."""
        mc, now = self.config.manager, time.monotonic()
        if child.dead():
            code = child.proc.poll()
            return False, f"the device worker stopped unexpectedly (exit code {code})"
        running = self._running()
        since = running.running_since if running is not None else None
        if since is not None and now - since > mc.job_deadline_s + mc.watchdog_grace_s:
            return True, "the device stopped responding"
        if child.beat.get("loading"):
            return None
        # a short job's wait counts from its sending, or from the end of a model load that held it up
        waited = [
            now - max(c.sent_at, child.loading_seen)
            for c in self._calls.values()
            if c.watched and c.sent_at is not None
        ]
        if max(waited, default=0.0) > mc.watchdog_grace_s or now - child.last_heard > mc.watchdog_grace_s:
            return True, "the device stopped responding"
        return None

    async def _replace(self, child: Child, hung: bool, what: str) -> None:
        """Kill `child`, end what it was stuck on, start another, send it everything still waiting."""
        self._child = None
        await child.kill()
        self.restarts += 1
        self._unproven = 0 if child.proven else self._unproven + 1
        running = self._running()
        in_short = hung and (running is None or bool(child.beat.get("short")))
        where = f" during step {running.step + 1} of job {running.id}" if running and not in_short else ""
        log.error("%s%s; restarting it", what, where or (" in a short job" if in_short else ""))
        if running is not None and in_short:  # not its fault: it starts again, with the same seed
            running.running_since, running.step = None, 0
        elif running is not None:
            cls = JobTimedOut if hung else InternalError
            err = cls(f"{what} during step {running.step + 1}; the job was stopped and the worker restarted")
            self._backlog.append(
                {"op": "end", "job": running.id, "state": JobState.FAILED, "error": err.message}
            )
            self._end(running, Failed(err))
        for job in [j for j in self._jobs.values() if j.cancel_sent]:  # the cancel may not have arrived
            self._backlog.append({"op": "end", "job": job.id, "state": JobState.CANCELLED})
            self._end(job, Cancelled())
        now, grace = time.monotonic(), self.config.manager.watchdog_grace_s
        for call in list(self._calls.values()):
            # A short job that hung a child twice (it waited past the grace both times) is not sent a
            # third time: it fails, so one bad request cannot restart the worker forever.
            if in_short and call.sent_at is not None and now - call.sent_at > grace:
                call.strikes += 1
            if call.strikes >= CALL_STRIKES:
                err = JobTimedOut(f"{what} twice while answering this request; it was stopped")
                settle(call.future, error=err)
        try:
            if self._unproven >= START_TRIES:  # weights that crash it while loading, say: no loop
                raise WorkerUnavailable(
                    f"the device worker failed {self._unproven} times in a row before it answered "
                    f"anything ({what}); see the log above"
                )
            new = await self._spawn()
        except IrisError as e:
            self._fail_everything(e)
            return
        if self._closing:  # close() began while it started
            await new.kill()
            return
        self._child = new
        backlog, self._backlog = self._backlog, []
        for message in backlog:
            new.send(message)
        # Load the models first (the start of the service did too): until they are loaded a slow answer
        # is explained, and a short job that hung the last child must be judged again.
        warm = self._new_call("warm_up", [], watched=False)
        warm.future.add_done_callback(functools.partial(self._warmed_up, warm))
        for job in self._jobs.values():  # their queue order is kept
            new.send(imagine_message(job))
        now = time.monotonic()
        for call in self._calls.values():
            call.sent_at = None
            if not call.future.done() and not call.strikes:
                call.sent_at = now
                new.send(call_message(call))
        self._pump_suspects()

    def _pump_suspects(self) -> None:
        """Send the next short job that was waiting on a hung child, alone: only while no other call
        is in flight, so that if it hangs this child too it takes no innocent job down with it."""
        child = self._child
        if child is None or any(c.sent_at is not None for c in self._calls.values()):
            return
        held = [c for c in self._calls.values() if c.strikes and not c.future.done()]
        if held and child.send(call_message(held[0])):
            held[0].sent_at = time.monotonic()

    def _warmed_up(self, call: Call, future: asyncio.Future[Any]) -> None:
        if self._calls.pop(call.id, None) is not None:
            self._pump_suspects()
        if not future.cancelled() and future.exception() is not None:
            log.error("the new device worker cannot load the models: %s", future.exception())

    def _fail_everything(self, error: IrisError) -> None:
        log.error("%s", error.message)
        self._broken = error
        self._accepting = False
        for job in list(self._jobs.values()):
            self._end(job, Failed(error))
        for call in list(self._calls.values()):
            settle(call.future, error=error)

    def _running(self) -> Job | None:
        return next((j for j in self._jobs.values() if j.running_since is not None), None)
