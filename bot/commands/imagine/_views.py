"""What /imagine shows: embeds, thread names, and the buttons that keep working after a restart."""

from __future__ import annotations

import re
import unicodedata
from typing import Any, ClassVar

import discord

from bot.errors import reply_error
from bot.progress import View

COLOUR = 0xEB459E
THREAD_NAME_MAX = 100  # Discord's bound on a thread's name
# Letters and symbols that show as nothing: a thread named only with these looks blank.
_BLANK_LOOKING = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def thread_name(prompt: str) -> str:
    """A thread's name from a prompt: without invisible characters (zero-width, direction marks, fillers),
    whitespace collapsed, at most 100 characters; "imagine" when nothing visible is left."""
    visible = "".join(
        " " if ch.isspace() else ch
        for ch in prompt
        if ch.isspace() or (unicodedata.category(ch)[0] not in "CZ" and ch not in _BLANK_LOOKING)
    )
    name = " ".join(visible.split())[:THREAD_NAME_MAX].strip()
    return name or "imagine"


def job_embed(title: str, prompt: str, **fields: str) -> discord.Embed:
    embed = discord.Embed(
        title=title, description=discord.utils.escape_markdown(prompt)[:4000], colour=COLOUR
    )
    for name, value in fields.items():
        embed.add_field(name=name.replace("_", " ").capitalize(), value=value)
    return embed


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"iris:(?P<action>[a-z]+):(?P<job>[0-9a-f]+)"
):
    """A button whose custom id carries the action and the job id, so it works after a restart."""

    LABELS: ClassVar[dict[str, tuple[str, discord.ButtonStyle]]] = {
        "cancel": ("Cancel", discord.ButtonStyle.danger),
        "reroll": ("Re-roll", discord.ButtonStyle.primary),
        "vary": ("Variations", discord.ButtonStyle.secondary),
        "delete": ("Delete", discord.ButtonStyle.danger),
    }

    def __init__(self, action: str, job_id: str) -> None:
        label, style = self.LABELS[action]
        super().__init__(discord.ui.Button(label=label, style=style, custom_id=f"iris:{action}:{job_id}"))
        self.action, self.job_id = action, job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> JobButton:
        return cls(match["action"], match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            cog = interaction.client.get_cog("Imagine")  # type: ignore[attr-defined]
            await getattr(cog, f"on_{self.action}")(interaction, self.job_id)
        except Exception as e:
            await reply_error(interaction, e)


def buttons(job_id: str, *actions: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in actions:
        view.add_item(JobButton(action, job_id))
    return view


def result_embed(
    prompt: str, seed: int | None, steps: int, clip_score: float | None, reduced: str | None
) -> discord.Embed:
    fields = {"seed": str(seed), "steps": str(steps), "clip_score": f"{clip_score or 0.0:.3f}"}
    if reduced:
        fields["note"] = f"Reduced to fit memory: {reduced}"
    return job_embed(prompt[:256], "", **fields)


def final_view(job_id: str, embed: discord.Embed, png: bytes, count: int = 1) -> View:
    """The finished picture with its buttons; a four-up grid (`count` > 1) gets U1–U4 and V1–V4."""
    from ._grid import PictureButton, grid_buttons

    if count > 1:
        buttons_ = grid_buttons(job_id, count)
    else:
        buttons_ = buttons(job_id, "reroll", "vary", "delete")
        buttons_.add_item(PictureButton("x", 0, job_id))
    return View(embed=embed, image=png, filename=f"iris-{job_id}.png", view=buttons_)
