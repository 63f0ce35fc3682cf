"""Reading a Discord attachment as an image, within the byte limit, whatever its declared size says.

`check_declared` is cheap (no download) and runs before deferring; `read_image` downloads after it,
stopping as soon as the bytes pass the limit (a declared size can be wrong), then decodes off the event
loop. Every failure is a BadImage, answered privately by the error handler.
"""

from __future__ import annotations

import asyncio

import aiohttp
import discord

from iris.errors import BadImage
from iris.images import ImageLimits, check_size, image_name, load_image, looks_like_image

DOWNLOAD_TIMEOUT_S = 30.0  # a whole attachment download, in seconds
CHUNK = 64 * 1024  # bytes read at a time, so an oversized download stops early


def check_declared(attachment: discord.Attachment, limits: ImageLimits) -> None:
    """Refuse what Discord already says is too large or not an image, before any download."""
    name = image_name(attachment.filename)
    if not looks_like_image(attachment.filename, attachment.content_type):
        raise BadImage(f"{name} is not an image (PNG, JPEG, GIF, WebP, BMP or TIFF).")
    check_size(attachment.size, limits, name)


async def read_image(attachment: discord.Attachment, limits: ImageLimits) -> bytes:
    """The attachment's bytes once they decode as an image within `limits` (else BadImage)."""
    name = image_name(attachment.filename)
    data = await read_capped(attachment.url, limits.max_bytes, name)
    await asyncio.to_thread(load_image, data, limits, attachment.filename)
    return data


async def read_capped(url: str, max_bytes: int, name: str) -> bytes:
    """GET `url`, refusing it (BadImage) once it passes `max_bytes` or when the download fails."""
    chunks: list[bytes] = []
    total = 0
    try:
        timeout = aiohttp.ClientTimeout(total=DOWNLOAD_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
            if resp.status != 200:
                raise BadImage(f"{name} could not be downloaded (HTTP {resp.status}); try again.")
            async for chunk in resp.content.iter_chunked(CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    check_size(total, ImageLimits(max_bytes=max_bytes), name)  # raises: the one message
                chunks.append(chunk)
    except (TimeoutError, aiohttp.ClientError) as e:
        raise BadImage(f"{name} could not be downloaded ({type(e).__name__}); try again.") from e
    return b"".join(chunks)
