"""The fake's notion of "now", which tests can move forward without sleeping."""

from __future__ import annotations

import datetime as dt
import time


class FakeClock:
    """Unix time that runs with the real clock, plus whatever `advance()` added.

    Discord's rules on interactions (3 s to acknowledge, 15 min token life) are measured on this clock, so a
    test reaches "16 minutes later" with `advance(16 * 60)`. `freeze()` stops the real-time part, for tests
    that want the 3 s deadline to depend on `advance()` only.
    """

    def __init__(self, start: float | None = None, *, frozen: bool = False) -> None:
        self._base = time.time() if start is None else start  # unix seconds at the reference point
        self._ref = time.monotonic()  # real time of the reference point, never jumps
        self._frozen = frozen

    def now(self) -> float:
        """Unix seconds."""
        if self._frozen:
            return self._base
        return self._base + (time.monotonic() - self._ref)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self._base += seconds

    def freeze(self) -> None:
        self._base, self._ref, self._frozen = self.now(), time.monotonic(), True

    def unfreeze(self) -> None:
        self._ref, self._frozen = time.monotonic(), False

    def iso(self, at: float | None = None) -> str:
        """ISO 8601 as Discord writes timestamps, for `at` (unix seconds) or now."""
        moment = self.now() if at is None else at
        return dt.datetime.fromtimestamp(moment, dt.UTC).isoformat()
