"""Text-to-image by optimisation: VQGAN+CLIP, and a pixel generator for when no VQGAN is present.

A generation is a step-wise object: create it from a request, call `step()` until done (or until
`should_stop()` says so between steps), `preview()` at any time. Progress leaves through callbacks;
nothing global.

A step never waits for the device by itself: the cutouts' random numbers come from the job's own
generator on the device, constants are copied there once, and the loss stays a device tensor until
someone asks for it (`step(read_loss=True)` or `last_loss`).
"""

from __future__ import annotations

import io
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from PIL import Image

from iris.errors import BadRequest
from iris.images import load_image
from iris.request import ImagineRequest
from models.clip import Clip
from models.cutouts import CutoutConfig, make_cutouts
from models.losses import build_targets, pil_to_tensor, prompt_loss, replace_grad, spherical_dist_sq
from models.recipes import profile
from models.vqgan import VQGAN

__all__ = [
    "Generation",
    "ImagineResult",
    "PixelGeneration",
    "StepInfo",
    "VQGANGeneration",
    "clamp_with_grad",
    "create_generation",
    "png_bytes",
    "replace_grad",
    "spherical_dist_sq",
    "to_pil",
    "vector_quantize",
]

log = logging.getLogger(__name__)


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


def clamp_with_grad(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    out: torch.Tensor = _ClampWithGrad.apply(x, lo, hi)
    return out


def vector_quantize(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest codebook vector per position, straight-through. x: (..., D), codebook: (K, D)."""
    d = x.pow(2).sum(-1, keepdim=True) + codebook.pow(2).sum(1) - 2 * x @ codebook.T
    xq = F.embedding(d.argmin(-1), codebook)  # a gather: a one-hot matmul costs K times more
    return replace_grad(xq, x)


@dataclass(frozen=True)
class StepInfo:
    step: int  # steps done so far (1-based after the first step)
    total: int
    loss: float  # NaN on steps whose loss was not read (see Generation.run's loss_every)
    seconds: float  # wall time of this step (on a GPU: of queuing it, unless the loss was read)


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
        # One generator on the device drives every random draw of this job (z init, cutouts, noise): the
        # seed is applied before z is drawn, jobs on other threads cannot disturb it, and no random number
        # is copied from the host. Same seed, same device: same image.
        self.rng = torch.Generator(device=self.device).manual_seed(self.seed)
        self.cutout_cfg = cutouts or profile(request.profile)
        self.total = request.steps
        self.steps_done = 0
        self._loss: torch.Tensor | None = None  # the last step's loss, still on the device
        self.ema_latent: torch.Tensor | None = None  # the EMA of the latents, when request.ema > 0
        # Called before every step (the manager's tests use it to inject faults such as out-of-memory).
        self.before_step: Callable[[Generation], None] | None = None
        self.targets = build_targets(clip, request, self.size, self.cutout_cfg, self.rng)
        self.init_image = self._decode_init(request.init_image)

    # -- subclass hooks ---------------------------------------------------------------------------
    @property
    def latent(self) -> torch.Tensor:
        """The one tensor Adam optimises."""
        raise NotImplementedError

    def render(self, latent: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) in [0, 1] from a latent, differentiable w.r.t. it."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Projection after each optimiser step (e.g. clamp z to the codebook's range)."""

    # -- the image --------------------------------------------------------------------------------
    def params(self) -> list[torch.Tensor]:
        return [self.latent]

    def image(self) -> torch.Tensor:
        """The image being optimised, (1, 3, H, W) in [0, 1], differentiable w.r.t. params()."""
        return self.render(self.latent)

    def shown(self) -> torch.Tensor:
        """The image a user sees (previews, result): of the EMA latents when asked for, else image()."""
        return self.image() if self.ema_latent is None else self.render(self.ema_latent)

    @property
    def weights(self) -> torch.Tensor:
        return self.targets.weights

    @property
    def prompt_emb(self) -> torch.Tensor:
        return self.targets.emb

    # -- the loop ---------------------------------------------------------------------------------
    def _setup(self) -> None:
        self.opt = torch.optim.Adam(self.params(), lr=self.request.lr)
        if self.request.ema:
            self.ema_latent = self.latent.detach().clone()
        self.start_score = self.score()

    def _decode_init(self, data: bytes | None) -> torch.Tensor | None:
        if data is None:
            return None
        return pil_to_tensor(load_image(data, name="init image"), self.size, self.device)  # (1, 3, H, W)

    @property
    def size(self) -> tuple[int, int]:
        return self.request.width, self.request.height

    def step(
        self,
        wants_slice: Callable[[], bool] | None = None,
        *,
        between: Callable[[], None] | None = None,
        slice_size: int | None = None,
        read_loss: bool = True,
    ) -> float:
        """One optimisation step. Returns the loss when `read_loss`, else NaN (the device is not waited for).

        With `between` and `slice_size`, the cutouts may be scored in slices of `slice_size`, each
        back-propagated into the cutouts on its own (gradients accumulate: the result is the same step),
        with `between()` called after each slice: the manager runs waiting short jobs there, so they wait
        for a slice, not a step. A slice is cut only when `wants_slice()` says someone is waiting (always
        when `wants_slice` is None); otherwise the rest of the step runs whole.
        """
        if self.before_step is not None:
            self.before_step(self)
        self.opt.zero_grad(set_to_none=True)
        img = self.image()  # (1, 3, H, W), graph back to the latents
        n = self.request.cutouts
        cut = make_cutouts(img, n, self.clip.image_size, self.cutout_cfg, self.rng)  # (N, 3, S, S)
        # Cut the graph at the cutouts: slices back-propagate through CLIP into `views` only, and the
        # cutouts and the decoder are back-propagated once, at the end, whatever the number of slices.
        views = cut.detach().requires_grad_(True)
        total = torch.zeros((), device=self.device)
        start = 0
        while start < n:
            sliced = bool(between and slice_size and (wants_slice is None or wants_slice()))
            end = min(n, start + slice_size) if sliced and slice_size else n
            part = prompt_loss(self.clip.image_features(views[start:end]), self.targets, (end - start) / n)
            part.backward()
            total = total + part.detach()
            if sliced and between is not None:
                between()
            start = end
        outputs, grads = [cut], [views.grad]
        extra = self._init_loss(img)
        if extra is not None:
            outputs.append(extra)
            grads.append(torch.ones_like(extra))
            total = total + extra.detach()
        torch.autograd.backward(outputs, grads)  # through the cutouts and the decoder to the latents
        self.opt.step()
        with torch.no_grad():
            self.after_step()
            if self.ema_latent is not None:
                self.ema_latent.lerp_(self.latent, 1 - self.request.ema)
        self.steps_done += 1
        self._loss = total
        return self.last_loss if read_loss else math.nan

    def _init_loss(self, img: torch.Tensor) -> torch.Tensor | None:
        """Pull toward the init image: weight · mean squared pixel difference, decaying as 1/(2·step + 1)
        as in the references, so it shapes the start and fades."""
        w = self.request.init_weight
        if not w or self.init_image is None:
            return None
        return F.mse_loss(img, self.init_image) * (w / (2 * self.steps_done + 1))

    @property
    def last_loss(self) -> float:
        """The last step's loss (waits for the device: read it only when an event needs it)."""
        return math.nan if self._loss is None else float(self._loss.item())

    @property
    def done(self) -> bool:
        return self.steps_done >= self.total

    @torch.no_grad()
    def score(self, img: torch.Tensor | None = None) -> float:
        """Cosine similarity of the whole image (resized to CLIP's input) to the prompt's positive parts."""
        img = self.shown() if img is None else img
        x = F.interpolate(
            img, size=(self.clip.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False
        )
        return float((self.clip.image_features(x) @ self.targets.positive.T).item())

    @torch.no_grad()
    def preview(self) -> Image.Image:
        return to_pil(self.shown())

    def run(
        self,
        on_step: Callable[[StepInfo], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        loss_every: int = 1,
    ) -> ImagineResult:
        """Step until done or until `should_stop()` is true (checked between steps).

        The loss is read (a wait for the device) every `loss_every` steps and on the last one; other
        steps report NaN."""
        return run_steps(self, on_step, should_stop, loss_every)

    @torch.no_grad()
    def result(self, stopped: bool = False) -> ImagineResult:
        """The image as it stands now, with its seed, steps done and CLIP scores."""
        img = self.shown()
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
                # Start from the quantised encoding: a codebook vector per position. The encoder's raw
                # output is not one (for Gumbel models it is the input of the code projection, not even
                # in the codebook's space).
                z = vqgan.embed_codes(vqgan.codes(vqgan.encode(self.init_image * 2 - 1)))
            else:
                n = h // f * (w // f)
                idx = torch.randint(cb.shape[0], (n,), generator=self.rng, device=cb.device)
                z = cb[idx].view(1, h // f, w // f, -1).permute(0, 3, 1, 2)
        self.z = z.clone().contiguous().requires_grad_(True)  # (1, C, h/f, w/f)
        self._setup()

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    @property
    def latent(self) -> torch.Tensor:
        return self.z

    def render(self, latent: torch.Tensor) -> torch.Tensor:
        zq = vector_quantize(latent.movedim(1, 3), self.codebook).movedim(3, 1)
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
            x = 0.5 + 0.1 * torch.randn((1, 3, h, w), generator=self.rng, device=self.device)
        self.x = x.clone().clamp(0, 1).contiguous().requires_grad_(True)
        self._setup()

    @property
    def latent(self) -> torch.Tensor:
        return self.x

    def render(self, latent: torch.Tensor) -> torch.Tensor:
        return clamp_with_grad(latent, 0.0, 1.0)

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


class Steppable(Protocol):
    """What `run_steps` drives: a Generation, or a group of them (models/group.py)."""

    steps_done: int
    total: int

    @property
    def done(self) -> bool: ...
    def step(self, *, read_loss: bool = True) -> float: ...
    def result(self, stopped: bool = False) -> ImagineResult: ...


def run_steps(
    gen: Steppable,
    on_step: Callable[[StepInfo], None] | None,
    should_stop: Callable[[], bool] | None,
    loss_every: int,
) -> ImagineResult:
    """The one stepping loop of a standalone run (the CLI): step until done or `should_stop()`."""
    stopped = False
    while not gen.done:
        if should_stop is not None and should_stop():
            stopped = True
            break
        t0 = time.perf_counter()
        nxt = gen.steps_done + 1
        loss = gen.step(read_loss=nxt % max(1, loss_every) == 0 or nxt == gen.total)
        if on_step is not None:
            on_step(StepInfo(gen.steps_done, gen.total, loss, time.perf_counter() - t0))
    return gen.result(stopped)
