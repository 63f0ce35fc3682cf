"""Indexing a server's images for /find: history scans, live updates, downloads, and who may see what.

Scans page a channel's history 100 messages at a time, back to where the last scan stopped (and forward
from the newest message seen), saving their place after every page, so a crash resumes without
duplicates. Images are downloaded with bounded concurrency and a rate limit, checked (size, content type
AND magic bytes, decompression bombs) and embedded once per content hash.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import discord
from asyncio_throttle import Throttler
from PIL import Image

from iris.config import Config
from iris.errors import BadImage
from iris.images import IMAGE_SUFFIXES, ImageLimits, image_sha256, load_image
from iris.index import ImageIndex, ScanState
from models.manager import InferenceManager

log = logging.getLogger(__name__)

PAGE = 100  # messages per history request


@dataclass
class ScanReport:
    messages: int = 0  # messages read from history
    indexed: int = 0  # images added
    bad: int = 0  # images skipped as unreadable
    reembedded: int = 0  # images embedded again for a new model
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ImageRef:
    key: str  # message_id/attachment_id, or message_id/e<n> for embed images
    url: str
    size: int | None
    content_type: str | None


def scope_of(guild_id: int | None, channel_id: int) -> str:
    return f"discord:{guild_id or 0}:{channel_id}"


def image_refs(message: discord.Message) -> list[ImageRef]:
    """The images a message shows: image attachments and image URLs in embeds."""
    refs = []
    for a in message.attachments:
        ctype = (a.content_type or "").split(";")[0].strip()
        if ctype.startswith("image/") or a.filename.lower().endswith(IMAGE_SUFFIXES):
            refs.append(ImageRef(f"{message.id}/{a.id}", a.url, a.size, ctype or None))
    for n, embed in enumerate(message.embeds):
        url = (embed.image and embed.image.url) or (
            embed.type == "image" and embed.thumbnail and embed.thumbnail.url
        )
        if url and str(url).startswith(("http://", "https://")):
            refs.append(ImageRef(f"{message.id}/e{n}", str(url), None, None))
    return refs


def can_read(channel: Any, member: discord.Member) -> bool:
    """View and read history, recomputed now from roles and overwrites (threads: their parent's, and a
    private thread only for members who can manage threads)."""
    perms = channel.permissions_for(member)
    if not (perms.view_channel and perms.read_message_history):
        return False
    if isinstance(channel, discord.Thread) and channel.is_private():
        return bool(perms.manage_threads) or any(m.id == member.id for m in channel.members)
    return True


class DiscordIndex:
    def __init__(self, config: Config, manager: InferenceManager, index: ImageIndex) -> None:
        self.config = config
        self.manager = manager
        self.index = index
        self.limits = ImageLimits(config.images.max_bytes, config.images.max_pixels)
        self._sem = asyncio.Semaphore(config.discord.find_download_concurrency)
        self._throttle = Throttler(rate_limit=max(1, int(config.discord.find_downloads_per_s)), period=1.0)
        self._session: aiohttp.ClientSession | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self.own_user_id: int | None = None  # the bot's own user id, set once logged in

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def excluded(self, guild_id: int | None, channel: Any) -> bool:
        """Excluded by the config or by an admin (/find-exclude); a thread follows its parent."""
        gcfg = self.config.discord.guilds.get(str(guild_id))
        ids = {str(channel.id), str(getattr(channel, "parent_id", None))}
        configured = set(gcfg.find_excluded) if gcfg else set()
        return bool(ids & (configured | self.index.excluded(f"discord:{guild_id or 0}:")))

    def set_excluded(self, guild_id: int, channel_id: int, excluded: bool) -> None:
        self.index.set_excluded(f"discord:{guild_id}:", str(channel_id), excluded)
        if excluded:  # forget what was indexed there; it is never scanned again
            self.on_channel_delete(guild_id, channel_id)

    # -- downloads -------------------------------------------------------------------------------------
    async def download(self, ref: ImageRef) -> bytes:
        limit = self.limits.max_bytes
        if ref.size is not None and ref.size > limit:
            raise BadImage(f"{ref.key}: too large")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        async with self._sem, self._throttle:
            try:
                async with self._session.get(ref.url) as resp:
                    if resp.status != 200:
                        raise BadImage(f"{ref.key}: download failed (HTTP {resp.status})")
                    ctype = resp.headers.get("Content-Type", "").split(";")[0].strip()
                    if ctype and not ctype.startswith("image/") and ctype != "application/octet-stream":
                        raise BadImage(f"{ref.key}: served as {ctype}, not an image")
                    data = await resp.content.read(limit + 1)
            except (aiohttp.ClientError, TimeoutError) as e:
                raise BadImage(f"{ref.key}: download failed ({type(e).__name__})") from e
        if len(data) > limit:
            raise BadImage(f"{ref.key}: too large")
        return data

    # -- indexing --------------------------------------------------------------------------------------
    async def index_messages(
        self,
        scope: str,
        messages: Iterable[discord.Message],
        report: ScanReport,
        model_id: str,
        reindex: bool = False,
    ) -> None:
        known = set(self.index.items(scope)) if not reindex else set()
        me = self.own_user_id
        # Iris's own messages (result grids, previews) are not the server's pictures: never indexed.
        todo = [(m, r) for m in messages if m.author.id != me for r in image_refs(m) if r.key not in known]
        if not todo:
            return
        results = await asyncio.gather(*(self._prepare(r) for _, r in todo), return_exceptions=True)
        fresh: dict[str, Image.Image] = {}
        rows = []
        for (message, ref), res in zip(todo, results, strict=True):
            meta = {
                "guild": str(message.guild.id if message.guild else 0),
                "channel": str(message.channel.id),
                "message": str(message.id),
                "author": str(message.author.id),
                "author_name": message.author.name,
                "ts": message.created_at.isoformat(),
                "url": ref.url,
                "jump": message.jump_url,
            }
            if isinstance(res, BadImage):
                report.bad += 1
                report.problems.append(res.message)
                self.index.upsert(scope, ref.key, None, meta, status="bad")
                continue
            if isinstance(res, BaseException):
                raise res
            content_hash, image = res
            meta["hash"] = content_hash
            if image is not None and content_hash in self.index.missing_vectors([content_hash], model_id):
                fresh[content_hash] = image
            rows.append((ref.key, content_hash, meta))
        hashes = list(fresh)
        for i in range(0, len(hashes), 32):
            batch = hashes[i : i + 32]
            vecs = await self.manager.embed_images([fresh[h] for h in batch])
            self.index.put_vectors(model_id, dict(zip(batch, vecs, strict=True)))
        for key, content_hash, meta in rows:
            self.index.upsert(scope, key, content_hash, meta)
        report.indexed += len(rows)

    async def _prepare(self, ref: ImageRef) -> tuple[str, Image.Image]:
        data = await self.download(ref)
        image = await asyncio.to_thread(
            load_image, data, self.limits, ref.key
        )  # sniff, bomb guard, 1st frame
        return image_sha256(data), image

    async def scan(
        self, channel: Any, progress: Callable[[ScanReport], Awaitable[None]] | None = None
    ) -> ScanReport:
        """Bring one channel's index up to date (new messages first, then older history)."""
        scope = scope_of(getattr(channel.guild, "id", None), channel.id)
        report = ScanReport()
        model_id = await self.manager.model_id()
        async with self._locks.setdefault(scope, asyncio.Lock()):
            state = self.index.scan_state(scope)

            async def flush(page: list[discord.Message]) -> None:
                nonlocal state
                await self.index_messages(scope, page, report, model_id)
                ids = [m.id for m in page]
                state = ScanState(
                    max([*ids, state.newest or 0]), min([*ids, state.oldest or ids[0]]), state.complete
                )
                self.index.set_scan_state(scope, state)
                report.messages += len(page)
                if progress is not None:
                    await progress(report)

            if state.newest is not None:
                await self._pages(
                    channel.history(limit=None, after=discord.Object(state.newest), oldest_first=True), flush
                )
            if not state.complete:
                before = discord.Object(state.oldest) if state.oldest else None
                await self._pages(channel.history(limit=None, before=before), flush)
                state = ScanState(state.newest, state.oldest, True)
                self.index.set_scan_state(scope, state)
            await self._reembed(scope, model_id, report)
        return report

    async def _reembed(self, scope: str, model_id: str, report: ScanReport) -> None:
        """After a model change, items indexed with the old model get vectors for the new one (lazily,
        on the next scan of their channel), from their saved URLs."""
        missing = self.index.missing_for_model(scope, model_id)
        for i in range(0, len(missing), 32):
            batch = missing[i : i + 32]
            results = await asyncio.gather(
                *(self._prepare(ImageRef(key, meta["url"], None, None)) for key, meta in batch),
                return_exceptions=True,
            )
            fresh = {}
            for (key, meta), res in zip(batch, results, strict=True):
                if isinstance(res, BaseException):
                    self.index.upsert(scope, key, None, meta, status="bad")
                    report.bad += 1
                    continue
                content_hash, image = res
                fresh[content_hash] = image
                self.index.upsert(scope, key, content_hash, {**meta, "hash": content_hash})
            if fresh:
                vecs = await self.manager.embed_images(list(fresh.values()))
                self.index.put_vectors(model_id, dict(zip(fresh, vecs, strict=True)))
                report.reembedded += len(fresh)

    @staticmethod
    async def _pages(history: Any, flush: Callable[[list[discord.Message]], Awaitable[None]]) -> None:
        page: list[discord.Message] = []
        async for message in history:
            page.append(message)
            if len(page) == PAGE:
                await flush(page)
                page = []
        if page:
            await flush(page)

    # -- live updates ----------------------------------------------------------------------------------
    def is_indexed(self, guild_id: int | None, channel_id: int) -> bool:
        return self.index.scan_state(scope_of(guild_id, channel_id)).newest is not None

    async def on_message(self, message: discord.Message) -> None:
        gid = message.guild.id if message.guild else None
        if not image_refs(message) or not self.is_indexed(gid, message.channel.id):
            return
        if self.excluded(gid, message.channel):
            return
        scope = scope_of(gid, message.channel.id)
        await self.index_messages(scope, [message], ScanReport(), await self.manager.model_id())

    async def on_edit(self, guild_id: int | None, channel: Any, message_id: int) -> None:
        scope = scope_of(guild_id, channel.id)
        if not self.is_indexed(guild_id, channel.id):
            return
        self.index.remove_prefix(scope, f"{message_id}/")
        try:
            message = await channel.fetch_message(message_id)
        except discord.HTTPException:
            return
        await self.index_messages(scope, [message], ScanReport(), await self.manager.model_id(), reindex=True)

    def on_delete(self, guild_id: int | None, channel_id: int, message_ids: Iterable[int]) -> None:
        scope = scope_of(guild_id, channel_id)
        for mid in message_ids:
            self.index.remove_prefix(scope, f"{mid}/")

    def on_channel_delete(self, guild_id: int | None, channel_id: int) -> None:
        self.index.remove_scope(scope_of(guild_id, channel_id))
