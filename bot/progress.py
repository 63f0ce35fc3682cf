"""The one message a generation shows: edited on a rate budget; its final state always reaches someone.

Discord allows about 5 edits per 5 s per channel; the budget (config) stays under it, and only the latest
state is sent (intermediate previews are dropped). discord.py itself waits out a 429's retry_after and
retries. After the interaction token's 15 minutes (or on an "invalid webhook token" answer), the progress
continues in a normal channel message.

The final state is not a progress edit: it is retried past rate limits (bot/delivery.py), then posted in
the channel, then, for a picture, sent to the requester by DM; if the picture cannot be posted anywhere,
the requester is told why by DM.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import discord
from asyncio_throttle import Throttler
from PIL import Image

from bot.delivery import SEND_ERRORS, TOKEN_GONE, retrying, why_not

log = logging.getLogger(__name__)

TOKEN_LIFE_S = 15 * 60
TOKEN_MARGIN_S = 60  # stop using the token a minute early


@dataclass
class View:
    """What the message should show."""

    content: str | None = None
    embed: discord.Embed | None = None
    image: bytes | None = None  # PNG/JPEG bytes to attach (None: keep no attachment)
    filename: str = "preview.png"
    view: discord.ui.View | None = None
    final: bool = False


@dataclass
class Delivery:
    """Where a final state landed: "original", "message", "channel", "dm", or None (nowhere)."""

    place: str | None
    message: discord.Message | None = None
    failures: list[tuple[str, BaseException]] = field(default_factory=list)  # (place, why) before it

    @property
    def landed(self) -> bool:
        return self.place is not None


Requester = Callable[[], Awaitable[discord.abc.Messageable]]  # opens a DM with the person who asked


def fit_image(data: bytes, limit: int, filename: str) -> tuple[bytes, str]:
    """Re-encode an image that is over `limit` bytes: JPEG first, then smaller, never dropped."""
    if len(data) <= limit:
        return data, filename
    im = Image.open(io.BytesIO(data)).convert("RGB")
    stem = filename.rsplit(".", 1)[0]
    quality = 90
    while True:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        if buf.tell() <= limit or (im.width <= 64 and quality <= 40):
            return buf.getvalue(), f"{stem}.jpg"
        if quality > 60:
            quality -= 15
        else:
            im = im.resize((max(1, im.width * 3 // 4), max(1, im.height * 3 // 4)), Image.Resampling.LANCZOS)


class ProgressMessage:
    """Edits one message (the interaction's original response, or a channel message) on a budget."""

    def __init__(
        self,
        interaction: discord.Interaction | None,
        channel: discord.abc.Messageable | None,  # None: the channel is gone (a picture then goes by DM)
        edits_per_window: int,
        window_s: float,
        message: discord.Message | discord.PartialMessage | None = None,
        requester: Requester | None = None,
        channel_gone: str | None = None,  # with channel None: why, for the requester ("it was deleted")
    ) -> None:
        self.interaction = interaction
        self.channel = channel
        self.message = message
        self.requester = requester
        self.channel_gone = channel_gone
        self._throttle = Throttler(rate_limit=edits_per_window, period=window_s)
        self._latest: View | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.edits = 0
        self._size_limit = getattr(interaction, "attachment_size_limit", None) or 8 * 2**20

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="iris-progress")
        self._task.add_done_callback(_log_failure)

    def close(self) -> None:
        """Stop the progress edits at once (the job's follower ended without a final state, or was
        cancelled): the edit task must not outlive it."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()

    def show(self, view: View) -> None:
        """Ask for `view` to be shown; replaces any state not yet sent."""
        self._latest = view
        self._wake.set()

    async def finish(self, view: View, *, fallback: bool = True) -> Delivery:
        """Stop the progress and deliver the final state (waits until it is sent or clearly cannot be).

        `fallback`: when the message cannot be edited, post the state in the channel, and a picture by DM.
        """
        view.final = True
        self._closed = True
        self._latest = None
        self._wake.set()
        if self._task is not None:
            # An edit in flight ends first, so it cannot overwrite the final state. `wait`, not `await`:
            # whatever ended the progress task (logged by its callback) must not stop the final state.
            await asyncio.wait({self._task})
        async with self._throttle:
            return await self._deliver(view, fallback)

    async def tell(self, text: str) -> bool:
        """Tell the requester `text` privately: an ephemeral followup while the token lives, else a DM."""
        try:
            if self._token_alive():
                assert self.interaction is not None
                await retrying(lambda: self.interaction.followup.send(text, ephemeral=True))  # type: ignore[union-attr]
                return True
        except SEND_ERRORS as e:
            log.info("could not answer privately through the interaction: %r", e)
        if self.requester is None:
            return False
        try:
            dm = await self.requester()
            await retrying(lambda: dm.send(text))
            return True
        except SEND_ERRORS as e:
            log.warning("could not tell the requester privately: %s", e)
            return False

    async def _run(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            async with self._throttle:
                view, self._latest = self._latest, None
                if view is None or self._closed:
                    continue
                try:
                    await self._send(view)
                except Exception as e:  # a progress edit may be dropped; the task must live on
                    log.warning("progress edit failed: %r", e)

    def _token_alive(self) -> bool:
        if self.interaction is None:
            return False
        age = time.time() - self.interaction.created_at.timestamp()
        return age < TOKEN_LIFE_S - TOKEN_MARGIN_S

    def _payload(self, view: View) -> dict[str, Any]:
        """Edit arguments for `view`, with fresh file objects (each send consumes them)."""
        embed = view.embed.copy() if view.embed is not None else None
        files: list[discord.File] = []
        if view.image is not None:
            data, name = fit_image(view.image, self._size_limit, view.filename)
            files = [discord.File(io.BytesIO(data), filename=name)]
            if embed is not None:
                embed.set_image(url=f"attachment://{name}")
        kwargs: dict[str, Any] = {"content": view.content, "embed": embed, "attachments": files}
        if view.view is not None:
            kwargs["view"] = view.view
        return kwargs

    async def _send(self, view: View) -> None:
        """One progress edit: dropped on failure (the next state replaces it)."""
        for attempt in range(2):
            try:
                if self.message is None and self._token_alive():
                    assert self.interaction is not None
                    await self.interaction.edit_original_response(**self._payload(view))
                elif self.message is None and self.channel is not None:
                    self.message = await self.channel.send(**_as_new(self._payload(view)))
                elif self.message is not None:
                    await self.message.edit(**self._payload(view))
                self.edits += 1
                return
            except discord.HTTPException as e:
                if e.code in TOKEN_GONE and self.message is None and attempt == 0:
                    log.info("interaction token no longer usable; continuing in a channel message")
                    self.interaction = None
                    continue
                log.warning("progress edit failed: %s", e)
                return
            except SEND_ERRORS as e:  # the connection dropped: the next state replaces this one
                log.warning("progress edit got no answer: %r", e)
                return

    async def _deliver(self, view: View, fallback: bool) -> Delivery:
        """The final state: edit the message, else post it in the channel, else DM a picture."""
        places: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        if self.message is None and self._token_alive():
            interaction = self.interaction
            assert interaction is not None
            places.append(("original", lambda: interaction.edit_original_response(**self._payload(view))))
        elif self.message is not None:
            message = self.message
            places.append(("message", lambda: message.edit(**self._payload(view))))
        channel = self.channel
        if channel is not None and (fallback or not places):
            places.append(("channel", lambda: channel.send(**_as_new(self._payload(view)))))
        failures: list[tuple[str, BaseException]] = []
        for place, send in places:
            try:
                sent = await retrying(send)
            except SEND_ERRORS as e:
                log.warning("final message could not be sent (%s): %r", place, e)
                failures.append((place, e))
                continue
            self.edits += 1
            if isinstance(sent, discord.Message):
                self.message = sent
            return Delivery(place, sent if isinstance(sent, discord.Message) else None, failures)
        if fallback and view.image is not None and self.requester is not None:
            return await self._by_dm(view, failures)
        return Delivery(None, None, failures)

    async def _by_dm(self, view: View, failures: list[tuple[str, BaseException]]) -> Delivery:
        """The picture by DM, saying why it is not where it was asked for; else at least the reason."""
        assert self.requester is not None
        if self.channel is None:  # nothing was tried: say why there was no place to try
            where, reason = "its channel", self.channel_gone or "the channel is gone"
        else:
            where = f"<#{self.channel.id}>" if hasattr(self.channel, "id") else "its channel"
            reason = why_not(failures[-1][1]) if failures else "Discord refused it"
        try:
            dm = await self.requester()
        except SEND_ERRORS as e:
            failures.append(("dm", e))
            return Delivery(None, None, failures)
        payload = _as_new(self._payload(view))
        payload.pop("view", None)  # the buttons act on the channel message; in a DM they would mislead
        payload["content"] = f"I couldn't post your picture in {where}: {reason}. Here it is."
        try:
            sent = await retrying(lambda: dm.send(**payload))
            return Delivery("dm", sent, failures)
        except SEND_ERRORS as e:
            failures.append(("dm", e))
        try:
            text = f"Your picture is made but I couldn't post it in {where} ({reason}) nor send it here."
            await retrying(lambda: dm.send(text))
        except SEND_ERRORS as e:
            log.warning("the requester could not be told where their picture is: %s", e)
        return Delivery(None, None, failures)


def _as_new(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Edit arguments → send arguments (files instead of the final attachment list)."""
    send = {k: v for k, v in kwargs.items() if k != "attachments"}
    send["files"] = kwargs.get("attachments") or []
    if send.get("view") is None:
        send.pop("view", None)
    return send


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("progress task failed", exc_info=task.exception())
