"""Keeping a server's images indexed for /find: history scans, live updates and background scan tasks.

Scans page a channel's history 100 messages at a time, back to where the last scan stopped (and forward
from the newest message seen), saving their place after every page, so a crash resumes without
duplicates. They run as background tasks, independent of any interaction: a /find waits a little, then
answers from what is indexed so far. Each image is downloaded (see _download), decoded straight to CLIP's
size with a bounded number of decodes in flight, embedded once per content hash, and kept as a small
thumbnail, so answers need no download. Every SQLite, numpy and PIL call runs in a worker thread.

A deleted message never comes back: the index keeps its id (a tombstone), and a scan that was downloading
it when the delete arrived writes nothing for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import discord
from PIL import Image

from bot.find._download import Downloader, ImageRef, image_refs
from bot.find._render import thumbnail
from bot.find._tasks import Tasks
from iris.config import Config
from iris.errors import BadImage
from iris.images import ImageLimits, image_sha256, load_image
from iris.index import Index, ScanState
from iris.service import Manager

log = logging.getLogger(__name__)

PAGE = 100  # messages per history request
EMBED_BATCH = 32  # images per embedding call


@dataclass
class ScanReport:
    messages: int = 0  # messages read from history
    indexed: int = 0  # images added
    bad: int = 0  # images skipped as unreadable
    reembedded: int = 0  # images embedded again for a new model
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Prepared:
    content_hash: str
    image: Image.Image  # reduced to CLIP's size (shorter side `find_image_side`)
    thumb: bytes  # WebP, ≤ 256 px


def in_flight_bound(downloads: int, decodes: int) -> int:
    """Images at most between the start of their download and the end of their decode: twice the
    workers, so downloads run a little ahead of the decoders."""
    return 2 * (downloads + decodes)


def scope_of(guild_id: int | None, channel_id: int) -> str:
    return f"discord:{guild_id or 0}:{channel_id}"


def can_read(channel: Any, member: discord.Member) -> bool:
    """View and read history, recomputed now from roles and overwrites (threads: their parent's, and a
    private thread only for members who can manage threads)."""
    perms = channel.permissions_for(member)
    if not (perms.view_channel and perms.read_message_history):
        return False
    if isinstance(channel, discord.Thread) and channel.is_private():
        return bool(perms.manage_threads) or any(m.id == member.id for m in channel.members)
    return True


def is_excluded(channel: Any, exclusions: set[str]) -> bool:
    """A thread follows its parent."""
    return bool({str(channel.id), str(getattr(channel, "parent_id", None))} & exclusions)


class DiscordIndex:
    def __init__(
        self,
        config: Config,
        manager: Manager,
        index: Index,
        guild_excluded: Callable[[int | None], Iterable[str]] | None = None,
    ) -> None:
        self.config = config
        # A server's excluded channels by config and /settings (the bot's guild_config); default: config.
        self._guild_excluded = guild_excluded or self._configured_exclusions
        self.manager = manager
        self.index = index
        dc = config.discord
        self.limits = ImageLimits(config.images.max_bytes, config.images.max_pixels)
        self.downloader = Downloader(
            dc.find_allowed_hosts,
            self.limits,
            dc.find_download_concurrency,
            dc.find_downloads_per_s,
            dc.find_download_timeout_s,
        )
        self._decodes = asyncio.Semaphore(dc.find_decode_concurrency)
        # Images between the start of their download and the end of their decode: encoded files waiting
        # for a decoder never pile up (a page of 100 photos is not 100 files of 8 MB in memory).
        bound = in_flight_bound(dc.find_download_concurrency, dc.find_decode_concurrency)
        self._in_flight = asyncio.Semaphore(bound)
        self._locks: dict[str, asyncio.Lock] = {}
        self.tasks = Tasks()
        self.scans: dict[str, tuple[asyncio.Task[Any], ScanReport]] = {}  # running scans, by scope
        self.own_user_id: int | None = None  # the bot's own user id, set once logged in

    async def close(self) -> None:
        await self.tasks.close()
        await self.downloader.close()

    async def exclusions(self, guild_id: int | None) -> set[str]:
        """Channel ids kept out of /find in a server: by the config or by an admin (/find-exclude)."""
        configured = set(self._guild_excluded(guild_id))
        return configured | await asyncio.to_thread(self.index.excluded, f"discord:{guild_id or 0}:")

    def _configured_exclusions(self, guild_id: int | None) -> list[str]:
        gcfg = self.config.discord.guilds.get(str(guild_id))
        return list(gcfg.find_excluded) if gcfg else []

    async def excluded(self, guild_id: int | None, channel: Any) -> bool:
        return is_excluded(channel, await self.exclusions(guild_id))

    async def set_excluded(self, guild_id: int, channel_id: int, excluded: bool) -> None:
        await asyncio.to_thread(self.index.set_excluded, f"discord:{guild_id}:", str(channel_id), excluded)
        if excluded:  # forget what was indexed there; it is never scanned again
            running = self.scans.get(scope_of(guild_id, channel_id))
            if running is not None:
                running[0].cancel()
            await self.on_channel_delete(guild_id, channel_id)

    # -- background scans --------------------------------------------------------------------------
    def start_scans(self, channels: Iterable[Any]) -> list[asyncio.Task[Any]]:
        """A background scan of each channel (joining one already running); returns their tasks."""
        out = []
        for channel in channels:
            scope = scope_of(getattr(channel.guild, "id", None), channel.id)
            running = self.scans.get(scope)
            if running is None:
                report = ScanReport()
                task = self.tasks.spawn(self._background(channel, scope, report), f"scan of {scope}")
                running = self.scans[scope] = (task, report)
            out.append(running[0])
        return out

    async def _background(self, channel: Any, scope: str, report: ScanReport) -> None:
        try:
            await self.scan(channel, report=report)
        except discord.Forbidden:  # Iris lost access meanwhile: nothing to fix, the next /find skips it
            log.info("scan of %s stopped: no access", scope)
        finally:
            self.scans.pop(scope, None)

    def running(self, scopes: Iterable[str]) -> list[ScanReport]:
        """The reports of the scans still running among `scopes`."""
        return [self.scans[s][1] for s in scopes if s in self.scans]

    # -- indexing ----------------------------------------------------------------------------------
    async def scan(
        self,
        channel: Any,
        progress: Callable[[ScanReport], Awaitable[None]] | None = None,
        report: ScanReport | None = None,
    ) -> ScanReport:
        """Bring one channel's index up to date (new messages first, then older history)."""
        scope = scope_of(getattr(channel.guild, "id", None), channel.id)
        report = report if report is not None else ScanReport()
        model_id = await self.manager.model_id()
        async with self._locks.setdefault(scope, asyncio.Lock()):
            state = await asyncio.to_thread(self.index.scan_state, scope)

            async def flush(page: list[discord.Message]) -> None:
                nonlocal state
                await self.index_messages(scope, page, report, model_id)
                ids = [m.id for m in page]
                state = ScanState(
                    max([*ids, state.newest or 0]), min([*ids, state.oldest or ids[0]]), state.complete
                )
                await asyncio.to_thread(self.index.set_scan_state, scope, state)
                report.messages += len(page)
                if progress is not None:
                    await progress(report)

            if state.newest is not None:
                await _pages(
                    channel.history(limit=None, after=discord.Object(state.newest), oldest_first=True), flush
                )
            if not state.complete:
                before = discord.Object(state.oldest) if state.oldest else None
                await _pages(channel.history(limit=None, before=before), flush)
                state = ScanState(state.newest, state.oldest, True)
                await asyncio.to_thread(self.index.set_scan_state, scope, state)
            await self._reembed(channel, scope, model_id, report)
        return report

    async def index_messages(
        self,
        scope: str,
        messages: Iterable[discord.Message],
        report: ScanReport,
        model_id: str,
        reindex: bool = False,
    ) -> None:
        me = self.own_user_id
        # Iris's own messages (result grids, previews) are not the server's pictures: never indexed.
        todo = [(m, r) for m in messages if m.author.id != me for r in image_refs(m)]
        if not reindex and todo:
            known = await asyncio.to_thread(self.index.known, scope, [r.key for _, r in todo])
            todo = [(m, r) for m, r in todo if r.key not in known]
        if not todo:
            return
        results = await asyncio.gather(*(self.prepare(r) for _, r in todo), return_exceptions=True)
        rows: list[tuple[str, str | None, dict[str, Any], str, bytes | None]] = []
        fresh: dict[str, Image.Image] = {}
        for (message, ref), res in zip(todo, results, strict=True):
            meta = {
                "guild": str(message.guild.id if message.guild else 0),
                "channel": str(message.channel.id),
                "message": str(message.id),
                "author": str(message.author.id),
                "author_name": message.author.name,
                "ts": message.created_at.isoformat(),
                "jump": message.jump_url,
            }
            if isinstance(res, BadImage):
                report.bad += 1
                report.problems.append(res.message)
                rows.append((ref.key, None, meta, "bad", None))
                continue
            if isinstance(res, BaseException):
                raise res
            meta["hash"] = res.content_hash
            fresh[res.content_hash] = res.image
            rows.append((ref.key, res.content_hash, meta, "ok", res.thumb))
        await self._embed(fresh, model_id)
        report.indexed += await asyncio.to_thread(self._write, scope, rows)

    def _write(
        self, scope: str, rows: list[tuple[str, str | None, dict[str, Any], str, bytes | None]]
    ) -> int:
        """In a worker thread: the rows in one transaction; how many readable images were written. A
        message deleted meanwhile has a tombstone, and the index refuses its rows (a delete always wins)."""
        refused = self.index.upsert_many(scope, rows)
        return sum(1 for key, _, _, status, _ in rows if status == "ok" and key not in refused)

    async def _embed(self, images: dict[str, Image.Image], model_id: str) -> None:
        """Vectors for the images whose content this model has not embedded yet."""
        if not images:
            return
        missing = await asyncio.to_thread(self.index.missing_vectors, list(images), model_id)
        hashes = [h for h in images if h in missing]
        for i in range(0, len(hashes), EMBED_BATCH):
            batch = hashes[i : i + EMBED_BATCH]
            vecs = await self.manager.embed_images([images[h] for h in batch])
            await asyncio.to_thread(self.index.put_vectors, model_id, dict(zip(batch, vecs, strict=True)))

    async def prepare(self, ref: ImageRef) -> Prepared:
        """Download, check and decode one image, reduced to CLIP's size at once, with its thumbnail."""
        async with self._in_flight:
            data = await self.downloader.download(ref)
            async with self._decodes:  # decodes at once are bounded too: each may briefly be large
                return await asyncio.to_thread(self._decode, data, ref.key)

    def _decode(self, data: bytes, key: str) -> Prepared:
        side = self.config.discord.find_image_side
        image = load_image(data, self.limits, key, fit=side)  # sniff, bomb guard, 1st frame, reduced
        return Prepared(image_sha256(data), image, thumbnail(image))

    # -- fresh downloads (CDN links expire: never trust a stored URL) -------------------------------
    async def _reembed(self, channel: Any, scope: str, model_id: str, report: ScanReport) -> None:
        """After a model change, items indexed with the old model get vectors for the new one (lazily, on
        the next scan of their channel), from fresh URLs: each message is fetched again."""
        missing = await asyncio.to_thread(self.index.missing_for_model, scope, model_id)
        by_message: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for key, meta in missing:
            by_message.setdefault(key.split("/", 1)[0], []).append((key, meta))
        for message_id, items in by_message.items():
            refs = await self.fresh_refs(channel, int(message_id))
            if refs is None:  # the message is gone
                await asyncio.to_thread(self.index.delete_messages, scope, [message_id])
                continue
            rows: list[tuple[str, str | None, dict[str, Any], str, bytes | None]] = []
            fresh: dict[str, Image.Image] = {}
            for key, meta in items:
                ref = refs.get(key)
                try:
                    if ref is None:
                        raise BadImage(f"'{key}': no longer in its message")
                    prepared = await self.prepare(ref)
                except BadImage as e:
                    report.bad += 1
                    report.problems.append(e.message)
                    rows.append((key, None, meta, "bad", None))
                    continue
                fresh[prepared.content_hash] = prepared.image
                rows.append(
                    (
                        key,
                        prepared.content_hash,
                        {**meta, "hash": prepared.content_hash},
                        "ok",
                        prepared.thumb,
                    )
                )
            await self._embed(fresh, model_id)
            await asyncio.to_thread(self._write, scope, rows)
            report.reembedded += len(fresh)

    async def fresh_refs(self, channel: Any, message_id: int) -> dict[str, ImageRef] | None:
        """The message's images with URLs signed now, or None when the message is gone."""
        try:
            message = await channel.fetch_message(message_id)
        except discord.NotFound:
            return None
        return {r.key: r for r in image_refs(message)}

    async def thumbnails(
        self, guild: discord.Guild, hits: list[tuple[str, str, dict[str, Any]]]
    ) -> list[bytes | None]:
        """The stored thumbnails of (scope, key, meta) hits. Items indexed before thumbnails were kept have
        none: those few are made now from fresh links (the message fetched again) and stored."""
        thumbs = await asyncio.to_thread(lambda: [self.index.thumbnail(s, k) for s, k, _ in hits])

        async def make(scope: str, key: str, meta: dict[str, Any]) -> bytes | None:
            channel = guild.get_channel_or_thread(int(scope.rsplit(":", 1)[1]))
            refs = await self.fresh_refs(channel, int(key.split("/", 1)[0])) if channel else None
            ref = refs.get(key) if refs else None
            if ref is None:
                return None
            prepared = await self.prepare(ref)
            row = (key, prepared.content_hash, {**meta, "hash": prepared.content_hash}, "ok", prepared.thumb)
            await asyncio.to_thread(self.index.upsert_many, scope, [row])
            return prepared.thumb

        missing = [i for i, t in enumerate(thumbs) if t is None]
        made = await asyncio.gather(*(make(*hits[i]) for i in missing), return_exceptions=True)
        for i, result in zip(missing, made, strict=True):
            if isinstance(result, bytes):
                thumbs[i] = result
            elif isinstance(result, BaseException) and not isinstance(
                result, (BadImage, discord.HTTPException)
            ):
                log.warning("no thumbnail for %s", hits[i][1], exc_info=result)
        return thumbs

    # -- live updates ------------------------------------------------------------------------------
    async def is_indexed(self, guild_id: int | None, channel_id: int) -> bool:
        state = await asyncio.to_thread(self.index.scan_state, scope_of(guild_id, channel_id))
        return state.newest is not None

    async def on_message(self, message: discord.Message) -> None:
        gid = message.guild.id if message.guild else None
        if not image_refs(message) or not await self.is_indexed(gid, message.channel.id):
            return
        if await self.excluded(gid, message.channel):
            return
        scope = scope_of(gid, message.channel.id)
        await self.index_messages(scope, [message], ScanReport(), await self.manager.model_id())

    async def on_edit(self, guild_id: int | None, channel: Any, message_id: int) -> None:
        scope = scope_of(guild_id, channel.id)
        if not await self.is_indexed(guild_id, channel.id):
            return
        try:
            message = await channel.fetch_message(message_id)
        except discord.NotFound:
            return
        except discord.HTTPException:
            return
        await asyncio.to_thread(self.index.remove_prefix, scope, f"{message_id}/")
        await self.index_messages(scope, [message], ScanReport(), await self.manager.model_id(), reindex=True)

    async def on_delete(self, guild_id: int | None, channel_id: int, message_ids: Iterable[int]) -> None:
        ids = [str(mid) for mid in message_ids]
        await asyncio.to_thread(self.index.delete_messages, scope_of(guild_id, channel_id), ids)

    async def on_channel_delete(self, guild_id: int | None, channel_id: int) -> None:
        await asyncio.to_thread(self.index.remove_scope, scope_of(guild_id, channel_id))


async def _pages(history: Any, flush: Callable[[list[discord.Message]], Awaitable[None]]) -> None:
    page: list[discord.Message] = []
    async for message in history:
        page.append(message)
        if len(page) == PAGE:
            await flush(page)
            page = []
    if page:
        await flush(page)
