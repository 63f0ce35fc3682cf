"""/history and /show: a person's recent pictures from the job journal, and posting one of them again.

Who may /show a job: its owner, always (in a channel where /imagine works); anyone else only while the
picture is still posted in a channel of this server that they can read — it is public there already.
A picture that was deleted, delivered by DM, or posted in another server stays its owner's.
"""

from __future__ import annotations

import asyncio
import io
import re
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import IrisBot
from bot.errors import Refused
from bot.progress import fit_image
from iris.journal import JobState, JournalEntry

from .imagine._views import final_view, result_embed

COLOUR = 0xEB459E
SHOWN = (JobState.GENERATED, JobState.DELIVERED)  # the journal keeps these jobs' pictures
JOB_ID = re.compile(r"[0-9a-f]{1,64}")


def picture_link(entry: JournalEntry) -> str | None:
    """The message that shows the job's picture, when it was delivered to a server channel."""
    meta = entry.meta
    if entry.state is not JobState.DELIVERED or not meta.get("message") or not meta.get("guild"):
        return None
    return f"https://discord.com/channels/{meta['guild']}/{meta['channel']}/{meta['message']}"


def history_line(entry: JournalEntry) -> str:
    prompt = discord.utils.escape_markdown(entry.request.prompt.replace("\n", " "))
    prompt = prompt if len(prompt) <= 80 else prompt[:79] + "…"
    seed = entry.seed if entry.seed is not None else entry.request.seed
    link = picture_link(entry)
    parts = [f"`{entry.id}`", entry.state.value, f"seed {seed if seed is not None else '?'}", prompt]
    if link:
        parts.append(f"[picture]({link})")
    return " · ".join(parts)


class History(commands.Cog):
    def __init__(self, bot: IrisBot) -> None:
        self.bot = bot

    @app_commands.command(name="history", description="Your recent pictures: prompt, seed, state, link")
    @app_commands.describe(count="how many of your latest jobs to list (1-25)")
    async def history(
        self, interaction: discord.Interaction, count: app_commands.Range[int, 1, 25] = 10
    ) -> None:
        journal = self.bot.manager.journal
        entries = await asyncio.to_thread(journal.of_owner, str(interaction.user.id), count)
        text = "\n".join(history_line(e) for e in entries) or "You have no pictures yet: try /imagine."
        embed = discord.Embed(title="Your recent pictures", description=text[:4096], colour=COLOUR)
        embed.set_footer(text="/show job:<id> posts one again, with its buttons.")
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="show", description="Post one of your past pictures again, with its buttons")
    @app_commands.describe(job="the job id, as /history lists it")
    async def show(self, interaction: discord.Interaction, job: str) -> None:
        job = job.strip().strip("`").lower()
        entry = None
        if JOB_ID.fullmatch(job):
            entry = await asyncio.to_thread(self.bot.manager.journal.get, job)
        if entry is None:
            raise Refused(f"There is no job `{job[:64]}`; /history lists yours.")
        if entry.owner != str(interaction.user.id) and not await self._posted_for(interaction, entry):
            raise Refused(
                "That picture isn't yours and isn't posted where you can see it, so I can't show it."
            )
        if entry.state not in SHOWN or entry.result_png is None:
            raise Refused(f"Job `{entry.id}` has no picture to show (it is {entry.state.value}).")
        imagine: Any = self.bot.get_cog("Imagine")
        if imagine is not None:  # the same channel and prompt rules as a new /imagine
            imagine.check_allowed(interaction, entry.request.prompt)
        seed = entry.seed if entry.seed is not None else entry.request.seed
        embed = result_embed(entry.request.prompt, seed, entry.request.steps, entry.clip_score, entry.reduced)
        view = final_view(entry.id, embed, entry.result_png, entry.request.count)  # a grid keeps U/V
        assert view.image is not None and view.embed is not None and view.view is not None
        limit = getattr(interaction, "attachment_size_limit", None) or 8 * 2**20
        data, name = fit_image(view.image, limit, view.filename)
        view.embed.set_image(url=f"attachment://{name}")
        await interaction.response.send_message(
            embed=view.embed, file=discord.File(io.BytesIO(data), filename=name), view=view.view
        )

    async def _posted_for(self, interaction: discord.Interaction, entry: JournalEntry) -> bool:
        """Whether the job's picture is still posted in a channel of this server that the caller reads."""
        meta, member = entry.meta, interaction.user
        if interaction.guild is None or meta.get("guild") != str(interaction.guild.id):
            return False
        if not picture_link(entry) or not isinstance(member, discord.Member):
            return False
        channel = interaction.guild.get_channel_or_thread(int(meta["channel"]))
        if not isinstance(channel, discord.abc.Messageable):
            return False
        if not channel.permissions_for(member).read_message_history:
            return False
        try:
            message = await channel.fetch_message(int(meta["message"]))
        except discord.HTTPException:
            return False  # deleted, or out of reach: no longer public
        # The picture itself, not a progress preview left where the final one could not be posted.
        return any(a.filename.startswith(f"iris-{entry.id}.") for a in message.attachments)


async def setup(bot: IrisBot) -> None:
    await bot.add_cog(History(bot))
