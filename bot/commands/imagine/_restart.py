"""After a restart: deliver what the last run made but did not deliver, then resume what it left.

Each job on its own: one that fails (a channel that refuses messages, a deleted channel) is logged and
never stops the others. A job's old message (journaled in its meta) shows what becomes of it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord

from bot.errors import Refused
from bot.progress import ProgressMessage, View
from iris.errors import IrisError, ServiceClosed
from iris.journal import JournalEntry

from ._views import buttons, final_view, job_embed, result_embed

if TYPE_CHECKING:
    from ._cog import Imagine

log = logging.getLogger(__name__)


async def after_restart(cog: Imagine) -> None:
    """Deliver what the last run made but did not deliver, then resume what it left unfinished."""
    for entry in cog.bot.manager.undelivered():
        try:
            await _redeliver(cog, entry)
        except Exception:
            log.exception("could not redeliver job %s", entry.id)
    for entry in cog.bot.manager.unfinished():
        try:
            await _resume(cog, entry)
        except Exception:
            log.exception("could not resume job %s", entry.id)


async def _old_place(cog: Imagine, entry: JournalEntry) -> ProgressMessage:
    """A progress message on the job's old message (or in its channel if that is unknown). When the
    channel is gone, one with no channel (`channel` None) that says why in `channel_gone`."""
    channel_id = int(entry.meta.get("channel") or 0)
    channel = cog.bot.get_channel(channel_id)
    gone = "I no longer know its channel"
    if channel is None and channel_id:
        try:
            channel = await cog.bot.fetch_channel(channel_id)
        except discord.HTTPException as e:
            channel = None
            gone = {10003: "its channel was deleted", 50001: "I can no longer see its channel"}.get(
                e.code, "I could not reach its channel"
            )
    if not isinstance(channel, discord.abc.Messageable):
        requester = cog.requester(int(entry.owner))
        return ProgressMessage(None, None, 1, 1.0, requester=requester, channel_gone=gone)
    message_id = int(entry.meta.get("message") or 0)
    get = getattr(channel, "get_partial_message", None)
    message = get(message_id) if message_id and get is not None else None
    cfg = cog.bot.config.discord
    return ProgressMessage(
        None,
        channel,
        cfg.edits_per_window,
        cfg.edit_window_s,
        message=message,
        requester=cog.requester(int(entry.owner)),
    )


async def _redeliver(cog: Imagine, entry: JournalEntry) -> None:
    if entry.result_png is None:
        return
    progress = await _old_place(cog, entry)  # the channel is gone: the picture goes by DM
    shown = result_embed(entry.request.prompt, entry.seed, entry.step, entry.clip_score, entry.reduced)
    await cog.deliver(entry.id, progress, final_view(entry.id, shown, entry.result_png, entry.request.count))


async def _resume(cog: Imagine, entry: JournalEntry) -> None:
    """Queue the job again and follow it in its old message; if it cannot be, say so and drop it."""
    prompt = entry.request.prompt
    progress = await _old_place(cog, entry)
    try:
        if progress.channel is None:
            raise Refused(progress.channel_gone or "its channel is gone")
        handle = cog.bot.manager.resubmit(entry)
    except ServiceClosed:  # shutting down already: the job stays unfinished, for the next start
        log.info("job %s left for the next start: the bot is shutting down", entry.id)
        return
    except IrisError as e:
        cog.bot.manager.discard(entry)
        if progress.channel is not None:
            dropped = View(embed=job_embed("Couldn't resume after a restart", prompt), view=discord.ui.View())
            await progress.finish(dropped, fallback=False)
        await progress.tell(f"Your picture “{prompt[:200]}” couldn't be resumed after a restart: {e.message}")
        return
    progress.show(View(embed=job_embed("Resuming after a restart", prompt), view=buttons(entry.id, "cancel")))
    cog.follow(handle, progress)
