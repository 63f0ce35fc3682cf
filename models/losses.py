"""What a generation pulls toward: text and image prompts as CLIP embeddings, and the loss on them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from iris.images import load_image
from iris.prompts import parse_prompt
from iris.request import ImagineRequest
from models.clip import Clip
from models.cutouts import CutoutConfig, make_cutouts


class _ReplaceGrad(torch.autograd.Function):
    """Forward `x_forward`, backward into `x_backward`: the straight-through estimator."""

    @staticmethod
    def forward(ctx: Any, x_forward: torch.Tensor, x_backward: torch.Tensor) -> torch.Tensor:
        ctx.shape = x_backward.shape
        return x_forward

    @staticmethod
    def backward(ctx: Any, grad_in: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, grad_in.sum_to_size(ctx.shape)


def replace_grad(x_forward: torch.Tensor, x_backward: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = _ReplaceGrad.apply(x_forward, x_backward)
    return out


def spherical_dist_sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """2·arcsin(|a−b|/2)² for unit vectors: (N, D), (P, D) → (N, P)."""
    return (a[:, None, :] - b[None, :, :]).norm(dim=-1).div(2).clamp(max=1).arcsin().pow(2).mul(2)


@dataclass(frozen=True)
class Targets:
    """The weighted prompt embeddings of one request: text parts first, then image prompts."""

    emb: torch.Tensor  # (P, D) unit vectors
    weights: torch.Tensor  # (P,) < 0 pushes away
    stops: torch.Tensor  # (P,) stop pulling once closer than this (−inf: never)
    positive: torch.Tensor  # (1, D) unit vector of the positive parts, for the CLIP score


def pil_to_tensor(im: Image.Image, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """PIL RGB → (1, 3, H, W) in [0, 1] at `size` (w, h), resized with Lanczos."""
    w, h = size
    im = im.resize((w, h), Image.Resampling.LANCZOS)
    x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(h, w, 3)
    return x.permute(2, 0, 1)[None].float().div(255).to(device)


@torch.no_grad()
def build_targets(
    clip: Clip,
    request: ImagineRequest,
    size: tuple[int, int],
    cutouts: CutoutConfig,
    generator: torch.Generator,
) -> Targets:
    """Embed the prompt's text parts and the image prompts.

    An image prompt is resized to the generated size and seen through the same views as the image being
    made (as the references do), its embedding the normalised mean of those views.
    """
    parts = parse_prompt(request.prompt, max_chars=max(500, len(request.prompt)))
    embs = [clip.text_features([p.text for p in parts])]  # (T, D)
    weights = [p.weight for p in parts]
    stops = [p.stop for p in parts]
    for i, (data, weight) in enumerate(request.image_prompts):
        x = pil_to_tensor(load_image(data, name=f"image prompt {i + 1}"), size, clip.device)
        views = make_cutouts(x, request.cutouts, clip.image_size, cutouts, generator)
        embs.append(F.normalize(clip.image_features(views).mean(0, keepdim=True), dim=-1))
        weights.append(weight)
        stops.append(-math.inf)
    emb = torch.cat(embs)
    w = torch.tensor(weights, device=clip.device)
    positive = F.normalize((w.clamp(min=0)[:, None] * emb).sum(0, keepdim=True), dim=-1)
    return Targets(emb, w, torch.tensor(stops, device=clip.device), positive)


def prompt_loss(feats: torch.Tensor, targets: Targets, share: float) -> torch.Tensor:
    """Weighted spherical-distance loss of view embeddings (n, D), scaled by n / N (its share)."""
    dists = spherical_dist_sq(feats, targets.emb) * targets.weights.sign()  # (n, P)
    dists = replace_grad(dists, torch.maximum(dists, targets.stops))
    return (targets.weights.abs() * dists.mean(0)).sum() * share
