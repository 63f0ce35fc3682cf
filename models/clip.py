"""CLIP through open_clip: load a preset, a local checkpoint or a custom architecture; encode; classify.

Outputs that leave this module are L2-normalised float32 numpy arrays, so callers (the index, the bot)
never need torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
from PIL import Image

from iris.errors import BadRequest, WeightsCorrupt, WeightsUnavailable
from iris.service.results import Prediction
from models.device import autocast, resolve_device, resolve_dtype
from models.toy import TOY_CLIP_NAME, TOY_CLIP_WEIGHTS, TOY_DIR

log = logging.getLogger(__name__)

Template = Callable[[str], str]
TEMPLATE_SETS: dict[str, Sequence[Template]] = {
    "openai": OPENAI_IMAGENET_TEMPLATES,  # 80 prompts, the OpenAI ImageNet ensemble
    "simple": SIMPLE_IMAGENET_TEMPLATES,  # 7 prompts
    "none": (lambda c: c,),  # the label as written
}


class Clip:
    """A loaded CLIP model with its tokenizer, preprocessing and a text-embedding LRU cache."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable[..., torch.Tensor],
        preprocess: Callable[[Image.Image], torch.Tensor],
        name: str,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        text_cache: int = 512,
    ) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name = name  # model id: embeddings made with different ids are not comparable
        self.device = device
        self.dtype = dtype
        visual: Any = self.model.visual
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        mean = visual.image_mean or open_clip.OPENAI_DATASET_MEAN
        std = visual.image_std or open_clip.OPENAI_DATASET_STD
        self._mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self._cache: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._cache_size = text_cache
        self._lock = threading.Lock()
        self.text_forward_passes = 0  # counts text-tower calls (tests and status use it)
        self.image_forward_passes = 0  # counts image-tower batches in encode_images
        self._embed_dim: int | None = None

    @property
    def embed_dim(self) -> int:
        if self._embed_dim is None:
            self._embed_dim = int(self.encode_texts(["x"]).shape[1])
        return self._embed_dim

    # -- differentiable paths (generation) --------------------------------------------------------
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] → CLIP's input normalisation."""
        return (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) in [0, 1], S = image_size → (N, D) unit vectors, float32, with gradients."""
        with autocast(self.device, self.dtype):
            f = self.model.encode_image(self.normalise(x))  # type: ignore[operator]
        return F.normalize(f.float(), dim=-1)

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) unit vectors for raw texts (no templates), float32, no gradients."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.dtype):
            f = self.model.encode_text(tokens)  # type: ignore[operator]
        self.text_forward_passes += 1
        return F.normalize(f.float(), dim=-1).clone()

    # -- inference --------------------------------------------------------------------------------
    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """PIL images → (N, D) L2-normalised float32, in batches of `batch_size`."""
        out = []
        for i in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(im.convert("RGB")) for im in images[i : i + batch_size]])
            with torch.inference_mode(), autocast(self.device, self.dtype):
                f = self.model.encode_image(batch.to(self.device, non_blocking=True))  # type: ignore[operator]
            self.image_forward_passes += 1
            out.append(F.normalize(f.float(), dim=-1).cpu())
        if not out:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return torch.cat(out).numpy()

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Texts → (N, D) L2-normalised float32 (raw texts, no templates, not cached)."""
        parts = [
            self.text_features(texts[i : i + batch_size]).cpu() for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(parts).numpy()

    def label_embeddings(self, labels: Sequence[str], templates: str = "openai") -> torch.Tensor:
        """(L, D) template-ensembled class embeddings: encode each template, normalise, mean, normalise.

        Cached per (label, template set) in an LRU, so a repeated label set costs no forward pass.
        """
        if templates not in TEMPLATE_SETS:
            raise BadRequest(f"unknown template set {templates!r}; use one of {', '.join(TEMPLATE_SETS)}")
        tmpl = TEMPLATE_SETS[templates]
        with self._lock:
            missing = list(dict.fromkeys(lb for lb in labels if (lb, templates) not in self._cache))
        if missing:
            texts = [t(lb) for lb in missing for t in tmpl]
            feats = torch.cat([self.text_features(texts[i : i + 512]) for i in range(0, len(texts), 512)])
            per_label = feats.reshape(len(missing), len(tmpl), -1).mean(dim=1)
            per_label = per_label / per_label.norm(dim=1, keepdim=True)
            with self._lock:
                for lb, emb in zip(missing, per_label, strict=True):
                    self._cache[(lb, templates)] = emb
        with self._lock:
            rows = []
            for lb in labels:
                self._cache.move_to_end((lb, templates))
                rows.append(self._cache[(lb, templates)])
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return torch.stack(rows)

    def classify_probs(
        self, image_features: np.ndarray | torch.Tensor, labels: Sequence[str], templates: str = "openai"
    ) -> np.ndarray:
        """(N, D) image embeddings → (N, L) label probabilities (softmax at the model's logit scale)."""
        if not labels:
            raise BadRequest("no labels to classify against")
        w = self.label_embeddings(labels, templates)  # (L, D)
        feats = torch.as_tensor(image_features, device=self.device, dtype=torch.float32)
        scale = self.model.logit_scale.exp().float()  # type: ignore[operator]
        logits = scale * feats @ w.T  # (N, L)
        bias = getattr(self.model, "logit_bias", None)
        if bias is not None:  # SigLIP-style models score each label independently
            return torch.sigmoid(logits + bias.float()).cpu().numpy()
        return logits.softmax(dim=-1).cpu().numpy()

    def classify(
        self,
        images: Sequence[Image.Image],
        labels: Sequence[str],
        templates: str = "openai",
        top_k: int = 5,
    ) -> list[list[Prediction]]:
        """Zero-shot classification: per image, the `top_k` labels by probability, best first."""
        probs = self.classify_probs(self.encode_images(images), labels, templates)
        return [top_predictions(row, labels, top_k) for row in probs]


def top_predictions(probs: np.ndarray, labels: Sequence[str], top_k: int) -> list[Prediction]:
    order = np.argsort(-probs, kind="stable")[: max(1, top_k)]
    return [Prediction(labels[i], float(probs[i])) for i in order]


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """open_clip warns "initialized randomly" on the root logger when it is given no weights."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsUnavailable(f"CLIP weights file not found: {path} (clip.checkpoint in the config)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsCorrupt(f"cannot read CLIP weights {path}: {e}") from e
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise WeightsCorrupt(f"{path} holds no state dict")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _load_state(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: Path) -> None:
    ours = model.state_dict()
    sd = {k: v.to(ours[k].dtype) if k in ours else v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise WeightsCorrupt(
            f"{source} does not fit this CLIP architecture: missing {list(missing)[:5]}, "
            f"unexpected {list(unexpected)[:5]}"
        )


def load_clip(
    preset: str,
    *,
    device: str = "auto",
    precision: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    arch_config: str | os.PathLike[str] | None = None,
    offline: bool = False,
    text_cache: int = 512,
) -> Clip:
    """The one factory for CLIP models.

    preset: "toy" (shipped), a registry name like "ViT-B-32/laion2b_s34b_b79k", or any open_clip
    "ARCH/TAG" (its weights go through the same cache, `cache_dir/clip`, default `Config().cache_dir`).
    With `checkpoint`, the preset's architecture (or `arch_config`'s) gets that local file. Images are
    prepared as open_clip's registry says for the preset's tag, wherever the weights come from.
    """
    from models.weights import CLIP_PRESETS, clip_preprocess, download_clip

    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    if arch_config is not None:
        cfg_path = Path(arch_config)
        if not cfg_path.is_file():
            raise WeightsUnavailable(f"CLIP architecture config not found: {cfg_path}")
        open_clip.add_model_config(cfg_path)
        arch, tag, name = cfg_path.stem, None, cfg_path.stem
        weights: Path | None = Path(checkpoint) if checkpoint else None
    elif preset == "toy":
        open_clip.add_model_config(TOY_DIR)
        arch, tag, name = TOY_CLIP_NAME, None, TOY_CLIP_NAME
        weights = Path(checkpoint) if checkpoint else TOY_CLIP_WEIGHTS
    else:
        known = CLIP_PRESETS.get(preset)
        arch, _, tag_s = (known.arch, "/", known.pretrained) if known else preset.partition("/")
        if arch not in open_clip.list_models():
            raise BadRequest(f"unknown CLIP preset {preset!r}; known: toy, {', '.join(CLIP_PRESETS)}")
        tag, name = tag_s or None, preset
        weights = Path(checkpoint) if checkpoint else None
    # The tag's own mean/std, interpolation and resize mode (open_clip's defaults only without a tag).
    prep: dict[str, Any] = clip_preprocess(f"{arch}/{tag}") if tag else {}

    if weights is not None or tag is None:
        with _quiet_random_init_warning():  # the weights are loaded right below
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=None, device="cpu", **prep
            )
        if weights is not None:
            _load_state(model, _read_weights(weights), weights)
            name = f"{name}@{weights.name}" if checkpoint else name
    else:
        # Registry weights go through our cache (and its clear offline message), then load from the file.
        if cache_dir is None:
            from iris.config import Config

            cache_dir = Config().cache_dir
        local = download_clip(f"{arch}/{tag}", Path(cache_dir), offline=offline)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=str(local), device="cpu", **prep
            )
        except Exception as e:
            raise WeightsCorrupt(f"cannot load CLIP weights {local}: {e}") from e
    tokenizer = open_clip.get_tokenizer(arch)
    log.info("loaded CLIP %s on %s (%s)", name, dev, dtype)
    return Clip(model, tokenizer, preprocess, name, dev, dtype, text_cache)
