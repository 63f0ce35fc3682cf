"""/imagine: VQGAN+CLIP generation with a live queue position, progress previews and persistent buttons."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from typing import Any, ClassVar

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import IrisBot
from bot.commands.status import fmt_eta
from bot.errors import Refused, reply_error
from bot.progress import ProgressMessage, View
from iris.errors import BadImage
from iris.images import human_bytes
from iris.request import ImagineRequest
from models.events import Cancelled, Done, Failed, Progress, Queued, Started
from models.handle import JobHandle

log = logging.getLogger(__name__)

COLOUR = 0xEB459E


def _embed(title: str, prompt: str, **fields: str) -> discord.Embed:
    embed = discord.Embed(
        title=title, description=discord.utils.escape_markdown(prompt)[:4000], colour=COLOUR
    )
    for name, value in fields.items():
        embed.add_field(name=name.replace("_", " ").capitalize(), value=value)
    return embed


def _bot(interaction: discord.Interaction) -> IrisBot:
    client = interaction.client
    assert isinstance(client, IrisBot)
    return client


def _cog(interaction: discord.Interaction) -> Imagine:
    cog = _bot(interaction).get_cog("Imagine")
    assert isinstance(cog, Imagine)
    return cog


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
            await getattr(_cog(interaction), f"on_{self.action}")(interaction, self.job_id)
        except Exception as e:
            await reply_error(interaction, e)


def buttons(job_id: str, *actions: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in actions:
        view.add_item(JobButton(action, job_id))
    return view


class Imagine(commands.Cog):
    def __init__(self, bot: IrisBot) -> None:
        self.bot = bot
        self.tasks: set[asyncio.Task[None]] = set()
        self._resumed = False
        self._banned = [re.compile(p, re.I) for p in bot.config.discord.banned_prompts]

    async def cog_unload(self) -> None:
        for task in self.tasks:
            task.cancel()

    async def drain(self, timeout: float) -> None:
        """Wait (up to `timeout` s) for the messages of ended jobs to be sent."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout)

    # -- the command ---------------------------------------------------------------------------------
    @app_commands.command(name="imagine", description="Dream up a picture from a prompt (VQGAN+CLIP)")
    @app_commands.describe(
        prompt='what to draw; weighted parts with "|": "a watercolor fox:1 | blurry:-0.5"',
        steps="optimisation steps (more: slower, more detailed)",
        seed="random seed (same seed and settings: same picture)",
        aspect="picture shape",
        init_image="start from this picture instead of noise",
        generator="vqgan (default) or pixels",
    )
    @app_commands.choices(
        aspect=[app_commands.Choice(name=n, value=n) for n in ("square", "landscape", "portrait")],
        generator=[app_commands.Choice(name=n, value=n) for n in ("vqgan", "pixels")],
    )
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: str,
        steps: app_commands.Range[int, 1, 10_000] | None = None,
        seed: app_commands.Range[int, 0, 2**53] | None = None,
        aspect: str | None = None,
        init_image: discord.Attachment | None = None,
        generator: str | None = None,
    ) -> None:
        self.check_allowed(interaction, prompt)
        size = self._size(aspect)
        request = self.bot.manager.engine.request(
            prompt, steps=steps, seed=seed, width=size[0], height=size[1], generator=generator
        )  # validates: answers privately before deferring
        await interaction.response.defer(thinking=True)
        if init_image is not None:
            if init_image.size > self.bot.config.images.max_bytes:
                raise BadImage(
                    f"{init_image.filename} is too large: {human_bytes(init_image.size)} "
                    f"(the limit is {human_bytes(self.bot.config.images.max_bytes)})"
                )
            request = dataclasses.replace(request, init_image=await init_image.read())
        await self.submit(interaction, request)

    def check_allowed(self, interaction: discord.Interaction, prompt: str) -> None:
        for pattern in self._banned:
            if pattern.search(prompt):
                raise Refused("Sorry, I can't draw that here. Please try a different prompt.")
        allowed = self.bot.guild_config(interaction.guild_id).imagine_channels
        channel = interaction.channel
        if allowed and channel is not None:
            ids = {str(channel.id), str(getattr(channel, "parent_id", None))}
            if not ids & set(allowed):
                mentions = ", ".join(f"<#{c}>" for c in allowed)
                raise Refused(f"/imagine works in {mentions} on this server.")

    def _size(self, aspect: str | None) -> tuple[int, int]:
        im = self.bot.config.imagine
        w, h = im.width, im.height
        if aspect == "landscape":
            return w, h * 3 // 4
        if aspect == "portrait":
            return w * 3 // 4, h
        return w, h

    async def submit(self, interaction: discord.Interaction, request: ImagineRequest) -> None:
        """Queue the job (after defer) and follow it in the interaction's message."""
        cap = self.bot.guild_config(interaction.guild_id).max_queued_per_user
        meta = {
            "channel": str(interaction.channel_id),
            "guild": str(interaction.guild_id or ""),
            "user": str(interaction.user.id),
        }
        handle = self.bot.manager.imagine(
            request, owner=str(interaction.user.id), meta=meta, max_queued_per_user=cap
        )
        channel = interaction.channel
        assert isinstance(channel, discord.abc.Messageable)
        progress = ProgressMessage(
            interaction,
            channel,
            self.bot.config.discord.edits_per_window,
            self.bot.config.discord.edit_window_s,
        )
        if self.bot.config.discord.thread_per_job and isinstance(channel, discord.TextChannel):
            original = await interaction.edit_original_response(
                embed=_embed("Working on it in the thread below", request.prompt)
            )
            thread = await original.create_thread(name=request.prompt[:90] or "imagine")
            progress = ProgressMessage(
                None, thread, self.bot.config.discord.edits_per_window, self.bot.config.discord.edit_window_s
            )
        self.follow(handle, progress)

    def follow(self, handle: JobHandle, progress: ProgressMessage) -> None:
        task = asyncio.create_task(self._follow(handle, progress), name=f"iris-imagine-{handle.id}")
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("following a generation failed", exc_info=task.exception())

    async def _follow(self, handle: JobHandle, progress: ProgressMessage) -> None:
        progress.start()
        prompt, jid = handle.request.prompt, handle.id
        cancel = buttons(jid, "cancel")
        async for ev in handle.events():
            if isinstance(ev, Queued):
                progress.show(
                    View(
                        embed=_embed("Queued", prompt, position=f"#{ev.position}", eta=fmt_eta(ev.eta_s)),
                        view=cancel,
                    )
                )
            elif isinstance(ev, Started):
                note = {"reduced": ev.reduced} if ev.reduced else {}
                progress.show(
                    View(
                        embed=_embed(
                            "Starting…", prompt, seed=str(ev.seed), size=f"{ev.width}×{ev.height}", **note
                        ),
                        view=cancel,
                    )
                )
            elif isinstance(ev, Progress) and ev.preview_png is not None:
                progress.show(
                    View(
                        embed=_embed(f"Imagining… step {ev.step}/{ev.total}", prompt, eta=fmt_eta(ev.eta_s)),
                        image=ev.preview_png,
                        view=cancel,
                    )
                )
            elif isinstance(ev, Done):
                extra = {"note": f"Reduced to fit memory: {ev.reduced}"} if ev.reduced else {}
                embed = _embed(
                    prompt[:256],
                    "",
                    seed=str(ev.seed),
                    steps=str(ev.steps),
                    clip_score=f"{ev.clip_score:.3f}",
                    **extra,
                )
                await progress.finish(
                    View(
                        embed=embed,
                        image=ev.png(),
                        filename=f"iris-{jid}.png",
                        view=buttons(jid, "reroll", "vary", "delete"),
                    )
                )
            elif isinstance(ev, Failed):
                await progress.finish(
                    View(
                        embed=_embed("Couldn't finish", prompt, reason=ev.error.message),
                        view=discord.ui.View(),
                    )
                )
            elif isinstance(ev, Cancelled):
                title = "Cancelled" if ev.reason == "cancelled" else "Paused: the bot is restarting"
                await progress.finish(View(embed=_embed(title, prompt), view=discord.ui.View()))

    # -- buttons ---------------------------------------------------------------------------------------
    def _entry(self, job_id: str) -> Any:
        entry = self.bot.manager.journal.get(job_id)
        if entry is None:
            raise Refused("I no longer know this job.")
        return entry

    async def on_cancel(self, interaction: discord.Interaction, job_id: str) -> None:
        entry = self._entry(job_id)
        if entry.owner != str(interaction.user.id):
            raise Refused("Only the person who asked for this picture can cancel it.")
        if not self.bot.manager.cancel(job_id):
            raise Refused("This job has already finished.")
        await interaction.response.send_message("Cancelling…", ephemeral=True)

    async def on_reroll(self, interaction: discord.Interaction, job_id: str) -> None:
        entry = self._entry(job_id)
        self.check_allowed(interaction, entry.request.prompt)
        await interaction.response.defer(thinking=True)
        await self.submit(interaction, dataclasses.replace(entry.request, seed=None))

    async def on_vary(self, interaction: discord.Interaction, job_id: str) -> None:
        entry = self._entry(job_id)
        self.check_allowed(interaction, entry.request.prompt)
        message = interaction.message
        if message is None or not message.attachments:
            raise Refused("This message has no picture to vary.")
        await interaction.response.defer(thinking=True)
        data = await message.attachments[0].read()
        await self.submit(interaction, dataclasses.replace(entry.request, seed=None, init_image=data))

    async def on_delete(self, interaction: discord.Interaction, job_id: str) -> None:
        entry = self._entry(job_id)
        perms = getattr(interaction, "permissions", None)
        is_mod = bool(perms and perms.manage_messages)
        if entry.owner != str(interaction.user.id) and not is_mod:
            raise Refused("Only the person who asked for this picture, or a moderator, can delete it.")
        if interaction.message is None:
            raise Refused("That message is gone already.")
        await interaction.response.defer(ephemeral=True)
        await interaction.message.delete()

    # -- after a restart ---------------------------------------------------------------------------------
    @commands.Cog.listener()
    async def on_ready(self) -> None:
        if self._resumed:
            return
        self._resumed = True
        for entry in self.bot.manager.unfinished():
            channel = self.bot.get_channel(int(entry.meta.get("channel") or 0))
            if not isinstance(channel, discord.abc.Messageable):
                self.bot.manager.discard(entry)
                continue
            try:
                handle = self.bot.manager.resubmit(entry)
            except Exception as e:
                log.warning("could not resume job %s: %s", entry.id, e)
                self.bot.manager.discard(entry)
                continue
            message = await channel.send(embed=_embed("Resuming after a restart", entry.request.prompt))
            progress = ProgressMessage(
                None,
                channel,
                self.bot.config.discord.edits_per_window,
                self.bot.config.discord.edit_window_s,
                message=message,
            )
            self.follow(handle, progress)


async def setup(bot: IrisBot) -> None:
    bot.add_dynamic_items(JobButton)
    await bot.add_cog(Imagine(bot))
