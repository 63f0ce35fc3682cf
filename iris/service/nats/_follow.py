"""How a bot follows its generations (NatsManager's half that feeds the job handles): Started and Progress
from the worker's subject, Queued (global place and ETA) whenever the mirror changes them, and the end
from the job's record, so an end reached while the bot was cut off from the broker is still heard."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from PIL import Image

from iris.errors import InternalError
from iris.journal import JobState
from iris.service import wire
from iris.service.events import Cancelled, Done, Failed, Queued, Started
from iris.service.handle import JobHandle
from iris.service.nats._broker import Broker, JobRecord, retrying
from iris.service.nats._mirror import Mirror

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Followed:
    handle: JobHandle
    sub: Any = None  # its events subscription
    position: int | None = None  # the last place told
    started: bool = False
    ended: bool = False
    finishing: bool = False  # made: its picture is being fetched for the Done


class Following:
    """The methods; the state they share is set up by NatsManager.__init__."""

    mirror: Mirror
    _followed: dict[str, Followed]
    _loop: asyncio.AbstractEventLoop | None
    _positions_due: bool

    def broker_(self) -> Broker:
        raise NotImplementedError  # NatsManager's

    def _spawn(self, work: Coroutine[Any, Any, Any], name: str = "iris-nats") -> None:
        raise NotImplementedError  # NatsManager's

    async def _subscribe(self, f: Followed) -> None:
        b = self.broker_()

        async def on_event(msg: Msg) -> None:
            if f.ended:
                return
            try:
                ev = wire.loads(msg.data)
            except wire.WireError as e:
                log.warning("job %s: a bad event: %s", f.handle.id, e)
                return
            if isinstance(ev, Started):
                f.started = True
            f.handle._publish(ev)

        f.sub = await b.nc.subscribe(b.names.events(f.handle.id), cb=on_event)

    def _record_changed(self, rec: JobRecord) -> None:
        f = self._followed.get(rec.id)
        state = rec.entry.state
        if f is not None and not f.ended and not f.finishing:
            if state == JobState.GENERATED:
                f.finishing = True  # one Done, once the picture is here
                self._spawn(self._done(f, rec))
            elif state == JobState.FAILED:
                self._end(f, Failed(rec.error or InternalError(rec.entry.error or "the job failed")))
            elif state == JobState.CANCELLED:
                self._end(f, Cancelled())
            elif state == JobState.DELIVERED:  # another bot delivered it
                self._end(f, Cancelled("delivered"))
        self._schedule_positions()

    async def _done(self, f: Followed, rec: JobRecord) -> None:
        png = await self._png(rec.id)
        e = rec.entry
        if png is None:
            event: Done | Failed = Failed(InternalError(f"the picture of job {rec.id} is lost"))
        else:
            image = Image.open(io.BytesIO(png))
            image.load()
            event = Done(image, e.seed or 0, e.step, e.clip_score or 0.0, e.reduced)
        self._end(f, event)

    def _end(self, f: Followed, event: Done | Failed | Cancelled) -> None:
        if f.ended:
            return
        f.ended = True
        f.handle._publish(event)
        self._followed.pop(f.handle.id, None)
        if f.sub is not None:
            sub, f.sub = f.sub, None
            self._spawn(_unsubscribe(sub))

    async def _png(self, job_id: str) -> bytes | None:
        b = self.broker_()
        try:
            got = await retrying(f"fetching the picture of job {job_id}", lambda: b.results.get(job_id), 10.0)
        except Exception as e:
            log.warning("job %s: no picture in the results store (%s)", job_id, type(e).__name__)
            return None
        return bytes(got.data) if got.data is not None else None

    def _schedule_positions(self) -> None:
        """Tell the followed queued jobs their places, once per burst of changes."""
        if self._positions_due or self._loop is None:
            return
        self._positions_due = True
        self._loop.call_soon(self._publish_positions)

    def _publish_positions(self) -> None:
        self._positions_due = False
        for job_id, (pos, eta) in self.mirror.positions().items():
            f = self._followed.get(job_id)
            if f is not None and not f.started and not f.ended and f.position != pos:
                f.position = pos
                f.handle._publish(Queued(pos, eta))


async def _unsubscribe(sub: Any) -> None:
    with contextlib.suppress(Exception):
        await sub.unsubscribe()
