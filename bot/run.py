"""`iris run`: start the bot. Every start-up failure is one clear line and a non-zero exit."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import aiohttp
import discord

from iris.config import Config
from iris.errors import IrisError

log = logging.getLogger(__name__)


class StartupError(IrisError):
    """The bot cannot start (no token, token rejected, intents not enabled...)."""


def read_token(env_file: str | os.PathLike[str] = ".env") -> str:
    """DISCORD_TOKEN from the environment, else from a `.env` file (KEY=value lines)."""
    token = os.environ.get("DISCORD_TOKEN", "").strip()
    path = Path(env_file)
    if not token and path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key.strip() == "DISCORD_TOKEN":
                token = value.strip().strip("'\"")
    if not token:
        raise StartupError(
            "no bot token: set DISCORD_TOKEN in the environment or in a .env file "
            "(Discord developer portal → your application → Bot → Reset Token)"
        )
    return token


async def run_bot(config: Config, token: str, sync_global: bool = False) -> None:
    from bot.app import IrisBot

    bot = IrisBot(config, sync_global=sync_global)
    try:
        # Load the models before connecting: missing weights fail now, with their one-line message.
        await asyncio.to_thread(lambda: (bot.manager.engine.clip, bot.manager.engine.vqgan))
        async with bot:
            await bot.start(token)
    except discord.LoginFailure as e:
        raise StartupError(
            "Discord rejected the bot token (DISCORD_TOKEN); reset it in the developer portal"
        ) from e
    except (aiohttp.ClientConnectionError, OSError) as e:
        raise StartupError(f"cannot reach Discord ({e}); check the network connection") from e
    except discord.PrivilegedIntentsRequired as e:
        raise StartupError(
            "the Message Content intent is not enabled: developer portal → your application → Bot → "
            "Privileged Gateway Intents → Message Content Intent"
        ) from e


async def sync_only(config: Config, token: str, sync_global: bool) -> list[str]:
    """Log in, push the command tree (globally and/or to the dev servers), log out."""
    from bot.app import EXTENSIONS, IrisBot

    bot = IrisBot(config, sync_global=sync_global)
    try:
        async with bot:
            await bot.login(token)
            for ext in EXTENSIONS:
                await bot.load_extension(ext)
            await bot.sync_commands()
            return [c.name for c in bot.tree.get_commands()]
    except discord.LoginFailure as e:
        raise StartupError(
            "Discord rejected the bot token (DISCORD_TOKEN); reset it in the developer portal"
        ) from e


def main(config: Config, sync_global: bool = False) -> None:
    token = read_token()
    asyncio.run(run_bot(config, token, sync_global))
