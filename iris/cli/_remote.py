"""`iris classify` and `iris imagine` through the configured manager instead of a local engine: with
`manager.backend: nats` they run on the workers, which makes them an operator's smoke test of a
deployment (broker reachable, a worker up, models loaded)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from io import BytesIO
from typing import Any

from PIL import Image

from iris.config import Config
from iris.errors import IrisError, JobCancelled
from iris.service.events import Done, Progress
from iris.service.results import Prediction

OWNER = "cli"  # the owner the caps count a command-line job under


def remote(cfg: Config) -> bool:
    """Whether the commands go through the manager (the device work is elsewhere)."""
    return cfg.manager.backend != "local"


def classify(
    cfg: Config, images: Sequence[Image.Image], labels: list[str], top_k: int | None, templates: str | None
) -> list[list[Prediction]]:
    async def run() -> list[list[Prediction]]:
        from models.connect import open_manager  # the command line sits above every layer

        manager = open_manager(cfg)
        await manager.start()
        try:
            return [await manager.classify(im, labels, top_k=top_k, templates=templates) for im in images]
        finally:
            await manager.close()

    return asyncio.run(run())


def imagine(
    cfg: Config,
    prompt: str,
    overrides: dict[str, Any],
    on_preview: Callable[[Image.Image], None],
    quiet: bool,
) -> Done:
    """Queue the job, show its progress on stderr, save previews through `on_preview`; its Done event."""
    from tqdm import tqdm

    async def run() -> Done:
        from models.connect import open_manager  # the command line sits above every layer

        manager = open_manager(cfg)
        await manager.start()
        bar = None
        try:
            request = manager.make_request(prompt, **overrides)
            handle = manager.imagine(request, owner=OWNER)
            bar = tqdm(total=request.steps * request.count, desc="imagine", unit="step", disable=quiet,
                       file=sys.stderr)  # fmt: skip
            async for event in handle.events():
                if isinstance(event, Progress):
                    bar.update(event.step - bar.n)
                    if event.preview_png is not None:
                        on_preview(Image.open(BytesIO(event.preview_png)))
            return await handle.result()
        except asyncio.CancelledError:
            raise JobCancelled("the job was cancelled") from None
        finally:
            if bar is not None:
                bar.close()
            await manager.close()

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        raise IrisError("interrupted") from None
