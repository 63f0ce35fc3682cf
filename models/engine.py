"""The engine: the models a config asks for, loaded lazily, and the operations on them.

The command line uses it directly; the inference manager will own one and run it on its worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from iris.config import Config
from iris.errors import BadRequest, IrisError
from iris.images import ImageLimits
from iris.labels import check_labels
from iris.request import ImagineRequest
from iris.service.results import Description, Prediction, Upscaled
from models.clip import Clip, load_clip
from models.describe import Describer
from models.device import resolve_device, resolve_imagine
from models.generate import Generation, create_generation
from models.group import GroupGeneration
from models.toy import TOY_VQGAN_CONFIG, TOY_VQGAN_WEIGHTS
from models.upscale import SuperResolution, load_upscaler, upscale
from models.vqgan import VQGAN, load_vqgan

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._clip: Clip | None = None
        self._vqgan: VQGAN | None = None
        # imagine's "auto" defaults (size, steps), picked once for this device's memory
        self.imagine = resolve_imagine(config.imagine, resolve_device(config.device))
        self._upscaler: SuperResolution | None = None
        self._upscaler_tried = False  # a missing or broken model is reported once, then Lanczos serves
        self.describer = Describer(config.cache_dir)  # the vocabulary /describe ranks, embedded per model

    @property
    def clip(self) -> Clip:
        if self._clip is None:
            c = self.config.clip
            self._clip = load_clip(
                c.preset,
                device=self.config.device,
                precision=self.config.precision,
                cache_dir=self.config.cache_dir,
                checkpoint=c.checkpoint,
                arch_config=c.arch_config,
                offline=self.config.weights.offline,
                text_cache=c.text_cache,
            )
        return self._clip

    @property
    def has_vqgan(self) -> bool:
        v = self.config.vqgan
        return bool(v.preset or (v.config and v.checkpoint))

    @property
    def vqgan(self) -> VQGAN | None:
        """The configured VQGAN, or None when the config names none (pixels only)."""
        if self._vqgan is None and self.has_vqgan:
            v = self.config.vqgan
            trust = v.trust_pickle
            if v.config and v.checkpoint:
                cfg_path, ckpt = Path(v.config), Path(v.checkpoint)
            elif v.preset == "toy":
                cfg_path, ckpt = TOY_VQGAN_CONFIG, TOY_VQGAN_WEIGHTS
            else:
                from models.weights import vqgan_paths

                assert v.preset is not None
                w = self.config.weights
                files = vqgan_paths(v.preset, self.config.cache_dir, mirrors=w.mirrors, offline=w.offline)
                cfg_path, ckpt = files.config, files.checkpoint
                # A full unpickle only for the very bytes that were checked: a known sha256, or the one
                # recorded when this file was downloaded and verified.
                trust = trust or files.verified
            self._vqgan = load_vqgan(cfg_path, ckpt, device=self.clip.device, trust_pickle=trust)
        return self._vqgan

    @property
    def upscaler(self) -> SuperResolution | None:
        """The configured super-resolution model, or None (none configured, or it cannot be loaded)."""
        name = self.config.imagine.upscaler
        if self._upscaler is None and name and not self._upscaler_tried:
            self._upscaler_tried = True
            from models.weights import UPSCALER_PRESETS, upscaler_path

            try:
                path = (
                    upscaler_path(
                        name,
                        self.config.cache_dir,
                        mirrors=self.config.weights.mirrors,
                        offline=self.config.weights.offline,
                        progress=False,
                    )
                    if name in UPSCALER_PRESETS
                    else Path(name)
                )
                self._upscaler = load_upscaler(path, self.clip.device)
            except IrisError as e:
                log.warning("Upscale falls back to Lanczos: %s", e.message)
        return self._upscaler

    def upscale(self, image: Image.Image) -> Upscaled:
        """`image` at twice its side: by the super-resolution model if there is one, else Lanczos."""
        return upscale(image, self.upscaler)

    def check_labels(self, labels: Sequence[str]) -> list[str]:
        c = self.config.classify
        return check_labels(list(labels), c.max_labels, c.max_label_chars)

    def classify(
        self,
        images: Sequence[Image.Image],
        labels: Sequence[str],
        top_k: int | None = None,
        templates: str | None = None,
    ) -> list[list[Prediction]]:
        labels = self.check_labels(labels)
        return self.clip.classify(
            images, labels, templates or self.config.classify.templates, top_k or self.config.classify.top_k
        )

    def describe(self, images: Sequence[Image.Image], top_k: int = 5) -> list[Description]:
        """What each image shows: the best vocabulary phrases with scores, and an /imagine prompt."""
        return self.describe_features(self.embed_images(images), top_k)

    def describe_features(self, features: np.ndarray, top_k: int = 5) -> list[Description]:
        """`describe` for (N, D) image embeddings already made."""
        return self.describer.describe(self.clip, features, top_k)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.clip.encode_images(images, batch_size=self.config.clip.batch_size)

    def embed_text(self, text: str) -> np.ndarray:
        if not text.strip():
            raise BadRequest("the query is empty")
        return self.clip.encode_texts([text])[0]

    def request(self, prompt: str, **overrides: object) -> ImagineRequest:
        """A request with the config's defaults, `overrides` applied (None values ignored), validated."""
        im = self.imagine
        fields: dict[str, object] = dict(
            prompt=prompt,
            steps=im.steps,
            width=im.width,
            height=im.height,
            cutouts=im.cutouts,
            lr=im.lr,
            generator=im.generator if self.has_vqgan else "pixels",
            profile=im.profile,
        )
        fields.update({k: v for k, v in overrides.items() if v is not None})
        req = ImagineRequest(**fields)  # type: ignore[arg-type]
        limits = ImageLimits(self.config.images.max_bytes, self.config.images.max_pixels)
        return req.validated(im.max_steps, im.max_side, im.max_prompt_chars, limits)

    def new_generation(self, request: ImagineRequest) -> Generation | GroupGeneration:
        """One generation, or a group of `request.count` run one after the other as one job."""
        vqgan = self.vqgan if request.generator == "vqgan" else None
        if request.count > 1:
            return GroupGeneration(lambda r: create_generation(self.clip, vqgan, r), request)
        return create_generation(self.clip, vqgan, request)
