"""Text-to-image by optimisation: VQGAN+CLIP, and a pixel generator for when no VQGAN is present.

A generation is a step-wise object: create it from a request, call `step()` until done (or until
`should_stop()` says so between steps), `preview()` at any time. Progress leaves through callbacks;
nothing global.
"""

from __future__ import annotations

import io
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from iris.errors import BadRequest
from iris.images import load_image
from iris.prompts import parse_prompt
from iris.request import ImagineRequest
from models.clip import Clip
from models.cutouts import CutoutConfig, make_cutouts
from models.vqgan import VQGAN

log = logging.getLogger(__name__)


class _ReplaceGrad(torch.autograd.Function):
    """Forward `x_forward`, backward into `x_backward`: the straight-through estimator."""

    @staticmethod
    def forward(ctx: Any, x_forward: torch.Tensor, x_backward: torch.Tensor) -> torch.Tensor:
        ctx.shape = x_backward.shape
        return x_forward

    @staticmethod
    def backward(ctx: Any, grad_in: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, grad_in.sum_to_size(ctx.shape)


class _ClampWithGrad(torch.autograd.Function):
    """Clamp that still passes gradients which point back into the range (plain clamp kills them)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        ctx.lo, ctx.hi = lo, hi
        ctx.save_for_backward(x)
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx: Any, grad_in: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return grad_in * (grad_in * (x - x.clamp(ctx.lo, ctx.hi)) >= 0), None, None


def replace_grad(x_forward: torch.Tensor, x_backward: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = _ReplaceGrad.apply(x_forward, x_backward)
    return out


def clamp_with_grad(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    out: torch.Tensor = _ClampWithGrad.apply(x, lo, hi)
    return out


def vector_quantize(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest codebook vector per position, straight-through. x: (..., D), codebook: (K, D)."""
    d = x.pow(2).sum(-1, keepdim=True) + codebook.pow(2).sum(1) - 2 * x @ codebook.T
    xq = F.one_hot(d.argmin(-1), codebook.shape[0]).to(x.dtype) @ codebook
    return replace_grad(xq, x)


def spherical_dist_sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """2·arcsin(|a−b|/2)² for unit vectors: (N, D), (P, D) → (N, P)."""
    return (a[:, None, :] - b[None, :, :]).norm(dim=-1).div(2).clamp(max=1).arcsin().pow(2).mul(2)


@dataclass(frozen=True)
class StepInfo:
    step: int  # steps done so far (1-based after the first step)
    total: int
    loss: float
    seconds: float  # wall time of this step


@dataclass
class ImagineResult:
    image: Image.Image
    seed: int
    steps: int  # steps actually run (fewer when stopped early)
    clip_score: float  # cosine similarity of the final image to the prompt's positive parts
    start_score: float  # the same for the starting image
    stopped: bool  # True when should_stop() ended it early


class Generation:
    """Shared machinery: prompts, cutouts, loss, Adam, the loop. Subclasses define the image."""

    def __init__(self, clip: Clip, request: ImagineRequest, cutouts: CutoutConfig | None = None) -> None:
        self.clip = clip
        self.request = request
        self.device = clip.device
        self.seed = request.seed if request.seed is not None else random.randrange(2**32)
        # One CPU generator drives every random draw of this job (z init, cutouts, noise): the seed is
        # applied before z is drawn, and jobs on other threads cannot disturb it.
        self.rng = torch.Generator().manual_seed(self.seed)
        self.cutout_cfg = cutouts or CutoutConfig()
        self.total = request.steps
        self.steps_done = 0
        self.last_loss = float("nan")
        # Called before every step (the manager's tests use it to inject faults such as out-of-memory).
        self.before_step: Callable[[Generation], None] | None = None
        parts = parse_prompt(request.prompt, max_chars=max(500, len(request.prompt)))
        self.prompt_emb = clip.text_features([p.text for p in parts])  # (P, D)
        self.weights = torch.tensor([p.weight for p in parts], device=self.device)
        self.stops = torch.tensor([p.stop for p in parts], device=self.device)
        positive = self.weights.clamp(min=0)[:, None] * self.prompt_emb
        self.target = F.normalize(positive.sum(0, keepdim=True), dim=-1)  # (1, D), for the score
        self.init_image = self._decode_init(request.init_image)

    # -- subclass hooks ---------------------------------------------------------------------------
    def params(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def image(self) -> torch.Tensor:
        """(1, 3, H, W) in [0, 1], differentiable w.r.t. params()."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Projection after each optimiser step (e.g. clamp z to the codebook's range)."""

    # -- the loop ---------------------------------------------------------------------------------
    def _setup(self) -> None:
        self.opt = torch.optim.Adam(self.params(), lr=self.request.lr)
        self.start_score = self.score()

    def _decode_init(self, data: bytes | None) -> torch.Tensor | None:
        if data is None:
            return None
        im = load_image(data, name="init image")
        w, h = self.size
        im = im.resize((w, h), Image.Resampling.LANCZOS)
        x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(h, w, 3)
        return x.permute(2, 0, 1)[None].float().div(255).to(self.device)  # (1, 3, H, W)

    @property
    def size(self) -> tuple[int, int]:
        return self.request.width, self.request.height

    def _prompt_loss(self, feats: torch.Tensor, share: float) -> torch.Tensor:
        """Weighted spherical-distance loss of cutout embeddings (n, D), scaled by n / N (its share)."""
        dists = spherical_dist_sq(feats, self.prompt_emb) * self.weights.sign()  # (n, P)
        dists = replace_grad(dists, torch.maximum(dists, self.stops))
        return (self.weights.abs() * dists.mean(0)).sum() * share

    def step(self, between: Callable[[], None] | None = None, slice_size: int | None = None) -> float:
        """One optimisation step; returns the loss.

        With `between`, the step is cut into slices of `slice_size` cutouts, each scored and
        back-propagated on its own (gradients accumulate, the result is the same step), and `between()`
        is called between slices: the manager runs waiting short jobs there, so they wait for a slice,
        not a whole step.
        """
        if self.before_step is not None:
            self.before_step(self)
        self.opt.zero_grad(set_to_none=True)
        img = self.image()  # (1, 3, H, W), graph back to the parameters
        leaf = img.detach().requires_grad_(True)  # cut the graph here: slices back-propagate to `leaf`
        n = self.request.cutouts
        cut = make_cutouts(leaf, n, self.clip.image_size, self.cutout_cfg, self.rng)  # (N, 3, S, S)
        size = n if between is None or not slice_size else max(1, slice_size)
        starts = range(0, n, size)
        loss = 0.0
        for i, start in enumerate(starts):
            if between is not None and i:
                between()
            part = cut[start : start + size]
            slice_loss = self._prompt_loss(self.clip.image_features(part), len(part) / n)
            slice_loss.backward(retain_graph=i < len(starts) - 1)  # the cutouts' graph is shared
            loss += float(slice_loss.item())
        if between is not None:
            between()
        img.backward(leaf.grad)  # through the decoder to the latents
        self.opt.step()
        with torch.no_grad():
            self.after_step()
        self.steps_done += 1
        self.last_loss = loss
        return loss

    @property
    def done(self) -> bool:
        return self.steps_done >= self.total

    @torch.no_grad()
    def score(self, img: torch.Tensor | None = None) -> float:
        """Cosine similarity of the whole image (resized to CLIP's input) to the prompt's positive parts."""
        img = self.image() if img is None else img
        x = F.interpolate(
            img, size=(self.clip.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False
        )
        return float((self.clip.image_features(x) @ self.target.T).item())

    @torch.no_grad()
    def preview(self) -> Image.Image:
        return to_pil(self.image())

    def run(
        self,
        on_step: Callable[[StepInfo], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> ImagineResult:
        """Step until done or until `should_stop()` is true (checked between steps)."""
        stopped = False
        while not self.done:
            if should_stop is not None and should_stop():
                stopped = True
                break
            t0 = time.perf_counter()
            loss = self.step()
            if on_step is not None:
                on_step(StepInfo(self.steps_done, self.total, loss, time.perf_counter() - t0))
        return self.result(stopped)

    @torch.no_grad()
    def result(self, stopped: bool = False) -> ImagineResult:
        """The image as it stands now, with its seed, steps done and CLIP scores."""
        img = self.image()
        return ImagineResult(
            to_pil(img), self.seed, self.steps_done, self.score(img), self.start_score, stopped
        )


class VQGANGeneration(Generation):
    """Optimise VQGAN latents z; the image is decode(quantize(z)) with a straight-through gradient."""

    def __init__(
        self, clip: Clip, vqgan: VQGAN, request: ImagineRequest, cutouts: CutoutConfig | None = None
    ):
        self.vqgan = vqgan
        f = vqgan.factor
        # Round the size down to the model's factor (at least one token per side).
        self._size = (max(f, request.width // f * f), max(f, request.height // f * f))
        super().__init__(clip, request, cutouts)
        cb = vqgan.codebook.detach()  # (K, C)
        self.codebook = cb
        self.z_min = cb.min(dim=0).values.view(1, -1, 1, 1)
        self.z_max = cb.max(dim=0).values.view(1, -1, 1, 1)
        w, h = self._size
        with torch.no_grad():
            if self.init_image is not None:
                z = vqgan.encode(self.init_image * 2 - 1)
            else:
                idx = torch.randint(cb.shape[0], (h // f * (w // f),), generator=self.rng).to(cb.device)
                z = cb[idx].view(1, h // f, w // f, -1).permute(0, 3, 1, 2)
        self.z = z.clone().contiguous().requires_grad_(True)  # (1, C, h/f, w/f)
        self._setup()

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def params(self) -> list[torch.Tensor]:
        return [self.z]

    def image(self) -> torch.Tensor:
        zq = vector_quantize(self.z.movedim(1, 3), self.codebook).movedim(3, 1)
        return clamp_with_grad(self.vqgan.decode(zq).add(1).div(2), 0.0, 1.0)

    def after_step(self) -> None:
        self.z.copy_(torch.maximum(torch.minimum(self.z, self.z_max), self.z_min))


class PixelGeneration(Generation):
    """Optimise the RGB image directly (no VQGAN): same prompts, cutouts and loss."""

    def __init__(self, clip: Clip, request: ImagineRequest, cutouts: CutoutConfig | None = None):
        super().__init__(clip, request, cutouts)
        w, h = self.size
        if self.init_image is not None:
            x = self.init_image
        else:
            x = 0.5 + 0.1 * torch.randn((1, 3, h, w), generator=self.rng).to(self.device)
        self.x = x.clone().clamp(0, 1).contiguous().requires_grad_(True)
        self._setup()

    def params(self) -> list[torch.Tensor]:
        return [self.x]

    def image(self) -> torch.Tensor:
        return clamp_with_grad(self.x, 0.0, 1.0)

    def after_step(self) -> None:
        self.x.clamp_(0, 1)


def create_generation(
    clip: Clip, vqgan: VQGAN | None, request: ImagineRequest, cutouts: CutoutConfig | None = None
) -> Generation:
    """The generator the request asks for ("pixels", or "vqgan" when a VQGAN is loaded)."""
    if request.generator == "vqgan":
        if vqgan is None:
            raise BadRequest("no VQGAN model is configured; use the pixels generator")
        return VQGANGeneration(clip, vqgan, request, cutouts)
    return PixelGeneration(clip, request, cutouts)


def to_pil(img: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [0, 1] → PIL RGB."""
    arr = img[0].detach().clamp(0, 1).mul(255).add(0.5).byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
