"""The one message a generation shows: edited on a rate budget, moving to a channel message when needed.

Discord allows about 5 edits per 5 s per channel; the budget (config) stays under it, and only the latest
state is sent (intermediate previews are dropped, the final state never is). discord.py itself waits out a
429's retry_after and retries. After the interaction token's 15 minutes (or on an "invalid webhook token"
answer), the progress continues in a normal channel message.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import discord
from asyncio_throttle import Throttler
from PIL import Image

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
    extra: dict[str, Any] = field(default_factory=dict)


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
        channel: discord.abc.Messageable,
        edits_per_window: int,
        window_s: float,
        message: discord.Message | discord.PartialMessage | None = None,
        on_move: Any = None,
    ) -> None:
        self.interaction = interaction
        self.channel = channel
        self.message = message
        self._throttle = Throttler(rate_limit=edits_per_window, period=window_s)
        self._latest: View | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.edits = 0
        self._on_move = on_move  # async callback(message) when progress moves to a channel message
        self._size_limit = getattr(interaction, "attachment_size_limit", None) or 8 * 2**20

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="iris-progress")
        self._task.add_done_callback(_log_failure)

    def show(self, view: View) -> None:
        """Ask for `view` to be shown; replaces any state not yet sent."""
        self._latest = view
        self._wake.set()

    async def finish(self, view: View) -> None:
        """Show the final state and stop (waits until it is sent)."""
        view.final = True
        self.show(view)
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            async with self._throttle:
                view, self._latest = self._latest, None
                if view is None:
                    continue
                await self._send(view)
            if view.final:
                return

    def _token_alive(self) -> bool:
        if self.interaction is None:
            return False
        age = time.time() - self.interaction.created_at.timestamp()
        return age < TOKEN_LIFE_S - TOKEN_MARGIN_S

    async def _send(self, view: View) -> None:
        files: list[discord.File] = []
        embed = view.embed
        if view.image is not None:
            data, name = fit_image(view.image, self._size_limit, view.filename)
            files = [discord.File(io.BytesIO(data), filename=name)]
            if embed is not None:
                embed.set_image(url=f"attachment://{name}")
        kwargs: dict[str, Any] = {"content": view.content, "embed": embed, "attachments": files}
        if view.view is not None:
            kwargs["view"] = view.view
        for attempt in range(2):
            try:
                if self.message is None and self._token_alive():
                    assert self.interaction is not None
                    await self.interaction.edit_original_response(**kwargs)
                elif self.message is None:
                    await self._move(kwargs, files)
                else:
                    await self.message.edit(**kwargs)
                self.edits += 1
                return
            except discord.HTTPException as e:
                if e.code in (50027, 10062, 10015) and self.message is None and attempt == 0:
                    log.info("interaction token no longer usable; continuing in a channel message")
                    self.interaction = None
                    files = _rewind(files)
                    kwargs["attachments"] = files
                    continue
                log.warning("progress edit failed: %s", e)
                return

    async def _move(self, kwargs: dict[str, Any], files: list[discord.File]) -> None:
        """Post a normal channel message with the current state; later edits go to it."""
        send = {k: v for k, v in kwargs.items() if k != "attachments"}
        send["files"] = files
        if send.get("view") is None:
            send.pop("view", None)
        self.message = await self.channel.send(**send)
        if self._on_move is not None:
            await self._on_move(self.message)


def _rewind(files: list[discord.File]) -> list[discord.File]:
    out = []
    for f in files:
        fp = f.fp
        fp.seek(0)
        out.append(discord.File(io.BytesIO(fp.read()), filename=f.filename))
    return out


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("progress task failed", exc_info=task.exception())
