"""`iris classify` and `iris imagine` with manager.backend: nats: the work runs on the deployment's workers,
through the same client the bot uses (an operator's smoke test). No torch is loaded here."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from iris.config import Config
from iris.errors import JobCancelled
from iris.request import ImagineRequest
from iris.service.events import Cancelled, Done, Failed, Progress, Queued
from iris.service.nats import NatsManager
from iris.service.results import Prediction

WORKER_WAIT_S = 10.0  # how long to wait for a worker to show up before asking anyway


async def _with_workers(m: NatsManager) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WORKER_WAIT_S
    while not m.mirror.workers() and loop.time() < deadline:
        await asyncio.sleep(0.1)


def classify_on_workers(
    cfg: Config, images: Sequence[Image.Image], labels: list[str], top_k: int | None, templates: str | None
) -> list[list[Prediction]]:
    async def run() -> list[list[Prediction]]:
        async with NatsManager(cfg, adopt=False) as m:
            await _with_workers(m)
            return list(await asyncio.gather(*(m.classify(im, labels, top_k, templates) for im in images)))

    return asyncio.run(run())


def imagine_on_workers(
    cfg: Config,
    prompt: str,
    overrides: dict[str, Any],
    save: Callable[[Image.Image], None],
    quiet: bool,
) -> tuple[ImagineRequest, Done]:
    """Queue one generation, show its place and steps, save its previews and picture with `save`."""
    from tqdm import tqdm

    async def run() -> tuple[ImagineRequest, Done]:
        async with NatsManager(cfg, adopt=False) as m:
            await _with_workers(m)
            request = m.make_request(prompt, **overrides)
            handle = m.imagine(request, owner="cli")
            bar = tqdm(total=request.steps * request.count, desc="queued", unit="step", disable=quiet,
                       file=sys.stderr)  # fmt: skip
            try:
                async for ev in handle.events():
                    if isinstance(ev, Queued):
                        bar.set_description(f"queued #{ev.position}")
                    elif isinstance(ev, Progress):
                        bar.set_description("imagine")
                        bar.update(ev.step - bar.n)
                        if ev.preview_png is not None:
                            save(_image(ev.preview_png))
                    elif isinstance(ev, Done):
                        save(ev.image)
                        m.mark_delivered(handle.id)
                        return request, ev
                    elif isinstance(ev, Failed):
                        raise ev.error
                    elif isinstance(ev, Cancelled):
                        raise JobCancelled(f"the job was {ev.reason}")
                raise JobCancelled("the job ended without a picture")
            except asyncio.CancelledError:  # Ctrl-C: the workers stop it too
                handle.cancel()
                raise
            finally:
                bar.close()

    return asyncio.run(run())


def _image(png: bytes) -> Image.Image:
    import io

    im = Image.open(io.BytesIO(png))
    im.load()
    return im
