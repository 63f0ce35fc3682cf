"""/find: search the server's images by text (and/or an image), privately filtered, from a local index."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
import uuid
from datetime import datetime
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands
from PIL import Image, ImageDraw

from bot.app import IrisBot
from bot.errors import Refused, reply_error
from bot.find_index import DiscordIndex, ImageRef, ScanReport, can_read, scope_of
from iris.errors import BadImage, BadRequest, IrisError
from iris.images import image_sha256, load_image
from iris.index import Hit, ImageIndex
from iris.query import combine, parse_query

log = logging.getLogger(__name__)

THUMB = 128  # px, side of one grid cell


def _date(text: str | None, name: str) -> str | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.strip()).date().isoformat()
    except ValueError:
        raise BadRequest(f"{name} takes a date like 2026-11-23, got {text!r}") from None


def grid(images: list[Image.Image | None]) -> bytes:
    """Numbered thumbnails, 3 per row, as one PNG (a missing image is a grey cell)."""
    cols = min(3, max(1, len(images)))
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * THUMB, rows * THUMB), (32, 34, 37))
    draw = ImageDraw.Draw(sheet)
    for i, im in enumerate(images):
        x, y = (i % cols) * THUMB, (i // cols) * THUMB
        if im is not None:
            im = im.copy()
            im.thumbnail((THUMB, THUMB))
            sheet.paste(im, (x + (THUMB - im.width) // 2, y + (THUMB - im.height) // 2))
        draw.rectangle((x, y, x + 22, y + 16), fill=(0, 0, 0))
        draw.text((x + 4, y + 2), str(i + 1), fill=(255, 255, 255))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


class FindButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"iris:find:(?P<fid>[0-9a-f]+):(?P<page>\d+)(?::(?P<n>\d+))?",
):
    """ "Next page" (no n) or "More like #n"; the query lives in the index, so it survives restarts."""

    def __init__(self, fid: str, page: int, n: int | None = None) -> None:
        label = "Next page" if n is None else f"More like #{n}"
        custom = f"iris:find:{fid}:{page}" + ("" if n is None else f":{n}")
        style = discord.ButtonStyle.primary if n is None else discord.ButtonStyle.secondary
        super().__init__(discord.ui.Button(label=label, style=style, custom_id=custom))
        self.fid, self.page, self.n = fid, page, n

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> FindButton:
        return cls(match["fid"], int(match["page"]), int(match["n"]) if match["n"] else None)

    async def callback(self, interaction: discord.Interaction) -> None:
        client = interaction.client
        cog = client.get_cog("Find") if isinstance(client, IrisBot) else None
        try:
            assert isinstance(cog, Find)
            await cog.on_button(interaction, self.fid, self.page, self.n)
        except Exception as e:
            await reply_error(interaction, e)


class Find(commands.Cog):
    def __init__(self, bot: IrisBot) -> None:
        self.bot = bot
        self.index = ImageIndex(bot.config.index.path)
        self.discord_index = DiscordIndex(bot.config, bot.manager, self.index)
        self.tasks: set[asyncio.Task[None]] = set()

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        self.discord_index.own_user_id = self.bot.user.id if self.bot.user else None

    async def cog_unload(self) -> None:
        await self.discord_index.close()
        self.index.close()

    # -- the command -----------------------------------------------------------------------------------
    @app_commands.command(name="find", description="Find images posted here by describing them")
    @app_commands.describe(
        query='what to look for; "+word" adds, "-word" avoids, ":weight" tunes: "a cat +sunset -text"',
        image="find images like this one (alone or with a text query)",
        scope="this channel (default) or every channel you can read",
        author="only images posted by this member",
        after="only images posted after this date (YYYY-MM-DD)",
        before="only images posted before this date (YYYY-MM-DD)",
        k="how many images to show (1-9)",
    )
    @app_commands.choices(scope=[app_commands.Choice(name=n, value=n) for n in ("channel", "server")])
    async def find(
        self,
        interaction: discord.Interaction,
        query: str | None = None,
        image: discord.Attachment | None = None,
        scope: str = "channel",
        author: discord.Member | None = None,
        after: str | None = None,
        before: str | None = None,
        k: app_commands.Range[int, 1, 9] | None = None,
    ) -> None:
        if interaction.guild is None or not isinstance(interaction.user, discord.Member):
            raise Refused("/find works in servers.")
        terms = parse_query(query or "")
        if not terms and image is None:
            raise BadRequest("describe what to find, or attach an image to search with")
        data: dict[str, Any] = {
            "terms": [[t.text, t.weight] for t in terms],
            "image_hash": None,
            "scope": scope,
            "guild": str(interaction.guild.id),
            "channel": str(interaction.channel_id),
            "author": str(author.id) if author else None,
            "after": _date(after, "after"),
            "before": _date(before, "before"),
            "k": k or self.bot.config.discord.find_k,
        }
        await interaction.response.defer(thinking=True)
        if image is not None:
            data["image_hash"] = await self._embed_query_image(image)
        await self._scan_for(interaction, scope)
        fid = uuid.uuid4().hex[:12]
        self.index.save_find(fid, data)
        await self._answer(interaction, fid, data, page=0)

    @app_commands.command(name="find-exclude", description="Keep a channel out of /find (or let it back in)")
    @app_commands.describe(target="the channel", exclude="true: never scan or show it; false: allow it again")
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.checks.has_permissions(manage_guild=True)
    async def find_exclude(
        self, interaction: discord.Interaction, target: discord.abc.GuildChannel, exclude: bool = True
    ) -> None:
        if interaction.guild is None:
            raise Refused("This works in servers.")
        await interaction.response.defer(ephemeral=True, thinking=True)
        self.discord_index.set_excluded(interaction.guild.id, target.id, exclude)
        state = "is now kept out of" if exclude else "is back in"
        await interaction.followup.send(f"{target.mention} {state} /find.", ephemeral=True)

    async def _embed_query_image(self, attachment: discord.Attachment) -> str:
        ref = ImageRef(f"query/{attachment.id}", attachment.url, attachment.size, attachment.content_type)
        data = await self.discord_index.download(ref)
        vec = await self.bot.manager.embed_images([data])
        content_hash = image_sha256(data)
        self.index.put_vectors(await self.bot.manager.model_id(), {content_hash: vec[0]})
        return content_hash

    def _channels(self, interaction: discord.Interaction, scope: str) -> list[Any]:
        guild, member = interaction.guild, interaction.user
        assert guild is not None and isinstance(member, discord.Member)
        candidates = [interaction.channel] if scope == "channel" else [*guild.text_channels, *guild.threads]
        return [
            c
            for c in candidates
            if c is not None
            and hasattr(c, "history")
            and can_read(c, member)
            and can_read(c, guild.me)
            and not self.discord_index.excluded(guild.id, c)
        ]

    async def _scan_for(self, interaction: discord.Interaction, scope: str) -> None:
        last = 0.0
        channels = self._channels(interaction, scope)

        async def progress(report: ScanReport) -> None:
            nonlocal last
            if time.monotonic() - last < 1.0:
                return
            last = time.monotonic()
            await interaction.edit_original_response(
                content=f"Indexing {len(channels)} channel{'s' * (len(channels) != 1)}… "
                f"{report.indexed:,} images from {report.messages:,} messages so far"
            )

        for channel in channels:
            await self.discord_index.scan(channel, progress)

    # -- answering -------------------------------------------------------------------------------------
    def _readable_scopes(
        self, guild: discord.Guild, member: discord.Member, data: dict[str, Any]
    ) -> list[str]:
        """Recomputed on every query from the member's current permissions (roles, overwrites, threads)."""
        if data["scope"] == "channel":
            ids = [int(data["channel"])]
        else:
            ids = [int(s.rsplit(":", 1)[1]) for s in self.index.scopes(f"discord:{guild.id}:")]
        out = []
        for cid in ids:
            channel = guild.get_channel_or_thread(cid)
            if (
                channel is not None
                and can_read(channel, member)
                and not self.discord_index.excluded(guild.id, channel)
            ):
                out.append(scope_of(guild.id, cid))
        return out

    async def _search(self, interaction: discord.Interaction, data: dict[str, Any]) -> list[Hit]:
        guild, member = interaction.guild, interaction.user
        assert guild is not None and isinstance(member, discord.Member)
        model_id = await self.bot.manager.model_id()
        vectors, weights = [], []
        for text, weight in data["terms"]:
            vectors.append(await self.bot.manager.embed_text(text))
            weights.append(weight)
        if data["image_hash"]:
            vec = self.index.vector(data["image_hash"], model_id)
            if vec is None:
                raise IrisError("that image is no longer in the index")
            vectors.append(vec)
            weights.append(1.0)
        query = combine(vectors, weights)
        scopes = self._readable_scopes(guild, member, data)
        hits = self.index.search(query, scopes, model_id, k=5000)

        def keep(h: Hit) -> bool:
            day = h.meta.get("ts", "")[:10]
            return (
                (not data["author"] or h.meta.get("author") == data["author"])
                and (not data["after"] or day > data["after"])
                and (not data["before"] or day < data["before"])
                and h.meta.get("hash") != data["image_hash"]
            )

        return [h for h in hits if keep(h)]

    async def _answer(
        self, interaction: discord.Interaction, fid: str, data: dict[str, Any], page: int
    ) -> None:
        hits = await self._search(interaction, data)
        k = int(data["k"])
        shown = hits[page * k : (page + 1) * k]
        if not shown:
            text = "No images found." if page == 0 else "No more results."
            await interaction.edit_original_response(content=text, embed=None, attachments=[], view=None)
            return
        images = await asyncio.gather(*(self._thumb(h) for h in shown))
        lines = []
        for i, h in enumerate(shown, page * k + 1):
            ts = h.meta.get("ts", "")
            when = f"<t:{int(datetime.fromisoformat(ts).timestamp())}:d>" if ts else ""
            lines.append(
                f"**{i}.** [jump]({h.meta.get('jump', '')}) · <@{h.meta.get('author', '0')}> {when}"
                f" · {h.score:.2f}"
            )
        embed = discord.Embed(title="Found", description="\n".join(lines), colour=0x57F287)
        embed.set_image(url="attachment://found.png")
        view = discord.ui.View(timeout=None)
        for n in range(1, min(len(shown), 4) + 1):
            view.add_item(FindButton(fid, page, page * k + n))
        if len(hits) > (page + 1) * k:
            view.add_item(FindButton(fid, page + 1))
        await interaction.edit_original_response(
            content=None,
            embed=embed,
            attachments=[discord.File(io.BytesIO(grid(images)), "found.png")],
            view=view,
        )

    async def _thumb(self, hit: Hit) -> Image.Image | None:
        try:
            data = await self.discord_index.download(ImageRef(hit.key, hit.meta["url"], None, None))
            return await asyncio.to_thread(load_image, data, self.discord_index.limits)
        except (BadImage, KeyError):
            return None

    async def on_button(self, interaction: discord.Interaction, fid: str, page: int, n: int | None) -> None:
        data = self.index.get_find(fid)
        if data is None:
            raise Refused("I no longer have this search; run /find again.")
        await interaction.response.defer(thinking=True)
        if n is not None:  # "More like #n": that hit's picture becomes the query
            hits = await self._search(interaction, data)
            if n - 1 >= len(hits) or not hits[n - 1].meta.get("hash"):
                raise Refused("That result is gone.")
            data = {**data, "terms": [], "image_hash": hits[n - 1].meta["hash"]}
            fid, page = uuid.uuid4().hex[:12], 0
            self.index.save_find(fid, data)
        await self._answer(interaction, fid, data, page)

    # -- live index --------------------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if isinstance(error, IrisError):  # e.g. shutting down, or a bad image: nothing to fix here
            log.info("live indexing skipped: %s", error)
        elif error is not None:
            log.error("live indexing failed", exc_info=error)

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.guild is not None:
            self._spawn(self.discord_index.on_message(message))

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        channel = self.bot.get_channel(payload.channel_id)
        if channel is not None and hasattr(channel, "fetch_message"):
            self._spawn(self.discord_index.on_edit(payload.guild_id, channel, payload.message_id))

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        self.discord_index.on_delete(payload.guild_id, payload.channel_id, [payload.message_id])

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        self.discord_index.on_delete(payload.guild_id, payload.channel_id, payload.message_ids)

    @commands.Cog.listener()
    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        self.discord_index.on_channel_delete(channel.guild.id, channel.id)

    @commands.Cog.listener()
    async def on_thread_delete(self, thread: discord.Thread) -> None:
        self.discord_index.on_channel_delete(thread.guild.id, thread.id)


async def setup(bot: IrisBot) -> None:
    bot.add_dynamic_items(FindButton)
    await bot.add_cog(Find(bot))
