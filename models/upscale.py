"""Upscale: twice the side, with a super-resolution network (ESRGAN family, loaded by spandrel) when one is
configured and installed, else Lanczos resampling, labelled as such so nobody mistakes it for the model.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from iris.errors import WeightsCorrupt, WeightsUnavailable
from iris.service.results import Upscaled

log = logging.getLogger(__name__)

FACTOR = 2  # the side is doubled
LANCZOS_LABEL = "upscaled with Lanczos (no super-resolution model installed)"


class SuperResolution:
    """A loaded super-resolution network; its output is brought to exactly FACTOR × the input's side."""

    def __init__(self, model: torch.nn.Module, scale: int, name: str, device: torch.device) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.scale = scale  # the network's own factor (a ×4 model's output is resized to ×2)
        self.name = name
        self.device = device

    def __call__(self, image: Image.Image) -> Image.Image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3) in [0, 1]
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(self.device)  # (1, 3, H, W)
        with torch.inference_mode():
            y = self.model(x).float().clamp(0, 1)[0]  # (3, sH, sW)
        out = Image.fromarray((y.permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8))
        target = (image.width * FACTOR, image.height * FACTOR)
        return out if out.size == target else out.resize(target, Image.Resampling.LANCZOS)


def load_upscaler(path: Path, device: torch.device) -> SuperResolution:
    """An ESRGAN-family (or other spandrel-supported) super-resolution model from a .pth/.safetensors file."""
    if not path.is_file():
        raise WeightsUnavailable(f"super-resolution weights not found: {path}")
    try:
        from spandrel import ImageModelDescriptor, ModelLoader

        desc = ModelLoader().load_from_file(path)
    except ImportError as e:
        raise WeightsUnavailable("the spandrel package is not installed (pip install spandrel)") from e
    except Exception as e:
        raise WeightsCorrupt(f"cannot load a super-resolution model from {path}: {e}") from e
    if not isinstance(desc, ImageModelDescriptor) or desc.scale < 2:
        raise WeightsCorrupt(f"{path} is not a super-resolution model (×2 or more)")
    name = f"{desc.architecture.name} ×{desc.scale} ({path.stem})"
    log.info("loaded super-resolution model %s on %s", name, device)
    return SuperResolution(desc.model, desc.scale, name, device)


def lanczos(image: Image.Image) -> Image.Image:
    return image.convert("RGB").resize(
        (image.width * FACTOR, image.height * FACTOR), Image.Resampling.LANCZOS
    )


def upscale(image: Image.Image, model: SuperResolution | None) -> Upscaled:
    """`image` at FACTOR × its side, by `model` when given, else by Lanczos (and labelled so)."""
    if model is not None:
        out, label = model(image), f"upscaled with {model.name}"
    else:
        out, label = lanczos(image), LANCZOS_LABEL
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return Upscaled(buf.getvalue(), out.width, out.height, label)
