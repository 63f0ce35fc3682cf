"""The short jobs of a manager whose device is in another process (a child, a worker behind the broker):
each is sent by name with its arguments and answered by one message. The names are listed once here, for
the side that sends them and the side that serves them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from iris.service.results import Description, Prediction, Upscaled

# The Manager methods a short job may name; the serving side calls nothing else.
SHORT_OPS = frozenset({"classify", "describe", "upscale", "embed_images", "embed_text", "model_id"})


class RemoteShortJobs:
    """The short-job half of the Manager API over `_short(op, *args)`, which the backend sends."""

    async def _short(self, op: str, *args: Any) -> Any:
        raise NotImplementedError

    async def classify(
        self,
        image: Image.Image | bytes,
        labels: Sequence[str],
        top_k: int | None = None,
        templates: str | None = None,
    ) -> list[Prediction]:
        result: list[Prediction] = await self._short("classify", image, list(labels), top_k, templates)
        return result

    async def describe(self, image: Image.Image | bytes, top_k: int = 5) -> Description:
        result: Description = await self._short("describe", image, top_k)
        return result

    async def upscale(self, image: Image.Image | bytes) -> Upscaled:
        result: Upscaled = await self._short("upscale", image)
        return result

    async def embed_images(self, images: Sequence[Image.Image | bytes]) -> np.ndarray:
        result: np.ndarray = await self._short("embed_images", list(images))
        return result

    async def embed_text(self, query: str) -> np.ndarray:
        result: np.ndarray = await self._short("embed_text", query)
        return result

    async def model_id(self) -> str:
        result: str = await self._short("model_id")
        return result
