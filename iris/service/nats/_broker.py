"""What the NATS client and worker share: the names of streams, buckets and subjects, the job record kept
in the jobs bucket, and connecting (streams and buckets are made on first use, by whoever comes first).

One deployment = one `nats.prefix`:
- stream `<p>-jobs` (subject `<p>.jobs`, work-queue retention): one message per generation (its id);
  the durable pull consumer `<p>-workers` hands each to one worker, again after `ack_wait_s` of silence;
- KV `<p>-jobs`: one record per job (JobRecord), the source of truth every bot mirrors;
- object store `<p>-results`: the finished pictures, by job id;
- KV `<p>-live`: `bot.<id>` and `worker.<id>` heartbeats (a worker's carries its load);
- subjects `<p>.events.<job>` (a job's Started/Progress), `<p>.cancel.<job>`, `<p>.short.<worker>`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from iris.config import Config
from iris.errors import IrisError, ServiceClosed
from iris.journal import JournalEntry
from iris.service import wire

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_DELIVER = 5  # a job handed out this many times (each worker died or went silent on it) is dropped
LIVE_FACTOR = 3.0  # a bot or worker is gone once its heartbeat is this many heartbeat_s old
FIRST_CONNECT_S = 20.0  # at start, how long to wait for the NATS server before saying it is unreachable
RETRY_FOR_S = 60.0  # writes that must land (a job, its result) are retried this long through an outage


@dataclass(frozen=True)
class Names:
    prefix: str

    @property
    def stream(self) -> str:
        return f"{self.prefix}-jobs"

    @property
    def jobs(self) -> str:
        return f"{self.prefix}.jobs"

    @property
    def consumer(self) -> str:
        return f"{self.prefix}-workers"

    @property
    def records(self) -> str:
        return f"{self.prefix}-jobs"

    @property
    def results(self) -> str:
        return f"{self.prefix}-results"

    @property
    def live(self) -> str:
        return f"{self.prefix}-live"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}.events.{job_id}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}.cancel.{job_id}"

    def short(self, worker_id: str) -> str:
        return f"{self.prefix}.short.{worker_id}"


@dataclass(frozen=True)
class JobRecord:
    """A job as the jobs bucket holds it. `entry.result_png` is always None here (the picture is in the
    results store); `revision` is the bucket revision it was read at (compare-and-set), not stored."""

    entry: JournalEntry
    bot: str  # the bot process that follows this job and delivers its picture
    worker: str | None = None  # the worker that last started it
    error: IrisError | None = None  # why it failed, as the requester is told
    step_s: float | None = None  # the worker's seconds per step (ETAs)
    revision: int = 0

    @property
    def id(self) -> str:
        return self.entry.id

    def dumps(self) -> bytes:
        return wire.dumps(
            {
                "entry": self.entry,
                "bot": self.bot,
                "worker": self.worker,
                "error": self.error,
                "step_s": self.step_s,
            }
        )

    @classmethod
    def loads(cls, data: bytes, revision: int) -> JobRecord:
        d = wire.loads(data)
        return cls(d["entry"], d["bot"], d.get("worker"), d.get("error"), d.get("step_s"), revision)

    def but(self, bot: str | None = None, worker: str | None = None, failure: IrisError | None = None,
            step_s: float | None = None, **entry: Any) -> JobRecord:  # fmt: skip
        """A copy with some record fields and some entry fields (`state`, `step`, `error`...) changed,
        `updated` set to now; `failure` is the record's `error`."""
        new_entry = dataclasses.replace(self.entry, updated=time.time(), **entry)
        return dataclasses.replace(
            self,
            entry=new_entry,
            bot=bot if bot is not None else self.bot,
            worker=worker if worker is not None else self.worker,
            error=failure if failure is not None else self.error,
            step_s=step_s if step_s is not None else self.step_s,
        )


@dataclass
class Broker:
    """One connection to NATS with the deployment's stream and stores."""

    nc: Client
    js: JetStreamContext
    names: Names
    records: KeyValue
    results: ObjectStore
    live: KeyValue

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.drain()


async def open_broker(
    config: Config,
    name: str,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
) -> Broker:
    """Connect (reconnecting forever after a first success) and make sure the stream and stores exist."""
    cfg = config.nats

    async def reconnected() -> None:
        log.info("%s: reconnected to NATS", name)
        if on_reconnect is not None:
            await on_reconnect()

    async def disconnected() -> None:
        if not (nc.is_closed or nc.is_draining):
            log.warning("%s: lost NATS at %s; reconnecting", name, cfg.url)

    async def error(e: Exception) -> None:
        log.debug("%s: NATS: %s", name, e)

    nc = Client()
    try:  # reconnects never end once connected; the first connection is waited for a bounded time
        await asyncio.wait_for(
            nc.connect(
                cfg.url,
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                connect_timeout=5,
                allow_reconnect=True,
                reconnected_cb=reconnected,
                disconnected_cb=disconnected,
                error_cb=error,
            ),
            FIRST_CONNECT_S,
        )
    except Exception as e:
        await nc.close()
        why = f"nothing answered within {FIRST_CONNECT_S:g} s" if isinstance(e, TimeoutError) else str(e)
        raise ServiceClosed(
            f"cannot reach the NATS server at {cfg.url} ({why or type(e).__name__}); is it running, "
            "with JetStream (nats-server -js)?"
        ) from None
    js = nc.jetstream()
    names = Names(cfg.prefix)
    keep = config.manager.retention_days * 86400 or None  # records and pictures expire after retention
    try:
        try:
            await js.stream_info(names.stream)
        except NotFoundError:
            await js.add_stream(
                name=names.stream,
                subjects=[names.jobs],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE,
            )
        records = await _bucket(js, names.records, ttl=keep)
        live = await _bucket(js, names.live, ttl=LIVE_FACTOR * 10 * cfg.heartbeat_s)
        try:
            results = await js.object_store(names.results)
        except (BucketNotFoundError, NotFoundError):
            results = await js.create_object_store(names.results, storage=api.StorageType.FILE, ttl=keep)
    except BaseException:
        await nc.close()
        raise
    return Broker(nc, js, names, records, results, live)


async def _bucket(js: JetStreamContext, bucket: str, ttl: float | None) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except (BucketNotFoundError, NotFoundError):
        return await js.create_key_value(bucket=bucket, history=1, ttl=ttl, storage=api.StorageType.FILE)


async def retrying(what: str, fn: Callable[[], Awaitable[T]], for_s: float = RETRY_FOR_S) -> T:
    """`fn()` again (backing off) while the broker is away, up to `for_s` seconds; then its error."""
    deadline = time.monotonic() + for_s
    delay = 0.1
    while True:
        try:
            return await fn()
        except (IrisError, asyncio.CancelledError):
            raise
        except Exception as e:
            if time.monotonic() + delay > deadline:
                raise
            log.info("%s: %s; trying again", what, type(e).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def is_alive(beat: dict[str, Any] | None, heartbeat_s: float) -> bool:
    """Whether a `<p>-live` heartbeat is recent (its `at` is the writer's Unix time)."""
    return beat is not None and time.time() - float(beat.get("at", 0)) < LIVE_FACTOR * heartbeat_s


async def modify(
    broker: Broker, job_id: str, change: Callable[[JobRecord], JobRecord | None], for_s: float = RETRY_FOR_S
) -> JobRecord | None:
    """Compare-and-set on a job's record: `change` gets the latest one and returns the new one (None: no
    change); run again when someone else wrote in between. The record as written, or None (no record,
    or `change` declined)."""
    from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

    async def once() -> JobRecord | bool | None:
        try:
            got = await broker.records.get(job_id)
        except KeyNotFoundError:
            return None
        assert got.value is not None and got.revision is not None
        new = change(JobRecord.loads(got.value, got.revision))
        if new is None:
            return None
        try:
            rev = await broker.records.update(job_id, new.dumps(), last=got.revision)
        except KeyWrongLastSequenceError:
            return False  # someone else wrote first: look again
        return dataclasses.replace(new, revision=rev)

    while True:
        result = await retrying(f"updating job {job_id}", once, for_s)
        if result is not False:
            return result if isinstance(result, JobRecord) else None
