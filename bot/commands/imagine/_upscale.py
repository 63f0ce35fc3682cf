"""The Upscale button: the picture at twice the side, by the inference manager (the GPU's owner)."""

from __future__ import annotations

import asyncio
import io
from typing import TYPE_CHECKING

import discord

from bot.delivery import retrying
from bot.progress import fit_image

from ._grid import picture_png
from ._views import job_embed

if TYPE_CHECKING:
    from ._cog import Imagine


async def on_upscale(cog: Imagine, interaction: discord.Interaction, job_id: str, index: int) -> None:
    """Picture `index` of the job (0: the whole result), upscaled ×2; the message says how."""
    entry = cog._entry(job_id)
    png = await asyncio.to_thread(picture_png, entry, index)
    await interaction.response.defer(thinking=True)
    up = await cog.bot.manager.upscale(png)
    limit = getattr(interaction, "attachment_size_limit", None) or 8 * 2**20
    suffix = f"-{index}" if index else ""
    data, name = await asyncio.to_thread(fit_image, up.png, limit, f"iris-{job_id}{suffix}-x2.png")
    embed = job_embed(f"Upscaled to {up.width}×{up.height}", entry.request.prompt[:1000], method=up.label)
    embed.set_image(url=f"attachment://{name}")
    await retrying(lambda: interaction.followup.send(embed=embed, file=discord.File(io.BytesIO(data), name)))
