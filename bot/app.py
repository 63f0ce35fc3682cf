"""The Discord client: loads one extension per command, owns the inference manager, syncs commands."""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord.ext import commands

from bot.errors import on_tree_error
from iris.config import Config, GuildConfig
from models.engine import Engine
from models.manager import InferenceManager

log = logging.getLogger(__name__)

EXTENSIONS = ("bot.commands.classify", "bot.commands.imagine", "bot.commands.status", "bot.find")


# Iris never joins voice: no warnings about missing voice libraries.
discord.VoiceClient.warn_nacl = False
discord.VoiceClient.warn_dave = False


class IrisBot(commands.Bot):
    def __init__(
        self,
        config: Config,
        engine: Engine | None = None,
        sync_global: bool = False,
        serve: bool = True,
        **kwargs: Any,
    ) -> None:
        """`serve`: False to only push the commands (`iris sync`): no inference manager, no journal."""
        intents = discord.Intents.default()
        intents.message_content = True  # /find reads attachments and embeds of past messages
        # Prompts, labels and file names are echoed back: none of their @mentions may ping anyone.
        kwargs.setdefault("allowed_mentions", discord.AllowedMentions.none())
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, help_command=None, **kwargs)
        self.config = config
        self.manager = InferenceManager(config, engine)
        self.sync_global = sync_global
        self.serve = serve

    async def setup_hook(self) -> None:
        if self.serve:
            await self.manager.start()
        self.tree.on_error = on_tree_error  # type: ignore[method-assign]
        for ext in EXTENSIONS:
            await self.load_extension(ext)
        await self.sync_commands()

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
        return self.config.discord.guilds.get(str(guild_id), GuildConfig()) if guild_id else GuildConfig()

    async def close(self) -> None:
        """Stop the manager first, so the last word on every job ("paused") still reaches Discord."""
        try:
            await self.manager.close()
            imagine = self.get_cog("Imagine")
            if imagine is not None:
                await imagine.drain(timeout=5.0)  # type: ignore[attr-defined]
        finally:
            await super().close()
