"""Image downloads for /find: which images a message shows, fetched only from Discord's own media hosts,
complete, and never past the size cap.

A message's images are Discord attachments or embed images. An embed's original URL points anywhere (a
link preview of 169.254.169.254, a LAN camera): only its `proxy_url`, on Discord's media proxy, is used.
Every URL, and every redirect, must be on the allow-list (`discord.find_allowed_hosts`): a bare host means
https on port 443; an entry with a scheme (`http://127.0.0.1:8080`) allows exactly that origin.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp
import discord
import yarl
from asyncio_throttle import Throttler

from iris.errors import BadImage
from iris.images import ImageLimits, check_size, human_bytes, looks_like_image

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3  # same-origin redirects followed at most
CHUNK = 64 * 2**10  # bytes read at a time


@dataclass(frozen=True)
class ImageRef:
    key: str  # message_id/attachment_id, or message_id/e<n> for embed images
    url: str  # an attachment's URL, or an embed image's proxy_url
    size: int | None  # bytes, when Discord says
    content_type: str | None


Origin = tuple[str, str, int]  # scheme, host, port


def _origin(url: yarl.URL) -> Origin | None:
    if not url.is_absolute() or url.host is None or url.scheme not in ("http", "https"):
        return None
    return url.scheme, url.host.lower().rstrip("."), url.port or (443 if url.scheme == "https" else 80)


def parse_allowed(entries: list[str]) -> frozenset[Origin]:
    """Config entries → origins. "cdn.discordapp.com" → https only; "http://127.0.0.1:8080" as written."""
    out = set()
    for entry in entries:
        origin = _origin(yarl.URL(entry if "://" in entry else f"https://{entry}"))
        if origin is not None:
            out.add(origin)
    return frozenset(out)


def image_refs(message: discord.Message) -> list[ImageRef]:
    """The images a message shows: image attachments, and embed images through Discord's media proxy.

    An embed's own URL points anywhere on the internet; only its proxy_url (Discord's copy) is used.
    """
    refs = []
    for a in message.attachments:
        if looks_like_image(a.filename, a.content_type):
            ctype = (a.content_type or "").split(";")[0].strip()
            refs.append(ImageRef(f"{message.id}/{a.id}", a.url, a.size, ctype or None))
    for n, embed in enumerate(message.embeds):
        shown = embed.image if embed.image else (embed.thumbnail if embed.type == "image" else None)
        proxy = getattr(shown, "proxy_url", None) if shown else None
        if proxy:
            refs.append(ImageRef(f"{message.id}/e{n}", str(proxy), None, None))
    return refs


class Downloader:
    """One HTTP session, bounded concurrency, a rate limit, the allow-list and the size cap."""

    def __init__(
        self, allowed: list[str], limits: ImageLimits, concurrency: int, per_s: float, timeout_s: float
    ) -> None:
        self.allowed = parse_allowed(allowed)
        self.limits = limits
        self._sem = asyncio.Semaphore(concurrency)
        self._throttle = Throttler(rate_limit=max(1, int(per_s)), period=1.0)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def allows(self, url: str) -> bool:
        origin = _origin(yarl.URL(url))
        return origin is not None and origin in self.allowed

    async def download(self, ref: ImageRef) -> bytes:
        """The image's bytes, or BadImage: off the allow-list, HTTP error, not an image, or over the cap."""
        who = f"'{ref.key}'"
        if ref.size is not None:
            check_size(ref.size, self.limits, who)
        if not self.allows(ref.url):
            raise BadImage(f"{who}: not on Discord's media hosts, not downloaded")
        if self._session is None:
            # No proxies from the environment, no cookies: a plain client of the allow-listed hosts.
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
            )
        async with self._sem, self._throttle:
            try:
                return await self._fetch(self._session, yarl.URL(ref.url, encoded=True), who)
            except (aiohttp.ClientError, TimeoutError) as e:
                raise BadImage(f"{who}: download failed ({type(e).__name__})") from e

    async def _fetch(self, session: aiohttp.ClientSession, url: yarl.URL, who: str) -> bytes:
        start = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            async with session.get(url, allow_redirects=False) as resp:
                if resp.status in (301, 302, 303, 307, 308):
                    target = url.join(yarl.URL(resp.headers.get("Location", ""), encoded=True))
                    # Only within the same origin: a redirect elsewhere is never contacted.
                    if _origin(target) != start:
                        raise BadImage(f"{who}: redirected off Discord's media hosts, not downloaded")
                    url = target
                    continue
                if resp.status != 200:
                    raise BadImage(f"{who}: download failed (HTTP {resp.status})")
                ctype = resp.headers.get("Content-Type", "").split(";")[0].strip()
                if ctype and not ctype.startswith("image/") and ctype != "application/octet-stream":
                    raise BadImage(f"{who}: served as {ctype}, not an image")
                return await self._read_capped(resp, who)
        raise BadImage(f"{who}: too many redirects")

    async def _read_capped(self, resp: aiohttp.ClientResponse, who: str) -> bytes:
        """The whole body (chunked or not), refusing as soon as it passes the cap."""
        limit = self.limits.max_bytes
        if resp.content_length is not None:
            check_size(resp.content_length, self.limits, who)  # refused before reading a byte
        data = bytearray()
        async for chunk in resp.content.iter_chunked(CHUNK):
            data += chunk
            if len(data) > limit:
                raise BadImage(f"{who} is too large: over {human_bytes(limit)}")
        check_size(len(data), self.limits, who)
        return bytes(data)
