"""Short jobs (classify, embed an image or a text, ask the model id): the inference manager runs every
waiting one between two slices of a generation step, batched so their images share one forward pass."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from models.clip import Clip, top_predictions

# settle(job, value, error): deliver one job's result, or its error (exactly one of the two is used)
Settle = Callable[["ShortJob", Any, BaseException | None], None]
# describe(features, top_k): Descriptions for (N, D) image embeddings
Describe = Callable[[np.ndarray, int], list[Any]]


@dataclass(eq=False)
class ShortJob:
    kind: str  # "classify" | "describe" | "images" | "text" | "model_id" | "call"
    future: asyncio.Future[Any]  # on the caller's event loop
    images: list[Image.Image] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    top_k: int = 5
    templates: str = "openai"
    text: str = ""
    run: Callable[[], Any] | None = None  # kind "call": any work for the device's thread (upscale)


def take_batch(waiting: deque[ShortJob], max_images: int) -> list[ShortJob]:
    """Pop waiting jobs, up to `max_images` images in all (at least one job). Call under the owner's lock."""
    batch: list[ShortJob] = []
    images = 0
    while waiting:
        nxt = waiting[0]
        if batch and images + len(nxt.images) > max_images:
            break
        batch.append(waiting.popleft())
        images += len(nxt.images)
    return batch


def run_batch(
    clip: Clip, batch: list[ShortJob], settle: Settle, batch_size: int, describe: Describe | None = None
) -> None:
    """The images of every job in `batch` share forward passes of up to `batch_size` images (the
    config's `clip.batch_size`, so a big embed cannot exhaust memory), one text pass for its texts; a job
    whose own part fails (a bad label list) is settled with its error. Raises when a shared pass fails."""
    with_images = [j for j in batch if j.kind in ("classify", "describe", "images")]
    if with_images:
        all_images = [im for j in with_images for im in j.images]
        feats = clip.encode_images(all_images, batch_size=batch_size)  # (N, D)
        offset = 0
        for j in with_images:
            own = feats[offset : offset + len(j.images)]
            offset += len(j.images)
            if j.kind == "images":
                settle(j, own, None)
                continue
            try:
                if j.kind == "describe":
                    assert describe is not None, "describe jobs need a describer"
                    settle(j, describe(own, j.top_k)[0], None)
                    continue
                probs = clip.classify_probs(own, j.labels, j.templates)[0]
                settle(j, top_predictions(probs, j.labels, j.top_k), None)
            except Exception as e:
                settle(j, None, e)
    texts = [j for j in batch if j.kind == "text"]
    if texts:
        vecs = clip.encode_texts([j.text for j in texts])
        for j, v in zip(texts, vecs, strict=True):
            settle(j, v, None)
    for j in batch:
        if j.kind == "model_id":
            settle(j, clip.name, None)
        elif j.kind == "call" and j.run is not None:
            try:
                settle(j, j.run(), None)
            except Exception as e:
                settle(j, None, e)
