"""/help: a short private guide to every command, the limits in force on this server, where results go."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import IrisBot

COLOUR = 0x5865F2
FIELD_MAX = 1024  # characters in one embed field's value (Discord refuses more)

# Examples for the commands that take some thought; a command not listed here still appears, with its
# description, so a new command is never missing from /help.
EXAMPLES = {
    "imagine": '`/imagine prompt:"a watercolor fox:1 | blurry:-0.5" steps:200 aspect:landscape` — parts '
    "split by `|`, each with an optional `:weight` (negative: avoid it)",
    "classify": '`/classify image:<file> labels:"cat, dog, a person"` — or right-click a message → '
    "Apps → *Classify image*",
    "find": '`/find query:"a cat +sunset -text:0.5"` — `+word` adds, `-word` avoids, `:weight` tunes; '
    "or attach an image to find look-alikes",
    "settings": "`/settings me steps:150 aspect:portrait` — your defaults; "
    "`/settings server` — this server's (Manage Server)",
    "history": "`/history count:5` — your last pictures, with their seeds and links",
    "show": "`/show job:<id from /history>` — post a past picture again, with its buttons",
}


def command_lines(bot: IrisBot) -> list[str]:
    """One line per registered slash command (and message command), with an example where there is one."""
    lines = []
    for command in sorted(bot.tree.get_commands(), key=lambda c: c.name):
        if isinstance(command, app_commands.ContextMenu):
            lines.append(f"**{command.name}** (message menu → Apps)")
            continue
        example = EXAMPLES.get(command.name)
        line = f"**/{command.name}** — {command.description}"
        lines.append(f"{line}\n  {example}" if example else line)
    return lines


def limits_text(bot: IrisBot, guild_id: int | None) -> str:
    cfg = bot.config
    im, mgr = cfg.imagine, cfg.manager
    gcfg = bot.guild_config(guild_id)
    cap = mgr.max_queued_per_user if gcfg.max_queued_per_user is None else gcfg.max_queued_per_user
    where = ", ".join(f"<#{c}>" for c in gcfg.imagine_channels) or "every channel"
    return "\n".join(
        [
            f"Steps: {im.steps} by default, at most {im.max_steps}",
            f"Size: {im.width}×{im.height} px by default, at most {im.max_side} px a side",
            f"Queue: {mgr.max_queue} pictures waiting at most; each person {cap} waiting "
            f"and {mgr.max_running_per_user} running",
            f"/imagine works in: {where}",
            f"Prompts: up to {im.max_prompt_chars} characters",
        ]
    )


def results_text(bot: IrisBot) -> str:
    imagine = (
        "a thread under the command" if bot.config.discord.thread_per_job else "the channel, in one message"
    )
    return "\n".join(
        [
            f"/imagine: {imagine} that shows the queue and progress; if it cannot be posted there, by DM",
            "/classify, /find: in the channel (/classify only to you if `/settings me private_classify`)",
            "/show: in the channel, with the picture's buttons",
            "/help, /status, /settings, /history: only to you",
        ]
    )


def fields_of(text: str) -> list[str]:
    """`text` cut at line ends into pieces that fit an embed field."""
    pieces, current = [], ""
    for line in text.splitlines():
        if current and len(current) + 1 + len(line) > FIELD_MAX:
            pieces.append(current)
            current = ""
        current = f"{current}\n{line}" if current else line[:FIELD_MAX]
    return [*pieces, current] if current else pieces


class Help(commands.Cog):
    def __init__(self, bot: IrisBot) -> None:
        self.bot = bot

    @app_commands.command(name="help", description="How to use Iris, and the limits on this server")
    async def help(self, interaction: discord.Interaction) -> None:
        embed = discord.Embed(title="Iris — what I can do", colour=COLOUR)
        for n, piece in enumerate(fields_of("\n".join(command_lines(self.bot)))):
            embed.add_field(name="Commands" if n == 0 else "More commands", value=piece, inline=False)
        embed.add_field(name="Limits here", value=limits_text(self.bot, interaction.guild_id), inline=False)
        embed.add_field(name="Where results go", value=results_text(self.bot), inline=False)
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def setup(bot: IrisBot) -> None:
    await bot.add_cog(Help(bot))
