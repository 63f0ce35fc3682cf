"""Short jobs (classify, embed, describe, upscale, model id) in the distributed mode: a request to the
least busy live worker (idle before one in a generation, then the fewest short jobs waiting), sent to the
next one when it does not answer within the watchdog's grace. Batching happens on the worker."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from iris.errors import ServiceClosed
from iris.service import wire
from iris.service.nats._broker import Broker
from iris.service.nats._mirror import Mirror

log = logging.getLogger(__name__)


class ShortJobs:
    def __init__(self, mirror: Mirror, timeout_s: float) -> None:
        self.mirror = mirror
        self.timeout_s = timeout_s  # a worker silent this long on a short job is passed over
        self.in_flight: Counter[str] = Counter()  # short jobs this client waits on, per worker id
        self.answered_by: Counter[str] = Counter()  # short jobs answered, per worker id

    def _busy(self, worker_id: str, beat: dict[str, Any]) -> tuple[bool, int, str]:
        """Idle workers first (one in a generation answers only between slices of its step), then the
        fewest short jobs waiting there."""
        return bool(beat.get("running")), int(beat.get("shorts", 0)) + self.in_flight[worker_id], worker_id

    async def call(self, b: Broker, op: str, *args: Any) -> Any:
        """`op(*args)` on the least busy live worker; its answer, or its error raised here."""
        data = wire.dumps({"op": op, "args": list(args), "kw": {}})
        tried: set[str] = set()
        while True:
            workers = {k: v for k, v in self.mirror.workers().items() if k not in tried}
            if not workers:
                what = "answered" if tried else "is running"
                raise ServiceClosed(f"no image worker {what} right now; try again in a minute")
            wid = min(workers, key=lambda k: self._busy(k, workers[k]))
            self.in_flight[wid] += 1
            try:
                msg = await b.nc.request(workers[wid]["subject"], data, timeout=self.timeout_s)
            except (TimeoutError, NoRespondersError, NatsTimeout) as e:
                why = type(e).__name__
                log.warning("worker %s did not answer a short job (%s); trying another", wid, why)
                tried.add(wid)
                continue
            finally:
                self.in_flight[wid] -= 1
            reply = wire.loads(msg.data)
            self.answered_by[wid] += 1
            if "error" in reply:
                raise reply["error"]
            return reply["ok"]
