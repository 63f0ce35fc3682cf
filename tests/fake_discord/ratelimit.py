"""Rate limits: a fixed-window bucket per route and major parameter, plus 429s a test asks for.

Buckets are measured in real (monotonic) time, not on the fake clock: discord.py sleeps the
`X-RateLimit-Reset-After` it reads in real seconds, so a bucket on the fake clock would disagree with the
client's own limiter (and never refill while the fake clock is frozen).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass

from aiohttp import web

from .wire import json_response

# group → (requests, per seconds). Not published by Discord: message edits and sends at 5 per 5 s per
# channel are what people observe; everything else gets a limit loose enough to stay out of the way.
DEFAULT_LIMITS: dict[str, tuple[int, float]] = {
    "message_edit": (5, 5.0),
    "message_create": (5, 5.0),
    "default": (50, 1.0),
}


@dataclass
class Injected429:
    method: str
    pattern: re.Pattern[str]
    count: int
    retry_after: float
    is_global: bool
    last_at: float | None = None  # monotonic time of the last 429 this rule sent


@dataclass
class _Window:
    start: float
    used: int = 0


class RateLimiter:
    def __init__(self) -> None:
        self.limits = dict(DEFAULT_LIMITS)
        self.injected: list[Injected429] = []
        self._windows: dict[tuple[str, str], _Window] = {}

    def inject(self, method: str, path_regex: str, count: int, retry_after: float, is_global: bool) -> None:
        self.injected.append(
            Injected429(method.upper(), re.compile(path_regex), count, retry_after, is_global)
        )

    def take_injected(self, method: str, path: str) -> Injected429 | None:
        for rule in self.injected:
            if rule.count > 0 and rule.method == method and rule.pattern.search(path):
                rule.count -= 1
                rule.last_at = time.monotonic()
                return rule
        return None

    def too_early(self, method: str, path: str) -> tuple[float, float] | None:
        """(waited, retry_after) when a request comes back sooner than an injected 429 told it to."""
        now = time.monotonic()
        for rule in self.injected:
            if rule.last_at is not None and rule.method == method and rule.pattern.search(path):
                waited = now - rule.last_at
                if waited < rule.retry_after * 0.9:  # 10 % for timer jitter
                    return waited, rule.retry_after
        return None

    def clear_injected(self) -> None:
        self.injected.clear()

    @staticmethod
    def group(method: str, template: str) -> str:
        """Which limit a route falls under; `template` is the route with {placeholders}."""
        if method == "PATCH" and template.endswith("/messages/{message_id}"):
            return "message_edit"  # channel messages and interaction (webhook) messages alike
        if method == "POST" and template == "/channels/{channel_id}/messages":
            return "message_create"
        return "default"

    def hit(self, method: str, template: str, major: str) -> tuple[dict[str, str], float | None]:
        """Count a request: (headers, None), or (headers, retry_after) when the bucket is empty."""
        group = self.group(method, template)
        limit, per = self.limits[group]
        name = group if group != "default" else f"{method} {template}"
        now = time.monotonic()
        window = self._windows.get((name, major))
        if window is None or now >= window.start + per:
            window = self._windows[(name, major)] = _Window(now)
        reset_after = window.start + per - now
        retry = None
        if window.used >= limit:
            retry = reset_after
        else:
            window.used += 1
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(limit - window.used),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": hashlib.sha1(name.encode()).hexdigest()[:32],
        }
        return headers, retry


def too_many_requests(retry_after: float, *, is_global: bool, headers: dict[str, str]) -> web.Response:
    """A 429 as Discord sends it; without `Via` discord.py would take it for a Cloudflare ban."""
    extra = {
        **headers,
        "Via": "1.1 google",
        "Retry-After": str(math.ceil(retry_after)),
        "X-RateLimit-Scope": "global" if is_global else "user",
    }
    if is_global:
        extra["X-RateLimit-Global"] = "true"
    body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": is_global}
    return json_response(body, 429, extra)
