"""/find and /find-exclude: answers are private to the asker (ephemeral), from what is indexed so far.

Results only come from channels the asker can view and read the history of right now. *Share* posts for
everyone the hits of a page that were posted in the channel it is pressed in (all there can see those).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import uuid
from datetime import datetime
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import IrisBot
from bot.errors import Refused
from bot.find._download import ImageRef
from bot.find._render import grid
from bot.find._scan import DiscordIndex, can_read, is_excluded, scope_of
from bot.find._views import FindButton, RefreshButton, ShareButton
from iris.errors import BadRequest, IrisError
from iris.index import Hit, open_index
from iris.query import combine, parse_query

log = logging.getLogger(__name__)

MORE_LIKE = 4  # "More like #n" buttons under a page
PROGRESS_EVERY_S = 1.0  # seconds between progress edits while waiting for indexing


def _date(text: str | None, name: str) -> str | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.strip()).date().isoformat()
    except ValueError:
        raise BadRequest(f"{name} takes a date like 2026-11-23, got {text!r}") from None


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'s' * (n != 1)}"


class Find(commands.Cog):
    def __init__(self, bot: IrisBot) -> None:
        self.bot = bot
        self.config = bot.config.discord
        self.index = open_index(bot.config.index)
        self.discord_index = DiscordIndex(
            bot.config, bot.manager, self.index, lambda gid: bot.guild_config(gid).find_excluded
        )

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        self.discord_index.own_user_id = self.bot.user.id if self.bot.user else None

    async def cog_unload(self) -> None:
        await self.discord_index.close()  # cancels the background scans first
        self.index.close()

    # -- the commands ------------------------------------------------------------------------------
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
            "user": str(interaction.user.id),  # the only one who may press this answer's buttons
            "terms": [[t.text, t.weight] for t in terms],
            "image_hash": None,
            "scope": scope,
            "guild": str(interaction.guild.id),
            "channel": str(interaction.channel_id),
            "author": str(author.id) if author else None,
            "after": _date(after, "after"),
            "before": _date(before, "before"),
            "k": k or self.config.find_k,
        }
        await interaction.response.defer(ephemeral=True, thinking=True)  # only the asker sees results
        # The server's search structure loads (seconds at a million images) while indexing is awaited.
        here = scope_of(interaction.guild.id, interaction.channel_id or 0)
        warm = asyncio.to_thread(self.index.warm, here, await self.bot.manager.model_id())
        self.discord_index.tasks.spawn(warm, "loading the search structure")
        if image is not None:
            data["image_hash"] = await self._embed_query_image(image)
        channels = await self._channels(interaction.guild, interaction.user, data)
        await self._wait_for_scans(interaction, channels)
        fid = uuid.uuid4().hex[:12]
        await asyncio.to_thread(self.index.save_find, fid, data)
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
        await self.discord_index.set_excluded(interaction.guild.id, target.id, exclude)
        state = "is now kept out of" if exclude else "is back in"
        await interaction.followup.send(f"{target.mention} {state} /find.", ephemeral=True)

    async def _embed_query_image(self, attachment: discord.Attachment) -> str:
        ref = ImageRef(f"query/{attachment.id}", attachment.url, attachment.size, attachment.content_type)
        prepared = await self.discord_index.prepare(ref)
        vec = await self.bot.manager.embed_images([prepared.image])
        model_id = await self.bot.manager.model_id()
        await asyncio.to_thread(self.index.put_vectors, model_id, {prepared.content_hash: vec[0]})
        return prepared.content_hash

    async def _channels(
        self, guild: discord.Guild, member: discord.Member, data: dict[str, Any]
    ) -> list[Any]:
        """The channels a query covers: readable by the member and by Iris, and not excluded."""
        if data["scope"] == "channel":
            candidates = [guild.get_channel_or_thread(int(data["channel"]))]
        else:
            candidates = [*guild.text_channels, *guild.threads]
        exclusions = await self.discord_index.exclusions(guild.id)
        return [
            c
            for c in candidates
            if c is not None
            and hasattr(c, "history")
            and can_read(c, member)
            and can_read(c, guild.me)
            and not is_excluded(c, exclusions)
        ]

    async def _wait_for_scans(self, interaction: discord.Interaction, channels: list[Any]) -> None:
        """Start (or join) background scans of `channels` and wait up to find_answer_after_s for them,
        showing progress; they go on after the answer, whatever becomes of this interaction."""
        pending = set(self.discord_index.start_scans(channels))
        deadline = time.monotonic() + self.config.find_answer_after_s
        scopes = [scope_of(c.guild.id, c.id) for c in channels]
        while pending and (left := deadline - time.monotonic()) > 0:
            _, pending = await asyncio.wait(pending, timeout=min(PROGRESS_EVERY_S, left))
            reports = self.discord_index.running(scopes)
            if pending and reports and time.monotonic() < deadline:  # else the answer comes next
                indexed = sum(r.indexed for r in reports)
                messages = sum(r.messages for r in reports)
                await interaction.edit_original_response(
                    content=f"Indexing {_plural(len(reports), 'channel')}… "
                    f"{indexed:,} images from {messages:,} messages so far"
                )

    # -- searching ---------------------------------------------------------------------------------
    async def _readable_scopes(
        self, guild: discord.Guild, member: discord.Member, data: dict[str, Any]
    ) -> list[str]:
        """Recomputed on every query from the member's current permissions (roles, overwrites, threads)."""
        if data["scope"] == "channel":
            ids = [int(data["channel"])]
        else:
            scopes = await asyncio.to_thread(self.index.scopes, f"discord:{guild.id}:")
            ids = [int(s.rsplit(":", 1)[1]) for s in scopes]
        exclusions = await self.discord_index.exclusions(guild.id)
        out = []
        for cid in ids:
            channel = guild.get_channel_or_thread(cid)
            if channel is not None and can_read(channel, member) and not is_excluded(channel, exclusions):
                out.append(scope_of(guild.id, cid))
        return out

    async def _query_vector(self, data: dict[str, Any]) -> Any:
        model_id = await self.bot.manager.model_id()
        vectors, weights = [], []
        for text, weight in data["terms"]:
            vectors.append(await self.bot.manager.embed_text(text))
            weights.append(weight)
        if data["image_hash"]:
            vec = await asyncio.to_thread(self.index.vector, data["image_hash"], model_id)
            if vec is None:
                raise IrisError("that image is no longer in the index")
            vectors.append(vec)
            weights.append(1.0)
        return combine(vectors, weights)

    async def _search(self, interaction: discord.Interaction, data: dict[str, Any]) -> list[Hit]:
        guild, member = interaction.guild, interaction.user
        assert guild is not None and isinstance(member, discord.Member)
        query = await self._query_vector(data)
        scopes = await self._readable_scopes(guild, member, data)
        model_id = await self.bot.manager.model_id()
        hits = await asyncio.to_thread(self.index.search, query, scopes, model_id, 5000)

        def keep(h: Hit) -> bool:
            day = h.meta.get("ts", "")[:10]
            return (
                (not data["author"] or h.meta.get("author") == data["author"])
                and (not data["after"] or day > data["after"])
                and (not data["before"] or day < data["before"])
                and h.meta.get("hash") != data["image_hash"]
            )

        return [h for h in hits if keep(h)]

    # -- answering ---------------------------------------------------------------------------------
    async def _answer(
        self, interaction: discord.Interaction, fid: str, data: dict[str, Any], page: int
    ) -> None:
        """Edit the interaction's message into this page of results (always private to the asker)."""
        guild, member = interaction.guild, interaction.user
        assert guild is not None and isinstance(member, discord.Member)
        hits = await self._search(interaction, data)
        k = int(data["k"])
        shown = hits[page * k : (page + 1) * k]
        still = await self._still_indexing(guild, member, data)
        view = discord.ui.View(timeout=None)
        if still:
            view.add_item(RefreshButton(fid, page))
        if not shown:
            text = "No images found" + (" yet." if still else ".") if page == 0 else "No more results."
            content = f"{text}\n{still}" if still else text
            await interaction.edit_original_response(
                content=content, embed=None, attachments=[], view=view if still else None
            )
            return
        await asyncio.to_thread(
            self.index.save_find, f"{fid}-{page}", {"shown": [_hit_json(h) for h in shown]}
        )
        for n in range(1, min(len(shown), MORE_LIKE) + 1):
            view.add_item(FindButton(fid, page, page * k + n))
        if len(hits) > (page + 1) * k:
            view.add_item(FindButton(fid, page + 1))
        view.add_item(ShareButton(fid, page))
        embed, file = await self._render(guild, shown, page * k + 1)
        await interaction.edit_original_response(
            content=still or None, embed=embed, attachments=[file], view=view
        )

    async def _render(
        self, guild: discord.Guild, hits: list[Hit], first: int
    ) -> tuple[discord.Embed, discord.File]:
        """The numbered grid from stored thumbnails (no download: CDN links expire) and its captions."""
        thumbs = await self.discord_index.thumbnails(guild, [(h.scope, h.key, h.meta) for h in hits])
        png = await asyncio.to_thread(grid, thumbs)
        lines = []
        for i, h in enumerate(hits, first):
            ts = h.meta.get("ts", "")
            when = f"<t:{int(datetime.fromisoformat(ts).timestamp())}:d>" if ts else ""
            who = f"<@{h.meta.get('author', '0')}>"
            lines.append(f"**{i}.** [jump]({h.meta.get('jump', '')}) · {who} {when} · {h.score:.2f}")
        embed = discord.Embed(title="Found", description="\n".join(lines), colour=0x57F287)
        embed.set_image(url="attachment://found.png")
        return embed, discord.File(io.BytesIO(png), "found.png")

    async def _still_indexing(
        self, guild: discord.Guild, member: discord.Member, data: dict[str, Any]
    ) -> str:
        """'Still indexing: …' while scans of the query's channels run, else ''."""
        channels = await self._channels(guild, member, data)
        scopes = [scope_of(guild.id, c.id) for c in channels]
        left = len(self.discord_index.running(scopes))
        if not left:
            return ""
        readable = await self._readable_scopes(guild, member, data)
        images = await asyncio.to_thread(lambda: sum(self.index.count(s) for s in readable))
        return (
            f"Still indexing: {_plural(left, 'channel')} left, {_plural(images, 'image')} so far. "
            "Press Refresh for newer results."
        )

    # -- buttons -----------------------------------------------------------------------------------
    async def _saved(self, interaction: discord.Interaction, fid: str) -> dict[str, Any]:
        data = await asyncio.to_thread(self.index.get_find, fid)
        if data is None:
            raise Refused("I no longer have this search; run /find again.")
        # Searches saved before answers were private carry no user: results follow the presser's own
        # permissions anyway.
        if data.get("user", str(interaction.user.id)) != str(interaction.user.id):
            raise Refused("Only the person who searched can use these buttons.")
        if interaction.guild is None or not isinstance(interaction.user, discord.Member):
            raise Refused("/find works in servers.")
        return data

    async def on_more(self, interaction: discord.Interaction, fid: str, page: int, n: int | None) -> None:
        """Next page, or More like #n: a new private answer."""
        data = await self._saved(interaction, fid)
        await interaction.response.defer(ephemeral=True, thinking=True)
        assert interaction.guild is not None and isinstance(interaction.user, discord.Member)
        # Brought up to date like /find (after a model change this re-embeds, from fresh links).
        await self._wait_for_scans(
            interaction, await self._channels(interaction.guild, interaction.user, data)
        )
        if n is not None:  # "More like #n": that hit's picture becomes the query
            hits = await self._search(interaction, data)
            if n - 1 >= len(hits) or not hits[n - 1].meta.get("hash"):
                raise Refused("That result is gone.")
            hit = hits[n - 1]
            data = {**data, "terms": [], "image_hash": hit.meta["hash"]}
            fid, page = uuid.uuid4().hex[:12], 0
            await asyncio.to_thread(self.index.save_find, fid, data)
        await self._answer(interaction, fid, data, page)

    async def on_refresh(self, interaction: discord.Interaction, fid: str, page: int) -> None:
        """The same page again over what is indexed now, in place: like /find, newer messages are
        scanned first for up to find_answer_after_s (a finished channel's catch-up takes a moment)."""
        data = await self._saved(interaction, fid)
        await interaction.response.defer()  # an update of the message the button is on
        assert interaction.guild is not None and isinstance(interaction.user, discord.Member)
        channels = await self._channels(interaction.guild, interaction.user, data)
        await self._wait_for_scans(interaction, channels)
        await self._answer(interaction, fid, data, page)

    async def on_share(self, interaction: discord.Interaction, fid: str, page: int) -> None:
        """Post, publicly, the shown hits that come from this channel; say how many were left out."""
        data = await self._saved(interaction, fid)
        # Public: this answer is for the channel (nothing to share: the error handler removes it).
        await interaction.response.defer(thinking=True)
        saved = await asyncio.to_thread(self.index.get_find, f"{fid}-{page}")
        shown = [_hit_of(h) for h in (saved or {}).get("shown", [])]
        here = scope_of(interaction.guild_id, interaction.channel_id or 0)
        mine = [h for h in shown if h.scope == here]
        if mine:  # searched again: what was deleted, or is no longer readable, since is never shared
            now = {(h.scope, h.key) for h in await self._search(interaction, data)}
            mine = [h for h in mine if (h.scope, h.key) in now]
        if not mine:
            raise Refused(
                "None of these results were posted in this channel: there is nothing to share here."
            )
        assert interaction.guild is not None
        embed, file = await self._render(interaction.guild, mine, 1)
        left_out = len(shown) - len(mine)
        note = f"; {_plural(left_out, 'other result')} left out, not from here" if left_out else ""
        await interaction.edit_original_response(
            content=f"{interaction.user.mention} shared {_plural(len(mine), 'result')} "
            f"from this channel{note}.",
            embed=embed,
            attachments=[file],
            allowed_mentions=discord.AllowedMentions.none(),
        )

    # -- live index --------------------------------------------------------------------------------
    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.guild is not None and message.author != self.bot.user:
            self.discord_index.tasks.spawn(self.discord_index.on_message(message), "live indexing")

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        author = (payload.data.get("author") or {}).get("id")
        if self.bot.user is not None and author == str(self.bot.user.id):
            return  # Iris's own answers and progress edits: never indexed
        channel = self.bot.get_channel(payload.channel_id)
        if channel is not None and hasattr(channel, "fetch_message"):
            edit = self.discord_index.on_edit(payload.guild_id, channel, payload.message_id)
            self.discord_index.tasks.spawn(edit, "live re-indexing")

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self.discord_index.on_delete(payload.guild_id, payload.channel_id, [payload.message_id])

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        await self.discord_index.on_delete(payload.guild_id, payload.channel_id, payload.message_ids)

    @commands.Cog.listener()
    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        await self.discord_index.on_channel_delete(channel.guild.id, channel.id)

    @commands.Cog.listener()
    async def on_thread_delete(self, thread: discord.Thread) -> None:
        await self.discord_index.on_channel_delete(thread.guild.id, thread.id)


def _hit_json(hit: Hit) -> list[Any]:
    return [hit.scope, hit.key, hit.score, hit.meta]


def _hit_of(row: list[Any]) -> Hit:
    return Hit(str(row[0]), str(row[1]), float(row[2]), dict(row[3]))
