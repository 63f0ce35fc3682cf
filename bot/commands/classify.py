"""/classify and the "Classify image" message command: CLIP zero-shot labels for an image."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import IrisBot
from bot.attachments import read_capped
from bot.delivery import retrying
from bot.errors import reply_error
from iris.errors import BadImage
from iris.images import ImageLimits, check_size, image_name, looks_like_image
from iris.labels import check_labels, parse_labels
from iris.service.results import Prediction

log = logging.getLogger(__name__)


def bar(p: float, width: int = 12) -> str:
    full = round(p * width)
    return "█" * full + "░" * (width - full)


def result_embed(preds: list[Prediction], threshold: float, image_url: str | None) -> discord.Embed:
    lines = [
        f"`{bar(p.probability)}` **{p.probability * 100:5.1f}%** {discord.utils.escape_markdown(p.label)}"
        for p in preds
    ]
    embed = discord.Embed(title="Classification", description="\n".join(lines), colour=0x5865F2)
    if preds and preds[0].probability < threshold:
        embed.add_field(
            name="Note",
            value=f"None of these labels fits well (the best is "
            f"{preds[0].probability * 100:.0f}%). Try other labels.",
        )
    if image_url:
        embed.set_thumbnail(url=image_url)
    return embed


class Classify(commands.Cog):
    def __init__(self, bot: IrisBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name="Classify image", callback=self.classify_message)
        bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    def _labels(self, text: str | None, guild_id: int | None) -> list[str]:
        cfg = self.bot.config
        if text is None or not text.strip():
            labels = self.bot.guild_config(guild_id).default_labels or list(cfg.classify.default_labels)
        else:
            labels = parse_labels(text)
        return check_labels(labels, cfg.classify.max_labels, cfg.classify.max_label_chars)

    async def _run(
        self,
        interaction: discord.Interaction,
        attachment: discord.Attachment,
        labels: list[str],
        top_k: int | None,
    ) -> None:
        """Defer (privately when the person chose /settings me private_classify), classify, answer."""
        private = (await self.bot.user_settings(interaction.user.id)).private_classify
        await interaction.response.defer(thinking=True, ephemeral=private)
        cfg = self.bot.config.images
        name = image_name(attachment.filename)
        check_size(attachment.size, ImageLimits(cfg.max_bytes, cfg.max_pixels), name)
        data = await read_capped(attachment.url, cfg.max_bytes, name)  # a declared size can be wrong
        preds = await self.bot.manager.classify(data, labels, top_k=top_k)
        embed = result_embed(preds, self.bot.config.discord.none_threshold, attachment.url)
        await retrying(lambda: interaction.followup.send(embed=embed, ephemeral=private))

    @app_commands.command(name="classify", description="Label an image with CLIP against labels you give")
    @app_commands.describe(
        image="the image to classify",
        labels='comma-separated labels, e.g. "cat, dog, a person" (quotes keep commas)',
        top_k="how many labels to show",
    )
    async def classify(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        labels: str | None = None,
        top_k: app_commands.Range[int, 1, 10] | None = None,
    ) -> None:
        chosen = self._labels(labels, interaction.guild_id)  # cheap checks answer privately, before deferring
        await self._run(interaction, image, chosen, top_k)

    async def classify_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        try:
            images = [a for a in message.attachments if looks_like_image(a.filename, a.content_type)]
            if not images:
                raise BadImage("that message has no image attachment to classify")
            labels = self._labels(None, interaction.guild_id)
            await self._run(interaction, images[0], labels, None)
        except Exception as e:  # context menus report through the same path as slash commands
            await reply_error(interaction, e)


async def setup(bot: IrisBot) -> None:
    await bot.add_cog(Classify(bot))
