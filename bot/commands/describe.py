"""/describe and the "Describe" message command: what an image shows, in phrases, and a prompt to reuse."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import IrisBot
from bot.commands.classify import bar
from bot.delivery import retrying
from bot.errors import reply_error
from iris.errors import BadImage
from iris.images import ImageLimits, check_size, image_name, looks_like_image
from iris.service.results import Description

COLOUR = 0x57F287


def describe_embed(found: Description, image_url: str | None) -> discord.Embed:
    lines = [
        f"`{bar(p.score)}` **{p.score * 100:5.1f}%** {discord.utils.escape_markdown(p.text)} *({p.category})*"
        for p in found.phrases
    ]
    embed = discord.Embed(title="What I see", description="\n".join(lines), colour=COLOUR)
    embed.add_field(name="Prompt for /imagine", value=f"`{found.prompt[:1000]}`", inline=False)
    if image_url:
        embed.set_thumbnail(url=image_url)
    return embed


class Describe(commands.Cog):
    def __init__(self, bot: IrisBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name="Describe", callback=self.describe_message)
        bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    async def _run(
        self,
        interaction: discord.Interaction,
        attachment: discord.Attachment,
        top_k: int | None,
        public: bool,
    ) -> None:
        cfg = self.bot.config.images
        check_size(
            attachment.size, ImageLimits(cfg.max_bytes, cfg.max_pixels), image_name(attachment.filename)
        )
        await interaction.response.defer(thinking=True, ephemeral=not public)
        data = await attachment.read()
        found = await self.bot.manager.describe(data, top_k=top_k or 5)
        embed = describe_embed(found, attachment.url)
        await retrying(lambda: interaction.followup.send(embed=embed, ephemeral=not public))

    @app_commands.command(name="describe", description="Tell what an image shows, and a prompt to draw it")
    @app_commands.describe(
        image="the image to describe",
        top_k="how many phrases to show",
        public="show the answer to everyone (default: only you)",
    )
    async def describe(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        top_k: app_commands.Range[int, 1, 10] | None = None,
        public: bool = False,
    ) -> None:
        await self._run(interaction, image, top_k, public)

    async def describe_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        try:
            images = [a for a in message.attachments if looks_like_image(a.filename, a.content_type)]
            if not images:
                raise BadImage("that message has no image attachment to describe")
            await self._run(interaction, images[0], None, False)
        except Exception as e:  # context menus report through the same path as slash commands
            await reply_error(interaction, e)


async def setup(bot: IrisBot) -> None:
    await bot.add_cog(Describe(bot))
