"""The /imagine command and its buttons: queue a job, follow it in one message, deliver its picture."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import IrisBot
from bot.attachments import check_declared, read_image
from bot.commands.status import fmt_eta
from bot.delivery import why_not
from bot.errors import Refused
from bot.progress import ProgressMessage, Requester, View
from iris.errors import BadRequest, IrisError
from iris.images import ImageLimits
from iris.prompts import MAX_WEIGHT
from iris.request import ASPECTS, GENERATORS, PROFILES, ImagineRequest
from iris.service.events import Cancelled, Done, Failed, Progress, Queued, Started
from iris.service.handle import JobHandle
from iris.settings import banned_pattern

from ._restart import after_restart
from ._views import buttons, final_view, job_embed, result_embed, thread_name

log = logging.getLogger(__name__)


class Imagine(commands.Cog):
    def __init__(self, bot: IrisBot) -> None:
        self.bot = bot
        self.tasks: set[asyncio.Task[None]] = set()
        self._resumed = False

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
        count="4: four variations (different seeds) in one 2×2 grid, with U1–U4 and V1–V4 buttons",
        profile="cutout recipe: classic (the reference scripts'), iris (lighter) or none",
        image_prompt="a picture to steer towards, like a prompt part",
        image_weight="how strongly to steer towards image_prompt (negative: away); default 1",
    )
    @app_commands.choices(
        aspect=[app_commands.Choice(name=n, value=n) for n in ASPECTS],
        generator=[app_commands.Choice(name=n, value=n) for n in GENERATORS],
        profile=[app_commands.Choice(name=n, value=n) for n in PROFILES],
    )
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: str,
        steps: app_commands.Range[int, 1, 10_000] | None = None,
        seed: app_commands.Range[int, 0, 2**53 - 1] | None = None,  # Discord's bound on integer options
        aspect: str | None = None,
        init_image: discord.Attachment | None = None,
        generator: str | None = None,
        count: Literal[1, 4] | None = None,
        profile: str | None = None,
        image_prompt: discord.Attachment | None = None,
        image_weight: app_commands.Range[float, -MAX_WEIGHT, MAX_WEIGHT] | None = None,
    ) -> None:
        self.check_allowed(interaction, prompt)
        mine = await self.bot.user_settings(interaction.user.id)  # /settings me: what was not said here
        size = self._size(aspect or mine.aspect)
        request = self.bot.manager.make_request(
            prompt,
            steps=steps or mine.steps,
            seed=seed,
            width=size[0],
            height=size[1],
            generator=generator or mine.generator,
            count=count,
            profile=profile or mine.profile,
        )  # validates: answers privately before deferring
        if image_prompt is None and image_weight is not None:
            raise BadRequest("image_weight goes with an image_prompt")
        weight = 1.0 if image_weight is None else image_weight
        steer = (image_prompt, weight) if image_prompt is not None else None
        await self.defer_and_submit(interaction, request, init_image, steer)

    def _image_limits(self) -> ImageLimits:
        cfg = self.bot.config.images
        return ImageLimits(cfg.max_bytes, cfg.max_pixels)

    def check_allowed(self, interaction: discord.Interaction, prompt: str) -> None:
        gcfg = self.bot.guild_config(interaction.guild_id)
        if any(banned_pattern(p).search(prompt) for p in gcfg.banned_prompts):
            raise Refused("Sorry, I can't draw that here. Please try a different prompt.")
        allowed = gcfg.imagine_channels
        channel = interaction.channel
        if allowed and channel is not None:
            ids = {str(channel.id), str(getattr(channel, "parent_id", None))}
            if not ids & set(allowed):
                mentions = ", ".join(f"<#{c}>" for c in allowed)
                raise Refused(f"/imagine works in {mentions} on this server.")

    def _size(self, aspect: str | None) -> tuple[int, int]:
        # The default size is the one in force where the models run (`auto` depends on the device there).
        default = self.bot.manager.make_request("a picture")
        w, h = default.width, default.height
        if aspect == "landscape":
            return w, h * 3 // 4
        if aspect == "portrait":
            return w * 3 // 4, h
        return w, h

    async def defer_and_submit(
        self,
        interaction: discord.Interaction,
        request: ImagineRequest,
        init_image: discord.Attachment | None = None,
        image_prompt: tuple[discord.Attachment, float] | None = None,
    ) -> None:
        """Defer, then queue. Attachments' declared sizes are checked before deferring (no download);
        their bytes are read after (a slow download must not pass Discord's 3 s), capped and decoded; an
        error then removes the public "thinking…" and is answered privately (bot/errors.py)."""
        for attachment in (init_image, image_prompt and image_prompt[0]):
            if attachment is not None:
                check_declared(attachment, self._image_limits())
        response = await interaction.response.defer(thinking=True)
        if init_image is not None:
            data = await read_image(init_image, self._image_limits())
            request = dataclasses.replace(request, init_image=data)
        if image_prompt is not None:
            data = await read_image(image_prompt[0], self._image_limits())
            request = dataclasses.replace(request, image_prompts=((data, image_prompt[1]),))
        await self.submit(interaction, request, getattr(response, "message_id", None))

    async def submit(
        self, interaction: discord.Interaction, request: ImagineRequest, original_id: int | None
    ) -> None:
        """Queue the job (after defer) and follow it in the interaction's message, or in a thread.

        The place that will show the job exists before the job is queued; if following it fails after
        queueing, the job is cancelled (it would hold the person's slot with nowhere to go).
        """
        cap = self.bot.guild_config(interaction.guild_id).max_queued_per_user
        channel = interaction.channel
        assert isinstance(channel, discord.abc.Messageable)
        discord_cfg = self.bot.config.discord
        meta = {
            "channel": str(interaction.channel_id),
            "guild": str(interaction.guild_id or ""),
            "user": str(interaction.user.id),
            "message": str(original_id or ""),
        }
        requester = self.requester(interaction.user.id)
        progress = ProgressMessage(
            interaction, channel, discord_cfg.edits_per_window, discord_cfg.edit_window_s, requester=requester
        )
        if discord_cfg.thread_per_job and isinstance(channel, discord.TextChannel):
            try:
                original = await interaction.edit_original_response(
                    embed=job_embed("Working on it in the thread below", request.prompt)
                )
                thread = await original.create_thread(name=thread_name(request.prompt))
                first = await thread.send(embed=job_embed("Queued", request.prompt))
            except discord.HTTPException as e:
                missing = e.code in (50001, 50013)
                why = (
                    "I need the Create Public Threads and Send Messages in Threads permissions"
                    if missing
                    else why_not(e)
                )
                raise Refused(f"I can't start a thread for this picture here: {why}.") from e
            meta.update(channel=str(thread.id), message=str(first.id))
            progress = ProgressMessage(
                None,
                thread,
                discord_cfg.edits_per_window,
                discord_cfg.edit_window_s,
                message=first,
                requester=requester,
            )
        try:
            handle = self.bot.manager.imagine(
                request, owner=str(interaction.user.id), meta=meta, max_queued_per_user=cap
            )
        except IrisError:
            if progress.message is not None:  # the thread's first message must not promise a picture
                with contextlib.suppress(discord.HTTPException):
                    await progress.message.edit(embed=job_embed("Not queued", request.prompt))
            raise
        try:
            self.follow(handle, progress)
        except BaseException:
            handle.cancel()
            raise

    def requester(self, user_id: int) -> Requester:
        async def open_dm() -> discord.abc.Messageable:
            user = self.bot.get_user(user_id) or await self.bot.fetch_user(user_id)
            return await user.create_dm()

        return open_dm

    def follow(self, handle: JobHandle, progress: ProgressMessage) -> None:
        self._spawn(self._follow(handle, progress), f"iris-imagine-{handle.id}")

    def _spawn(self, work: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("following a generation failed", exc_info=task.exception())

    async def _follow(self, handle: JobHandle, progress: ProgressMessage) -> None:
        progress.start()
        try:
            await self._follow_events(handle, progress)
        finally:  # ended without a final state (an error, a cancel): its edit task ends with it
            progress.close()

    async def _follow_events(self, handle: JobHandle, progress: ProgressMessage) -> None:
        prompt, jid = handle.request.prompt, handle.id
        cancel = buttons(jid, "cancel")
        async for ev in handle.events():
            if isinstance(ev, Queued):
                progress.show(
                    View(
                        embed=job_embed("Queued", prompt, position=f"#{ev.position}", eta=fmt_eta(ev.eta_s)),
                        view=cancel,
                    )
                )
            elif isinstance(ev, Started):
                note = {"reduced": ev.reduced} if ev.reduced else {}
                progress.show(
                    View(
                        embed=job_embed(
                            "Starting…", prompt, seed=str(ev.seed), size=f"{ev.width}×{ev.height}", **note
                        ),
                        view=cancel,
                    )
                )
            elif isinstance(ev, Progress) and ev.preview_png is not None:
                progress.show(
                    View(
                        embed=job_embed(
                            f"Imagining… step {ev.step}/{ev.total}", prompt, eta=fmt_eta(ev.eta_s)
                        ),
                        image=ev.preview_png,
                        view=cancel,
                    )
                )
            elif isinstance(ev, Done):
                shown = result_embed(prompt, ev.seed, ev.steps, ev.clip_score, ev.reduced)
                await self.deliver(jid, progress, final_view(jid, shown, ev.png(), handle.request.count))
            elif isinstance(ev, Failed):
                # The reason goes to the requester only: an error is never public.
                await progress.finish(
                    View(embed=job_embed("Couldn't finish", prompt), view=discord.ui.View())
                )
                await progress.tell(f"Your picture “{prompt[:200]}” couldn't be finished: {ev.error.message}")
            elif isinstance(ev, Cancelled):
                title = "Cancelled" if ev.reason == "cancelled" else "Paused: the bot is restarting"
                await progress.finish(
                    View(embed=job_embed(title, prompt), view=discord.ui.View()), fallback=False
                )

    async def deliver(self, job_id: str, progress: ProgressMessage, view: View) -> None:
        """The finished picture: once it has landed somewhere, the journal says so (no redelivery)."""
        delivery = await progress.finish(view)
        if delivery.landed:
            self.bot.manager.mark_delivered(job_id)
        else:
            log.warning("job %s: the picture could not be delivered; a restart will try again", job_id)

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
        await self.defer_and_submit(interaction, dataclasses.replace(entry.request, seed=None))

    async def on_vary(self, interaction: discord.Interaction, job_id: str) -> None:
        entry = self._entry(job_id)
        self.check_allowed(interaction, entry.request.prompt)
        message = interaction.message
        if message is None or not message.attachments:
            raise Refused("This message has no picture to vary.")
        await self.defer_and_submit(
            interaction, dataclasses.replace(entry.request, seed=None), message.attachments[0]
        )

    async def on_delete(self, interaction: discord.Interaction, job_id: str) -> None:
        entry = self._entry(job_id)
        perms = getattr(interaction, "permissions", None)
        is_mod = bool(perms and perms.manage_messages)
        if entry.owner != str(interaction.user.id) and not is_mod:
            raise Refused("Only the person who asked for this picture, or a moderator, can delete it.")
        if interaction.message is None:
            raise Refused("That message is gone already.")
        await interaction.response.defer(ephemeral=True)
        try:
            await interaction.message.delete()
        except discord.NotFound:  # someone else deleted it first (Unknown Message)
            await interaction.followup.send("That message is already deleted.", ephemeral=True)

    # -- after a restart ---------------------------------------------------------------------------------
    @commands.Cog.listener()
    async def on_ready(self) -> None:
        if self._resumed:
            return
        self._resumed = True
        self._spawn(after_restart(self), "iris-after-restart")
