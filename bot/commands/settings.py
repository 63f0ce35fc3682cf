"""/settings: a person's defaults (`/settings me`) and, for Manage Server, the server's (`/settings server`).

Every answer is private. Values are checked in one place (iris/settings.py), stored in SQLite and used by
the next command at once; `IrisBot.guild_config` is where the server's are read.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import IrisBot
from bot.errors import Refused
from iris.config import GuildConfig
from iris.errors import BadRequest
from iris.labels import parse_labels
from iris.request import ASPECTS, GENERATORS, PROFILES
from iris.settings import Settings, UserSettings, check

log = logging.getLogger(__name__)

COLOUR = 0x5865F2
GUILD_KEYS = ("imagine_channels", "max_queued_per_user", "default_labels", "banned_prompts", "find_excluded")


def channel_ids(text: str) -> list[str]:
    """Channel ids from "<#123…>, 456…" text; "all" (or nothing) means every channel."""
    if text.strip().lower() in ("", "all", "any"):
        return []
    ids = re.findall(r"[0-9]{15,21}", text)
    if not ids:
        raise BadRequest('name the channels as #mentions or ids, or "all" for every channel')
    return ids


def me_embed(mine: UserSettings, bot: IrisBot) -> discord.Embed:
    im = bot.config.imagine
    embed = discord.Embed(title="Your defaults", colour=COLOUR)
    embed.add_field(name="Steps", value=str(mine.steps or f"{im.steps} (default)"))
    embed.add_field(name="Aspect", value=mine.aspect or "square (default)")
    embed.add_field(name="Generator", value=mine.generator or f"{im.generator} (default)")
    embed.add_field(name="Recipe", value=mine.profile or f"{im.profile} (default)")
    embed.add_field(
        name="/classify answers", value="only to you" if mine.private_classify else "in the channel"
    )
    embed.set_footer(text="/imagine pictures are always posted in the channel.")
    return embed


def server_embed(gcfg: GuildConfig, stored: dict[str, Any]) -> discord.Embed:
    def origin(key: str) -> str:
        return " (set here)" if key in stored else ""

    channels = ", ".join(f"<#{c}>" for c in gcfg.imagine_channels) or "all"
    cap = "config default" if gcfg.max_queued_per_user is None else str(gcfg.max_queued_per_user)
    labels = ", ".join(gcfg.default_labels) if gcfg.default_labels else "config default"
    banned = "\n".join(f"`{p}`" for p in gcfg.banned_prompts) or "none"
    excluded = ", ".join(f"<#{c}>" for c in gcfg.find_excluded) or "none"
    embed = discord.Embed(title="This server's settings", colour=COLOUR)
    embed.add_field(
        name="/imagine channels" + origin("imagine_channels"), value=channels[:1024], inline=False
    )
    embed.add_field(name="Pictures waiting per person" + origin("max_queued_per_user"), value=cap)
    embed.add_field(name="Default labels" + origin("default_labels"), value=labels[:1024], inline=False)
    embed.add_field(
        name="Banned prompt patterns" + origin("banned_prompts"), value=banned[:1024], inline=False
    )
    embed.add_field(name="Kept out of /find" + origin("find_excluded"), value=excluded[:1024], inline=False)
    return embed


class SettingsCog(commands.Cog, name="Settings"):
    group = app_commands.Group(name="settings", description="Your defaults, and this server's settings")

    def __init__(self, bot: IrisBot) -> None:
        self.bot = bot

    @property
    def store(self) -> Settings:
        if self.bot.settings is None:
            raise Refused("Settings are not available right now.")
        return self.bot.settings

    @group.command(name="me", description="Your defaults for /imagine and /classify (only you see them)")
    @app_commands.describe(
        steps="/imagine steps when you don't say",
        aspect="/imagine picture shape when you don't say",
        generator="/imagine generator when you don't say",
        profile="/imagine cutout recipe when you don't say",
        private_classify="true: /classify answers only you",
        reset="true: forget all your defaults",
    )
    @app_commands.choices(
        aspect=[app_commands.Choice(name=n, value=n) for n in ASPECTS],
        generator=[app_commands.Choice(name=n, value=n) for n in GENERATORS],
        profile=[app_commands.Choice(name=n, value=n) for n in PROFILES],
    )
    async def me(
        self,
        interaction: discord.Interaction,
        steps: app_commands.Range[int, 1, 10_000] | None = None,
        aspect: str | None = None,
        generator: str | None = None,
        profile: str | None = None,
        private_classify: bool | None = None,
        reset: bool = False,
    ) -> None:
        store, uid = self.store, str(interaction.user.id)
        max_steps = self.bot.config.imagine.max_steps
        if steps is not None and steps > max_steps:
            raise BadRequest(f"steps must be between 1 and {max_steps} here")
        if generator == "vqgan" and not self.bot.manager.has_vqgan:
            raise BadRequest("this bot has no VQGAN model: only the pixels generator works here")
        changes: dict[str, Any] = {
            "steps": steps,
            "aspect": aspect,
            "generator": generator,
            "profile": profile,
        }
        changes = {k: v for k, v in changes.items() if v is not None}
        if private_classify is not None:
            changes["private_classify"] = private_classify
        if reset:
            changes = dict.fromkeys(("steps", "aspect", "generator", "profile", "private_classify"))

        def apply() -> UserSettings:
            for key, value in changes.items():
                store.set_user(uid, key, value)
            return store.user(uid)

        mine = await asyncio.to_thread(apply)
        await interaction.response.send_message(embed=me_embed(mine, self.bot), ephemeral=True)

    @group.command(name="server", description="This server's settings (for members with Manage Server)")
    @app_commands.describe(
        imagine_channels='where /imagine works: #channels, or "all"',
        queue_cap="pictures one person may have waiting (0-100)",
        default_labels='/classify labels when none are given, e.g. "cat, dog"',
        ban="a prompt pattern to refuse (a regular expression, case-insensitive)",
        unban="a banned pattern to allow again",
        find_exclude="a channel /find never scans or shows",
        find_include="a channel /find may use again",
        reset="go back to the bot's default for this setting",
    )
    @app_commands.choices(reset=[app_commands.Choice(name=k, value=k) for k in GUILD_KEYS])
    async def server(
        self,
        interaction: discord.Interaction,
        imagine_channels: str | None = None,
        queue_cap: app_commands.Range[int, 0, 100] | None = None,
        default_labels: str | None = None,
        ban: str | None = None,
        unban: str | None = None,
        find_exclude: discord.abc.GuildChannel | None = None,
        find_include: discord.abc.GuildChannel | None = None,
        reset: str | None = None,
    ) -> None:
        guild = interaction.guild
        if guild is None:
            raise Refused("Server settings are changed in the server.")
        perms = getattr(interaction, "permissions", None)
        if not (perms and perms.manage_guild):  # viewing too: banned patterns are for moderators' eyes
            raise Refused("Seeing or changing this server's settings needs the Manage Server permission.")
        store, gid = self.store, str(guild.id)
        wanted = [imagine_channels, queue_cap, default_labels, ban, unban, find_exclude, find_include, reset]
        if any(v is not None for v in wanted):
            changes = self._changes(
                guild.id, imagine_channels, queue_cap, default_labels, ban, unban, find_exclude, find_include
            )
            if reset is not None:
                changes[reset] = None
            # Every value is checked before any is stored: a bad one changes nothing.
            checked = {key: check("guild", key, value) for key, value in changes.items()}

            def apply() -> None:
                for key, value in checked.items():
                    store.set_guild(gid, key, value)

            await asyncio.to_thread(apply)
            await self._tell_find(guild.id, find_exclude, find_include)
            log.info("server %s settings changed by %s: %s", gid, interaction.user.id, sorted(checked))
        embed = server_embed(self.bot.guild_config(guild.id), store.guild(gid))
        await interaction.response.send_message(embed=embed, ephemeral=True)

    def _changes(
        self,
        guild_id: int,
        imagine_channels: str | None,
        queue_cap: int | None,
        default_labels: str | None,
        ban: str | None,
        unban: str | None,
        find_exclude: discord.abc.GuildChannel | None,
        find_include: discord.abc.GuildChannel | None,
    ) -> dict[str, Any]:
        """The server settings to store, as whole new values (lists edited from what is in force)."""
        current = self.bot.guild_config(guild_id)
        changes: dict[str, Any] = {}
        if imagine_channels is not None:
            ids = channel_ids(imagine_channels)
            guild = self.bot.get_guild(guild_id)
            unknown = [i for i in ids if guild is not None and guild.get_channel_or_thread(int(i)) is None]
            if unknown:
                raise BadRequest(f"there is no channel {unknown[0]} on this server")
            changes["imagine_channels"] = ids
        if queue_cap is not None:
            changes["max_queued_per_user"] = queue_cap
        if default_labels is not None:
            changes["default_labels"] = parse_labels(default_labels)
        if ban is not None or unban is not None:
            everywhere = set(self.bot.config.discord.banned_prompts)
            own = [p for p in current.banned_prompts if p not in everywhere]
            if unban is not None:
                if unban in everywhere:
                    raise Refused("That pattern is banned on every server by the bot's owner (config.yaml).")
                if unban not in own:
                    raise BadRequest(f"{unban!r} is not banned here")
                own.remove(unban)
            if ban is not None and ban not in own:
                own.append(ban)
            changes["banned_prompts"] = own
        if find_exclude is not None or find_include is not None:
            excluded = list(current.find_excluded)
            if find_exclude is not None and str(find_exclude.id) not in excluded:
                excluded.append(str(find_exclude.id))
            if find_include is not None and str(find_include.id) in excluded:
                excluded.remove(str(find_include.id))
            changes["find_excluded"] = excluded
        return changes

    async def _tell_find(
        self,
        guild_id: int,
        exclude: discord.abc.GuildChannel | None,
        include: discord.abc.GuildChannel | None,
    ) -> None:
        """Also record the change in /find's own exclusion list where /find has one, so it stops (or
        resumes) scanning at once and forgets what it indexed in an excluded channel."""
        index = getattr(self.bot.get_cog("Find"), "discord_index", None)
        set_excluded = getattr(index, "set_excluded", None)
        if set_excluded is None:
            return
        for channel, excluded in ((exclude, True), (include, False)):
            if channel is not None:
                await set_excluded(guild_id, channel.id, excluded)


async def setup(bot: IrisBot) -> None:
    await bot.add_cog(SettingsCog(bot))
