"""Where errors meet people: typed errors become ephemeral replies, the rest an apology with an id."""

from __future__ import annotations

import contextlib
import logging

import discord
from discord import app_commands

from bot.delivery import retrying
from iris.errors import IrisError, report_unexpected

log = logging.getLogger(__name__)

MAX_CONTENT = 2000  # characters in a message's content (Discord refuses more)


class Refused(IrisError):
    """A polite refusal (banned prompt, channel not allowed, not your job...)."""


def user_message(error: BaseException) -> str:
    """What the person sees for `error`; unexpected errors are logged with their traceback."""
    if isinstance(error, app_commands.CommandInvokeError):
        error = error.original
    if isinstance(error, IrisError):
        return error.message
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down a little: try again in {error.retry_after:.0f} s."
    if isinstance(error, app_commands.TransformerError):
        return f"That value doesn't work for this option: {error.value!r}."
    if isinstance(error, app_commands.CheckFailure):
        return "You can't use this command here."
    error_id = report_unexpected(log, error, "a command")
    return f"Sorry, something went wrong on our side (error id `{error_id}`)."


async def reply_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Send the error privately, whether or not the interaction was already acknowledged."""
    text = user_message(error)
    if len(text) > MAX_CONTENT:  # a message may echo what the person typed: keep it within Discord's bound
        text = text[: MAX_CONTENT - 1] + "…"
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(text, ephemeral=True)
            return
        if interaction.response.type is discord.InteractionResponseType.deferred_channel_message:
            # A followup after a public "thinking…" would replace it publicly: remove it first.
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
        await retrying(lambda: interaction.followup.send(text, ephemeral=True))
    except discord.HTTPException:
        log.warning("could not tell the user about an error: %s", text)


async def on_tree_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    await reply_error(interaction, error)
