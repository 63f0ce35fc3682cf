"""/find's buttons. Each is persistent: its state is in the custom id (the saved query's id and the page),
so it works after a restart; the cog decides who may press it (only the person who searched)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.errors import reply_error

if TYPE_CHECKING:
    from bot.find._cog import Find


def _cog(interaction: discord.Interaction) -> Find:
    from bot.find._cog import Find  # the cog imports this module: resolved at press time

    client = interaction.client
    cog = client.get_cog("Find") if isinstance(client, commands.Bot) else None
    if not isinstance(cog, Find):
        raise RuntimeError("the Find cog is not loaded")
    return cog


class FindButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"iris:find:(?P<fid>[0-9a-f]+):(?P<page>\d+)(?::(?P<n>\d+))?",
):
    """ "Next page" (no n) or "More like #n"; the query lives in the index, so it survives restarts."""

    def __init__(self, fid: str, page: int, n: int | None = None) -> None:
        label = "Next page" if n is None else f"More like #{n}"
        custom = f"iris:find:{fid}:{page}" + ("" if n is None else f":{n}")
        style = discord.ButtonStyle.primary if n is None else discord.ButtonStyle.secondary
        super().__init__(discord.ui.Button(label=label, style=style, custom_id=custom))
        self.fid, self.page, self.n = fid, page, n

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> FindButton:
        return cls(match["fid"], int(match["page"]), int(match["n"]) if match["n"] else None)

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await _cog(interaction).on_more(interaction, self.fid, self.page, self.n)
        except Exception as e:
            await reply_error(interaction, e)


class ShareButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"iris:find-share:(?P<fid>[0-9a-f]+):(?P<page>\d+)",
):
    """Posts, for everyone in this channel, the hits of this page that come from this channel."""

    def __init__(self, fid: str, page: int) -> None:
        custom = f"iris:find-share:{fid}:{page}"
        super().__init__(
            discord.ui.Button(label="Share", style=discord.ButtonStyle.success, custom_id=custom)
        )
        self.fid, self.page = fid, page

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ShareButton:
        return cls(match["fid"], int(match["page"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await _cog(interaction).on_share(interaction, self.fid, self.page)
        except Exception as e:
            await reply_error(interaction, e)


class RefreshButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"iris:find-refresh:(?P<fid>[0-9a-f]+):(?P<page>\d+)",
):
    """While indexing continues: the same search again, over what is indexed now, in place."""

    def __init__(self, fid: str, page: int) -> None:
        custom = f"iris:find-refresh:{fid}:{page}"
        super().__init__(
            discord.ui.Button(label="Refresh", style=discord.ButtonStyle.secondary, custom_id=custom)
        )
        self.fid, self.page = fid, page

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> RefreshButton:
        return cls(match["fid"], int(match["page"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await _cog(interaction).on_refresh(interaction, self.fid, self.page)
        except Exception as e:
            await reply_error(interaction, e)


BUTTONS = (FindButton, ShareButton, RefreshButton)
