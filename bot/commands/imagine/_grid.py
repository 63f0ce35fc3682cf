"""Four-up: the 2×2 grid's buttons (U1–U4 post one picture alone, V1–V4 vary it) and the Upscale button.

Each button's custom id carries the action, the picture's index (0: the whole result) and the job id, and
every answer is made from the journal, so the buttons keep working after a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import re
from typing import TYPE_CHECKING, Any, ClassVar

import discord
from PIL import Image

from bot.delivery import retrying
from bot.errors import Refused, reply_error
from iris.grid import cell, picture_seed
from iris.journal import JournalEntry

from ._views import job_embed

if TYPE_CHECKING:
    from ._cog import Imagine


class PictureButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"iris:(?P<action>[uvx])(?P<index>[0-9]):(?P<job>[0-9a-f]+)",
):
    """u: post picture `index` alone; v: variations of it; x: upscale it (index 0: the whole picture)."""

    STYLES: ClassVar[dict[str, discord.ButtonStyle]] = {
        "u": discord.ButtonStyle.primary,
        "v": discord.ButtonStyle.secondary,
        "x": discord.ButtonStyle.success,
    }

    def __init__(self, action: str, index: int, job_id: str, row: int | None = None) -> None:
        label = "Upscale" if action == "x" else f"{action.upper()}{index}"
        super().__init__(
            discord.ui.Button(
                label=label, style=self.STYLES[action], custom_id=f"iris:{action}{index}:{job_id}", row=row
            )
        )
        self.action, self.index, self.job_id = action, index, job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> PictureButton:
        return cls(match["action"], int(match["index"]), match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        from ._upscale import on_upscale

        handlers = {"u": on_pick, "v": on_vary_one, "x": on_upscale}
        try:
            cog = interaction.client.get_cog("Imagine")  # type: ignore[attr-defined]
            await handlers[self.action](cog, interaction, self.job_id, self.index)
        except Exception as e:
            await reply_error(interaction, e)


def grid_buttons(job_id: str, count: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for row, action in enumerate("uv"):
        for i in range(1, count + 1):
            view.add_item(PictureButton(action, i, job_id, row=row))
    return view


def picture_png(entry: JournalEntry, index: int) -> bytes:
    """The job's picture `index` (0: the whole result) as PNG bytes, from the journal. Blocking."""
    if entry.result_png is None:
        raise Refused("This picture isn't finished yet.")
    if index == 0:
        return entry.result_png
    grid = Image.open(io.BytesIO(entry.result_png))
    buf = io.BytesIO()
    cell(grid, index, entry.request.count).save(buf, format="PNG")
    return buf.getvalue()


async def on_pick(cog: Imagine, interaction: discord.Interaction, job_id: str, index: int) -> None:
    """U: picture `index` alone at full size, with its own Upscale and Variations buttons."""
    entry = cog._entry(job_id)
    png = await asyncio.to_thread(picture_png, entry, index)
    await interaction.response.defer(thinking=True)
    embed = job_embed(
        entry.request.prompt[:256],
        "",
        picture=f"{index} of {entry.request.count}",
        seed=str(None if entry.seed is None else picture_seed(entry.seed, index)),
    )
    name = f"iris-{job_id}-{index}.png"
    embed.set_image(url=f"attachment://{name}")
    view = discord.ui.View(timeout=None)
    view.add_item(PictureButton("x", index, job_id))
    view.add_item(PictureButton("v", index, job_id))
    await retrying(
        lambda: interaction.followup.send(embed=embed, file=discord.File(io.BytesIO(png), name), view=view)
    )


async def on_vary_one(cog: Imagine, interaction: discord.Interaction, job_id: str, index: int) -> None:
    """V: a new job like this one, starting from picture `index` (new seeds)."""
    entry = cog._entry(job_id)
    cog.check_allowed(interaction, entry.request.prompt)
    png = await asyncio.to_thread(picture_png, entry, index)
    await cog.defer_and_submit(interaction, dataclasses.replace(entry.request, seed=None, init_image=png))
