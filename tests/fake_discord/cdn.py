"""Discord's CDN as the fake serves it: signed links that expire, and files that arrive in pieces.

Attachment links look like Discord's since 2024:
``/attachments/{channel}/{attachment}/{filename}?ex=<hex expiry>&is=<hex issue time>&hm=<hex hmac>&``,
on the CDN (``cdn.discordapp.com``: ``{base}/cdn/...``) and the media proxy (``media.discordapp.net``:
``{base}/media/...``) alike. Every message the fake hands out (gateway event, history page, message
fetch) carries freshly signed links, so re-fetching a message is how a client gets working links for an
old one. A link is refused like Discord refuses it (404, "This content is no longer available.") once
its expiry has passed on the fake clock, or when its signature does not match.

Images from embeds are served by the media proxy too (``images-ext-*.discordapp.net/external/...`` on
Discord: ``{base}/external/{digest}/{scheme}/{host}/{path}`` here), from bytes the test hands over: the
fake never contacts the original host, so a test can count that host's hits to prove the bot did not.

Files go out with chunked transfer encoding (no Content-Length), or with a correct Content-Length when
the attachment asks for it, `chunk_bytes` at a time with `delay_s` between pieces, like a real CDN over a
real network: a client that reads "whatever has arrived" gets a fraction of a large file.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from aiohttp import web

from .clock import FakeClock

if TYPE_CHECKING:
    from .models import Attachment

LINK_LIFETIME_S = 24 * 3600  # Discord's signed links last about a day
GONE = "This content is no longer available."  # Discord's whole answer to an expired or forged link


@dataclass
class External:
    """An image on another host that an embed shows, as Discord's media proxy holds it."""

    url: str  # where the image really is (never fetched by the fake)
    data: bytes
    content_type: str
    redirect_to: str | None = None  # the proxy answers 302 to this URL instead of serving `data`


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as Discord reports it for an image (from the header only), or None."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # not an image: Discord then sends no width/height either
        return None


class Cdn:
    """Signs links and serves attachments and proxied embed images for one fake Discord."""

    def __init__(self, clock: FakeClock, attachments: Mapping[int, Attachment]) -> None:
        self.clock = clock
        self.attachments = attachments  # the state's, by id
        self.base = ""  # http://127.0.0.1:PORT, set once the server knows its port
        self.lifetime_s: float = LINK_LIFETIME_S  # how long a signed link works after it is issued
        self.chunk_bytes = 32 * 1024  # size of each piece written to the socket
        self.delay_s = 0.001  # pause between pieces
        self.content_length = False  # send a Content-Length header (else chunked), unless a file says
        self.external: dict[str, External] = {}  # by the digest in the proxy path
        self.cut_short = 0  # downloads the client abandoned before the end (a refused or capped read)
        self._key = secrets.token_bytes(32)

    # -- links -------------------------------------------------------------------------------------

    def _mac(self, path: str, expires: int, issued: int) -> str:
        return hmac.new(self._key, f"{path}|{expires:x}|{issued:x}".encode(), hashlib.sha256).hexdigest()

    def signature(self, path: str) -> str:
        """The query string Discord appends to a link for `path`, issued now."""
        issued = int(self.clock.now())
        expires = int(issued + self.lifetime_s)
        return f"ex={expires:x}&is={issued:x}&hm={self._mac(path, expires, issued)}&"

    def valid(self, path: str, query: Mapping[str, str]) -> bool:
        try:
            expires, issued = int(query["ex"], 16), int(query["is"], 16)
        except (KeyError, ValueError):
            return False
        good = hmac.compare_digest(self._mac(path, expires, issued), query.get("hm", ""))
        return good and self.clock.now() < expires

    def url(self, attachment: Attachment) -> str:
        """A freshly signed CDN link (cdn.discordapp.com)."""
        return f"{self.base}/cdn{quote(attachment.path)}?{self.signature(attachment.path)}"

    def proxy_url(self, attachment: Attachment) -> str:
        """A freshly signed media proxy link (media.discordapp.net)."""
        return f"{self.base}/media{quote(attachment.path)}?{self.signature(attachment.path)}"

    def refresh(self, url: str) -> str:
        """A freshly signed link to what `url` points at (same host); other URLs come back as they are."""
        parts = urlsplit(url)
        prefix, _, rest = parts.path.partition("/attachments/")
        try:
            attachment = self.attachments.get(int(rest.split("/")[1]))
        except (IndexError, ValueError):
            return url
        if attachment is None or prefix not in ("/cdn", "/media"):
            return url
        return self.url(attachment) if prefix == "/cdn" else self.proxy_url(attachment)

    def add_external(
        self, url: str, data: bytes, content_type: str = "image/jpeg", *, redirect_to: str | None = None
    ) -> str:
        """Put an outside image in the media proxy; returns its `proxy_url`."""
        digest = secrets.token_urlsafe(24)  # one per embed, so two embeds of one URL can differ
        parts = urlsplit(url)
        self.external[digest] = External(url, data, content_type, redirect_to)
        tail = quote(f"{parts.scheme}/{parts.netloc}{parts.path}")
        return f"{self.base}/external/{digest}/{tail}" + (f"?{parts.query}" if parts.query else "")

    # -- serving -----------------------------------------------------------------------------------

    def register(self, app: web.Application) -> None:
        for prefix in ("/cdn", "/media"):
            app.router.add_route(
                "GET", prefix + "/attachments/{channel_id}/{attachment_id}/{filename}", self.attachment
            )
        app.router.add_route("GET", "/external/{digest}/{tail:.*}", self.proxied)

    async def attachment(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        try:
            attachment = self.attachments.get(int(info["attachment_id"]))
        except ValueError:
            attachment = None
        served = "/" + request.path.split("/", 2)[2]  # below /cdn or /media
        if attachment is None or served != attachment.path or not self.valid(attachment.path, request.query):
            return gone()
        content_type = attachment.content_type or "application/octet-stream"
        with_length = self.content_length if attachment.content_length is None else attachment.content_length
        return await self.send(request, attachment.data, content_type, with_length=with_length)

    async def proxied(self, request: web.Request) -> web.StreamResponse:
        image = self.external.get(request.match_info["digest"])
        if image is None:
            return gone()
        if image.redirect_to is not None:
            return web.Response(status=302, headers={"Location": image.redirect_to})
        return await self.send(request, image.data, image.content_type, with_length=self.content_length)

    async def send(
        self, request: web.Request, data: bytes, content_type: str, *, with_length: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        if with_length:
            response.content_length = len(data)
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for start in range(0, len(data), self.chunk_bytes):
                if start:
                    await asyncio.sleep(self.delay_s)
                await response.write(data[start : start + self.chunk_bytes])
            await response.write_eof()
        except ConnectionError:  # the client stopped reading (a size cap, a cancelled task): allowed
            self.cut_short += 1
        return response


def gone() -> web.Response:
    return web.Response(status=404, text=GONE, content_type="text/plain")
