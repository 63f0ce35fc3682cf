"""/status: the queue, your jobs, the device and the models."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import IrisBot
from bot.delivery import retrying


def fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class Status(commands.Cog):
    def __init__(self, bot: IrisBot) -> None:
        self.bot = bot

    @app_commands.command(name="status", description="Queue length, your jobs, device and models")
    async def status(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        st = self.bot.manager.status()
        me = str(interaction.user.id)
        mine = [j for j in ([st.running] if st.running else []) + st.queued if j.owner == me]
        embed = discord.Embed(title="Iris status", colour=0x5865F2)
        embed.add_field(
            name="Queue", value=f"{st.queue_length} waiting" + (", 1 running" if st.running else "")
        )
        lines = [
            f"`{j.id}` running, step {j.step}/{j.total}"
            if j.state == "running"
            else f"`{j.id}` queued at #{j.position}"
            for j in mine
        ]
        embed.add_field(name="Your jobs", value="\n".join(lines) or "none", inline=False)
        embed.add_field(name="Device", value=st.device)
        embed.add_field(name="Models", value=", ".join(st.models) or "not loaded yet")
        step = f"{st.step_time_s * 1000:.0f} ms" if st.step_time_s else "not measured yet"
        embed.add_field(name="Recent step time", value=step)
        await retrying(lambda: interaction.followup.send(embed=embed, ephemeral=True))


async def setup(bot: IrisBot) -> None:
    await bot.add_cog(Status(bot))
