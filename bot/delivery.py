"""Messages that must arrive: retried past rate limits and server errors, and people told why when not.

A progress edit may be dropped (the next one replaces it); a final answer may not. `retrying` sends again
after Discord's `retry_after` when discord.py's own retries give up on a 429 (or a 5xx) or when the
connection drops (discord.py does not retry that), and `why_not` turns Discord's refusals into a sentence
for the person who asked. `SEND_ERRORS` is what a send to one place can fail with: the caller then tries
the next place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
import discord

log = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS = 4  # sends of one message to one place; each is up to 5 tries by discord.py through 429s
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_WAIT_S = 60.0  # longest wait between two sends; a longer retry_after counts as "keeps failing"
TOKEN_GONE = frozenset({10015, 10062, 50027})  # Unknown Webhook, Unknown interaction, Invalid Webhook Token
# No answer at all: the connection dropped (ServerDisconnectedError, a reset) or timed out.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError, asyncio.TimeoutError)
# What one send can fail with: Discord refused it, or it never got an answer.
SEND_ERRORS: tuple[type[BaseException], ...] = (discord.HTTPException, *CONNECTION_ERRORS)


async def retrying(send: Callable[[], Awaitable[T]], attempts: int = ATTEMPTS) -> T:
    """`await send()`; again after `retry_after` while Discord answers 429 or a 5xx, or after a short
    pause when the connection drops, `attempts` times."""
    for attempt in range(1, attempts + 1):
        try:
            return await send()
        except discord.HTTPException as e:
            wait = retry_after(e)
            if e.status not in RETRY_STATUSES or attempt == attempts or wait > MAX_WAIT_S:
                raise
            log.info("Discord answered %s; again in %.2f s (%d/%d)", e.status, wait, attempt, attempts)
            await asyncio.sleep(wait)
        except CONNECTION_ERRORS as e:
            if attempt == attempts:
                raise
            log.info("no answer from Discord (%r); again in 1 s (%d/%d)", e, attempt, attempts)
            await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


def retry_after(e: discord.HTTPException) -> float:
    """Seconds Discord asked us to wait (429 headers), else a short pause for a server error."""
    headers = getattr(e.response, "headers", None) or {}
    for key in ("X-RateLimit-Reset-After", "Retry-After"):
        value = headers.get(key)
        if value is not None:
            try:
                return max(0.0, float(value))
            except ValueError:
                continue
    return 1.0


def why_not(e: BaseException) -> str:
    """Why a message could not be posted, for the person it was meant for."""
    if isinstance(e, discord.HTTPException):
        if e.code == 50013:
            return "I'm missing a permission there (Send Messages, Attach Files or Embed Links)"
        if e.code == 50001:
            return "I can't see that channel"
        if e.code in TOKEN_GONE:
            return "the command's 15 minutes ran out"
        if e.code in (10003, 10008):
            return "the channel or message is gone"
        if e.code == 50007:
            return "you don't accept direct messages from me"
        if e.status == 429:
            return "Discord kept rate-limiting me"
        return f"Discord refused it (HTTP {e.status}, code {e.code})"
    return "Discord could not be reached"
