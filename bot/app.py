"""The Discord client: loads one extension per command, owns the inference manager, syncs commands."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from typing import Any

import discord
from discord.ext import commands

from bot.errors import on_tree_error
from bot.i18n import Translator
from iris.config import Config, GuildConfig
from iris.service import Manager, open_manager
from iris.settings import Settings, SqliteSettings, UserSettings

log = logging.getLogger(__name__)

EXTENSIONS = (
    "bot.commands.classify",
    "bot.commands.imagine",
    "bot.commands.status",
    "bot.find",
    "bot.commands.help",
    "bot.commands.settings",
    "bot.commands.history",
    "bot.commands.describe",
)


def settle_heap() -> None:
    """Keep what start-up loaded out of later garbage collections.

    torch, open_clip, timm and discord.py leave ~400,000 objects (functions, types, module dicts) that live
    as long as the process. Every full collection walked them all while holding the GIL: ~250 ms with the
    event loop frozen, which a /find scan's allocations triggered every few seconds. Start-up's garbage is
    collected once here, then the survivors are frozen (gc.freeze): later collections look only at objects
    made since, so they stay short. Frozen objects are still freed when their last reference goes.
    """
    gc.collect()
    gc.freeze()


# Iris never joins voice: no warnings about missing voice libraries.
discord.VoiceClient.warn_nacl = False
discord.VoiceClient.warn_dave = False


class IrisBot(commands.Bot):
    def __init__(
        self,
        config: Config,
        engine: Any = None,
        sync_global: bool = False,
        serve: bool = True,
        manager: Manager | None = None,
        **kwargs: Any,
    ) -> None:
        """`engine`: a models.engine.Engine to run in this process (tests); `serve`: False to only push the
        commands (`iris sync`): no inference manager, no journal; `manager`: one built already (tests),
        instead of the config's backend."""
        intents = discord.Intents.default()
        intents.message_content = True  # /find reads attachments and embeds of past messages
        # Prompts, labels and file names are echoed back: none of their @mentions may ping anyone.
        kwargs.setdefault("allowed_mentions", discord.AllowedMentions.none())
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, help_command=None, **kwargs)
        self.config = config
        self.manager: Manager = manager or open_manager(config, engine)
        self.sync_global = sync_global
        self.serve = serve
        self.settings: Settings | None = None  # /settings; opened by setup_hook when serving

    async def setup_hook(self) -> None:
        if self.serve:
            self.settings = await asyncio.to_thread(_open_settings, self.config.settings.path)
            await self.manager.start()
        self.tree.on_error = on_tree_error  # type: ignore[method-assign]
        await self.tree.set_translator(Translator())
        for ext in EXTENSIONS:
            await self.load_extension(ext)
        await self.sync_commands()
        if self.serve:
            settle_heap()

    async def sync_commands(self) -> None:
        if self.sync_global:
            synced = await self.tree.sync()
            log.info("synced %d commands globally", len(synced))
        for gid in self.config.discord.dev_guilds:
            guild = discord.Object(id=int(gid))
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to server %s", len(synced), gid)

    def guild_config(self, guild_id: int | None) -> GuildConfig:
        """The settings in force in a server (the one place they are read): config.yaml's, each replaced
        by what the server stored with /settings; `banned_prompts` also holds discord.banned_prompts."""
        base = self.config.discord.guilds.get(str(guild_id), GuildConfig()) if guild_id else GuildConfig()
        stored = self.settings.guild(str(guild_id)) if guild_id and self.settings else {}
        merged = dataclasses.replace(base, **stored)
        banned = list(dict.fromkeys([*self.config.discord.banned_prompts, *merged.banned_prompts]))
        return dataclasses.replace(merged, banned_prompts=banned)

    async def user_settings(self, user_id: int) -> UserSettings:
        """A person's /settings defaults (the config's where they set none)."""
        if self.settings is None:
            return UserSettings()
        mine = await asyncio.to_thread(self.settings.user, str(user_id))
        # What the bot's config allows now (it may have changed since they were set).
        steps = min(mine.steps, self.config.imagine.max_steps) if mine.steps else None
        generator = mine.generator if mine.generator != "vqgan" or self.manager.has_vqgan else None
        return dataclasses.replace(mine, steps=steps, generator=generator)

    async def close(self) -> None:
        """Stop the manager first, so the last word on every job ("paused") still reaches Discord."""
        try:
            await self.manager.close()
            imagine = self.get_cog("Imagine")
            if imagine is not None:
                await imagine.drain(timeout=5.0)  # type: ignore[attr-defined]
        finally:
            settings, self.settings = self.settings, None
            if settings is not None:
                await asyncio.to_thread(settings.close)
            await super().close()


def _open_settings(path: str) -> Settings:
    settings = Settings(SqliteSettings(path))
    settings.load()
    return settings
