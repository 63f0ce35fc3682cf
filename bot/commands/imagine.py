"""/imagine: VQGAN+CLIP generation with a live queue position, progress previews and persistent buttons."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import unicodedata
from typing import Any, ClassVar

import discord
from discord import app_commands
from discord.ext import commands

from bot.app import IrisBot
from bot.commands.status import fmt_eta
from bot.delivery import why_not
from bot.errors import Refused, reply_error
from bot.progress import ProgressMessage, Requester, View
from iris.images import ImageLimits, check_size, image_name, load_image
from iris.request import ImagineRequest
from models.events import Cancelled, Done, Failed, Progress, Queued, Started
from models.handle import JobHandle
from models.journal import JournalEntry

log = logging.getLogger(__name__)

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
        seed: app_commands.Range[int, 0, 2**53 - 1] | None = None,  # Discord's bound on integer options
        aspect: str | None = None,
        init_image: discord.Attachment | None = None,
        generator: str | None = None,
    ) -> None:
        self.check_allowed(interaction, prompt)
        size = self._size(aspect)
        request = self.bot.manager.engine.request(
            prompt, steps=steps, seed=seed, width=size[0], height=size[1], generator=generator
        )  # validates: answers privately before deferring
        if init_image is not None:  # so is the init image: an error after deferring would be public
            request = dataclasses.replace(request, init_image=await self._init_image(init_image))
        await self.defer_and_submit(interaction, request)

    async def _init_image(self, attachment: discord.Attachment) -> bytes:
        """The attachment's bytes, once they decode as an image within the limits (else BadImage)."""
        cfg = self.bot.config.images
        limits = ImageLimits(cfg.max_bytes, cfg.max_pixels)
        check_size(attachment.size, limits, image_name(attachment.filename))
        data = await attachment.read()
        await asyncio.to_thread(load_image, data, limits, attachment.filename)
        return data

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

    async def defer_and_submit(self, interaction: discord.Interaction, request: ImagineRequest) -> None:
        response = await interaction.response.defer(thinking=True)
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
        requester = self._requester(interaction.user.id)
        progress = ProgressMessage(
            interaction, channel, discord_cfg.edits_per_window, discord_cfg.edit_window_s, requester=requester
        )
        if discord_cfg.thread_per_job and isinstance(channel, discord.TextChannel):
            try:
                original = await interaction.edit_original_response(
                    embed=_embed("Working on it in the thread below", request.prompt)
                )
                thread = await original.create_thread(name=thread_name(request.prompt))
                first = await thread.send(embed=_embed("Queued", request.prompt))
            except discord.HTTPException as e:
                raise Refused(
                    "I can't start a thread for this picture here (I need Create Public Threads and "
                    f"Send Messages in Threads): {why_not(e)}."
                ) from e
            meta.update(channel=str(thread.id), message=str(first.id))
            progress = ProgressMessage(
                None,
                thread,
                discord_cfg.edits_per_window,
                discord_cfg.edit_window_s,
                message=first,
                requester=requester,
            )
        handle = self.bot.manager.imagine(
            request, owner=str(interaction.user.id), meta=meta, max_queued_per_user=cap
        )
        try:
            self.follow(handle, progress)
        except BaseException:
            handle.cancel()
            raise

    def _requester(self, user_id: int) -> Requester:
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
                embed = result_embed(prompt, ev.seed, ev.steps, ev.clip_score, ev.reduced)
                await self.deliver(jid, progress, final_view(jid, embed, ev.png()))
            elif isinstance(ev, Failed):
                # The reason goes to the requester only: an error is never public.
                await progress.finish(View(embed=_embed("Couldn't finish", prompt), view=discord.ui.View()))
                await progress.tell(f"Your picture “{prompt[:200]}” couldn't be finished: {ev.error.message}")
            elif isinstance(ev, Cancelled):
                title = "Cancelled" if ev.reason == "cancelled" else "Paused: the bot is restarting"
                await progress.finish(
                    View(embed=_embed(title, prompt), view=discord.ui.View()), fallback=False
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
        data = await message.attachments[0].read()
        await self.defer_and_submit(
            interaction, dataclasses.replace(entry.request, seed=None, init_image=data)
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
        await interaction.message.delete()

    # -- after a restart ---------------------------------------------------------------------------------
    @commands.Cog.listener()
    async def on_ready(self) -> None:
        if self._resumed:
            return
        self._resumed = True
        self._spawn(self._after_restart(), "iris-after-restart")

    async def _after_restart(self) -> None:
        """Deliver what the last run made but did not deliver, then resume what it left unfinished.

        Each job on its own: one that fails (a channel that refuses messages, a deleted channel) is logged
        and never stops the others."""
        for entry in self.bot.manager.undelivered():
            try:
                await self._redeliver(entry)
            except Exception:
                log.exception("could not redeliver job %s", entry.id)
        for entry in self.bot.manager.unfinished():
            try:
                await self._resume(entry)
            except Exception:
                log.exception("could not resume job %s", entry.id)

    async def _old_place(self, entry: JournalEntry) -> ProgressMessage | None:
        """A progress message on the job's old message (or in its channel if that is unknown)."""
        channel_id = int(entry.meta.get("channel") or 0)
        channel = self.bot.get_channel(channel_id)
        if channel is None and channel_id:
            try:
                channel = await self.bot.fetch_channel(channel_id)
            except discord.HTTPException:
                channel = None
        if not isinstance(channel, discord.abc.Messageable):
            return None
        message_id = int(entry.meta.get("message") or 0)
        get = getattr(channel, "get_partial_message", None)
        message = get(message_id) if message_id and get is not None else None
        cfg = self.bot.config.discord
        return ProgressMessage(
            None,
            channel,
            cfg.edits_per_window,
            cfg.edit_window_s,
            message=message,
            requester=self._requester(int(entry.owner)),
        )

    async def _redeliver(self, entry: JournalEntry) -> None:
        if entry.result_png is None:
            return
        progress = await self._old_place(entry)
        if progress is None:  # the channel is gone: the picture goes by DM
            progress = ProgressMessage(None, None, 1, 1.0, requester=self._requester(int(entry.owner)))
        embed = result_embed(entry.request.prompt, entry.seed, entry.step, entry.clip_score, entry.reduced)
        await self.deliver(entry.id, progress, final_view(entry.id, embed, entry.result_png))

    async def _resume(self, entry: JournalEntry) -> None:
        progress = await self._old_place(entry)
        if progress is None:
            self.bot.manager.discard(entry)
            return
        handle = self.bot.manager.resubmit(entry)
        resuming = _embed("Resuming after a restart", entry.request.prompt)
        progress.show(View(embed=resuming, view=buttons(entry.id, "cancel")))
        self.follow(handle, progress)


def result_embed(
    prompt: str, seed: int | None, steps: int, clip_score: float | None, reduced: str | None
) -> discord.Embed:
    fields = {"seed": str(seed), "steps": str(steps), "clip_score": f"{clip_score or 0.0:.3f}"}
    if reduced:
        fields["note"] = f"Reduced to fit memory: {reduced}"
    return _embed(prompt[:256], "", **fields)


def final_view(job_id: str, embed: discord.Embed, png: bytes) -> View:
    buttons_ = buttons(job_id, "reroll", "vary", "delete")
    return View(embed=embed, image=png, filename=f"iris-{job_id}.png", view=buttons_)


async def setup(bot: IrisBot) -> None:
    bot.add_dynamic_items(JobButton)
    await bot.add_cog(Imagine(bot))
