"""/imagine: VQGAN+CLIP generation with a live queue position, progress previews and persistent buttons.

`_cog` holds the command and its buttons' handlers, `_views` what the messages show, `_restart` what
happens to the last run's jobs when the bot starts again.
"""

from __future__ import annotations

from bot.app import IrisBot

from ._cog import Imagine
from ._grid import PictureButton
from ._views import JobButton

__all__ = ["Imagine", "JobButton", "PictureButton", "setup"]


async def setup(bot: IrisBot) -> None:
    bot.add_dynamic_items(JobButton, PictureButton)
    await bot.add_cog(Imagine(bot))
