"""/find: search a server's images by description, privately; see _cog (commands), _scan (indexing),
_download (which images a message shows; fetches from Discord's media hosts only), _render (thumbnails,
grids), _views (buttons), _tasks (background tasks)."""

from __future__ import annotations

from bot.app import IrisBot
from bot.find._cog import Find
from bot.find._views import BUTTONS


async def setup(bot: IrisBot) -> None:
    bot.add_dynamic_items(*BUTTONS)
    await bot.add_cog(Find(bot))
