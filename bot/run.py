"""`iris run`: start the bot. Every start-up failure is one clear line and a non-zero exit."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import discord

from iris import heartbeat
from iris.config import Config
from iris.errors import IrisError

if TYPE_CHECKING:
    from bot.app import IrisBot

log = logging.getLogger(__name__)

# `docker stop` sends SIGTERM, then SIGKILL after 10 s: the graceful close (the manager's grace, then
# the "Paused" messages) must end well inside that.
STOP_TIMEOUT_S = 8.0
PROBE_TIMEOUT_S = 20.0  # seconds the inference worker has to answer a heartbeat's probe


# Gateway close codes about sharding (https://discord.com/developers/docs/topics/opcodes-and-status-codes)
_REFUSED_SHARDS = {
    4010: "invalid shard; check discord.shard_count and discord.shard_ids",
    4011: (
        "this bot is in too many servers for one connection; set discord.shard_count "
        "(at most 2,500 servers per shard; GET /gateway/bot's `shards` is Discord's advice)"
    ),
}


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
        # Load the models before connecting: missing weights fail now, with their one-line message
        # (and a device child started for it ends with it).
        try:
            await bot.manager.warm_up()
        except BaseException:
            await bot.manager.close(grace_s=0)
            raise
        await serve(bot, token)
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
    except discord.ConnectionClosed as e:
        if e.code not in _REFUSED_SHARDS:
            raise
        raise StartupError(
            f"Discord refused the gateway connection (close code {e.code}): {_REFUSED_SHARDS[e.code]}"
        ) from e


async def beat(bot: IrisBot, state: str = "running") -> None:
    """Write one heartbeat: the gateway, a probe of the inference worker, the queue."""
    worker = False
    if state == "running":
        try:  # a short job runs between two slices of a generation: a live worker answers in seconds
            await asyncio.wait_for(bot.manager.model_id(), PROBE_TIMEOUT_S)
            worker = True
        except Exception as e:
            log.warning("heartbeat: the inference worker did not answer (%s)", type(e).__name__)
    st = bot.manager.status()
    now = heartbeat.Heartbeat(
        gateway=bot.gateway_connected(),
        worker=worker,
        queued=st.queue_length,
        running=1 if st.running else 0,
        state=state,
    )
    await asyncio.to_thread(heartbeat.write, bot.config.heartbeat_path, now)


async def _heartbeats(bot: IrisBot, every: float) -> None:
    while True:
        try:
            await beat(bot)
        except OSError as e:  # a full or read-only disk: the next beat may work, and health shows it
            log.warning("cannot write the heartbeat %s: %s", bot.config.heartbeat_path, e)
        await asyncio.sleep(every)


async def serve(bot: IrisBot, token: str, heartbeat_every: float = heartbeat.HEARTBEAT_EVERY_S) -> None:
    """Run `bot` until it is closed; SIGTERM and SIGINT start a bounded graceful shutdown. A heartbeat
    file in the data directory is rewritten every `heartbeat_every` s for `iris status --local`."""
    loop = asyncio.get_running_loop()
    beats = asyncio.create_task(_heartbeats(bot, heartbeat_every), name="iris-heartbeat")
    beats.add_done_callback(_log_failure)
    stopping: list[asyncio.Task[None]] = []  # a reference, so the shutdown task is not collected

    def on_signal(signum: int) -> None:
        if stopping:
            return
        log.info("%s: pausing jobs and closing (at most %.0f s)", signal.Signals(signum).name, STOP_TIMEOUT_S)
        stopping.append(asyncio.create_task(shutdown(bot), name="iris-shutdown"))

    installed = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals on this platform
            pass
    try:
        async with bot:
            await bot.start(token)
        if stopping:
            await stopping[0]
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        beats.cancel()
        await asyncio.gather(beats, return_exceptions=True)
        try:
            await beat(bot, "stopped")
        except OSError as e:
            log.warning("cannot write the heartbeat %s: %s", bot.config.heartbeat_path, e)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the heartbeat stopped", exc_info=task.exception())


async def shutdown(bot: IrisBot, timeout: float = STOP_TIMEOUT_S) -> None:
    """Close `bot` gracefully within `timeout` s: the running job is paused within a short grace (the
    config's `close_grace_s` may be longer than docker waits), then the "Paused" messages are sent."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    grace = min(bot.config.manager.close_grace_s, timeout / 3)
    try:
        await asyncio.wait_for(bot.manager.close(grace_s=grace), timeout / 2)
    except TimeoutError:
        log.warning("the jobs did not pause within %.0f s; closing anyway", timeout / 2)
    try:
        await asyncio.wait_for(bot.close(), max(0.5, deadline - loop.time()))
    except TimeoutError:
        log.warning("the graceful shutdown took over %.0f s; stopping now", timeout)


async def sync_only(config: Config, token: str, sync_global: bool) -> list[str]:
    """Log in, push the command tree (globally and/or to the dev servers), log out.

    Logging in runs `setup_hook`, which loads the commands and syncs them; nothing else starts."""
    from bot.app import IrisBot

    bot = IrisBot(config, sync_global=sync_global, serve=False)
    try:
        async with bot:
            await bot.login(token)
            return [c.name for c in bot.tree.get_commands()]
    except discord.LoginFailure as e:
        raise StartupError(
            "Discord rejected the bot token (DISCORD_TOKEN); reset it in the developer portal"
        ) from e


def main(config: Config, sync_global: bool = False) -> None:
    token = read_token()
    asyncio.run(run_bot(config, token, sync_global))
