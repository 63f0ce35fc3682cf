"""The Discord client: loads one extension per command, owns the inference manager, syncs commands."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from typing import Any

import aiohttp
import discord
from discord.ext import commands

from bot.errors import on_tree_error
from bot.i18n import Translator
from iris.config import Config, GuildConfig
from iris.service import Manager
from iris.settings import Settings, SqliteSettings, UserSettings
from models.connect import open_manager

log = logging.getLogger(__name__)

IDENTIFY_WINDOW_S = 5.0  # Discord allows one IDENTIFY per rate-limit bucket in this many seconds

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
    """Iris on one gateway connection; with `discord.shard_count` set, `IrisBot(config)` makes a
    ShardedIrisBot instead (as pathlib's `Path()` makes a PosixPath): callers never pick the class."""

    def __new__(cls, config: Config, *args: Any, **kwargs: Any) -> IrisBot:
        chosen = ShardedIrisBot if cls is IrisBot and config.discord.shard_count is not None else cls
        return object.__new__(chosen)

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
        kwargs.update(self._shard_options(config))
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, help_command=None, **kwargs)
        self.config = config
        self.manager: Manager = manager or open_manager(config, engine)
        self.sync_global = sync_global
        self.serve = serve
        self.settings: Settings | None = None  # /settings; opened by setup_hook when serving

    @staticmethod
    def _shard_options(config: Config) -> dict[str, Any]:
        return {}  # one connection, no `shard` in IDENTIFY: Discord sends it every server and the DMs

    def runs_guild(self, guild_id: int | None) -> bool:
        """Whether a server's events (None: the DMs') come to this process. One connection gets all."""
        return True

    def gateway_connected(self) -> bool:
        """Whether this process is logged in to the gateway and ready (the heartbeat's `gateway`)."""
        return self.is_ready() and not self.is_closed()

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


class ShardedIrisBot(IrisBot, commands.AutoShardedBot):
    """Iris on discord.py's AutoShardedBot: one gateway connection per shard this process runs.

    Discord sends a server's events, and its interactions, only to shard `(guild_id >> 22) % shard_count`,
    and DMs to shard 0. `discord.shard_ids` picks this process's shards (all of them when empty), so two
    processes can each run half: together they answer every server, each exactly once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_concurrency: int | None = None  # GET /gateway/bot's, read before the first IDENTIFY
        self._identified_at: dict[int, float] = {}  # rate-limit bucket → loop time of its last IDENTIFY
        self._identify_lock = asyncio.Lock()

    @staticmethod
    def _shard_options(config: Config) -> dict[str, Any]:
        d = config.discord
        return {"shard_count": d.shard_count, "shard_ids": list(d.shard_ids) or None}  # None: all

    @property
    def own_shards(self) -> list[int]:
        """The shard ids this process runs."""
        assert self.shard_count is not None
        return list(self.shard_ids or range(self.shard_count))

    def runs_guild(self, guild_id: int | None) -> bool:
        assert self.shard_count is not None
        return (0 if guild_id is None else (guild_id >> 22) % self.shard_count) in self.own_shards

    def gateway_connected(self) -> bool:
        """Ready (every shard of this process sent READY) and each of its connections open now."""
        shards = self.shards
        return (
            super().gateway_connected()
            and set(shards) == set(self.own_shards)
            and not any(shard.is_closed() for shard in shards.values())
        )

    async def connect(self, *, reconnect: bool = True) -> None:
        log.info("gateway: this process runs shards %s of %s", self.own_shards, self.shard_count)
        await super().connect(reconnect=reconnect)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Pace IDENTIFYs as Discord allows: one per rate-limit bucket (shard_id % max_concurrency) per
        5 s. discord.py's default waits 5 s before every IDENTIFY but the first, whatever the bucket:
        a process with 16 shards and max_concurrency 16 would take 75 s to connect instead of none."""
        async with self._identify_lock:
            if self._max_concurrency is None:
                self._max_concurrency = await self._read_gateway_advice()
            bucket = (shard_id or 0) % self._max_concurrency
            loop = asyncio.get_running_loop()
            last = self._identified_at.get(bucket)
            if last is not None and (wait := last + IDENTIFY_WINDOW_S - loop.time()) > 0:
                await asyncio.sleep(wait)
            self._identified_at[bucket] = loop.time()

    async def _read_gateway_advice(self) -> int:
        """GET /gateway/bot: its max_concurrency; a warning when Discord advises more shards than set."""
        try:
            advised, _, limits = await self.http.get_bot_gateway()
        except (discord.HTTPException, discord.GatewayNotFound, aiohttp.ClientError) as e:
            log.warning("gateway: no session start limits (%s); one IDENTIFY per 5 s", e)
            return 1
        if self.shard_count is not None and advised > self.shard_count:
            log.warning(
                "gateway: Discord advises %d shards for this bot; discord.shard_count is %d",
                advised,
                self.shard_count,
            )
        return max(1, int(limits["max_concurrency"]))


def _open_settings(path: str) -> Settings:
    settings = Settings(SqliteSettings(path))
    settings.load()
    return settings
