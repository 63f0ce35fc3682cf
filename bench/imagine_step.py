"""One imagine step in s/step: ours vs a bare taming+open_clip loop, and vs the reference recipe.

    python bench/imagine_step.py [--size 256 512] [--cutouts 32] [--steps 5] [--device auto] [--models auto]

Contenders, same models, size, cutouts and seed, timed interleaved (bench/_timing.py):
- bare: the textbook VQGAN+CLIP step written straight against taming + open_clip: random crops and
  rotations by one bilinear grid_sample, random numbers drawn on the CPU and copied over, noise;
- ours (iris): `VQGANGeneration.step()` with the `iris` profile (the same views, prefiltered), the loss
  left on the device;
- reference: the reference scripts' recipe (nerdyrodent/VQGAN-CLIP's default cutouts): the image pooled to
  CLIP's size once per cutout (average + max), then affine, perspective, colour jitter and erasing as
  separate warps, each drawing its parameters on the CPU (as kornia does), noise on the device;
- ours (classic): `VQGANGeneration.step()` with the `classic` profile, the same recipe in one warp.

Models: on CUDA (`--models real`, the default there) ViT-B-32 and an f16 VQGAN (n_embed 1024), random
weights, the real architectures. On the CPU (`--models tiny`, the default there) a 4-layer ViT at CLIP's
224 px input and a slim f16 VQGAN, random weights, so that a run takes minutes. Target: ours <= 1.0 × bare
on the CPU; on CUDA, ours below both (no per-step waits).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._timing import median
from iris.request import ImagineRequest
from models.augment import colour_jitter, erase, perspective_grid
from models.clip import Clip
from models.device import resolve_device
from models.generate import VQGANGeneration
from models.recipes import PROFILES
from models.vqgan import VQGAN, VQGANConfig

F16 = dict(
    double_z=False,
    z_channels=256,
    resolution=256,
    in_channels=3,
    out_ch=3,
    ch=128,
    ch_mult=[1, 1, 2, 2, 4],
    num_res_blocks=2,
    attn_resolutions=[16],
    dropout=0.0,
)
F16_SLIM = {**F16, "z_channels": 64, "ch": 32, "num_res_blocks": 1}
TINY_VIT = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 256, "head_width": 64, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 2},
}
TEXT = "a watercolor fox"


def load_models(kind: str, dev: torch.device) -> tuple[Clip, VQGAN, str]:
    torch.manual_seed(0)
    if kind == "real":
        name, dd, embed = "ViT-B-32", F16, 256
    else:
        name, dd, embed = "iris-bench-tiny-vit", F16_SLIM, 64
        folder = Path(tempfile.mkdtemp())
        (folder / f"{name}.json").write_text(json.dumps(TINY_VIT))
        open_clip.add_model_config(folder)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, device=dev)
    clip = Clip(model, open_clip.get_tokenizer(name), preprocess, name, dev)
    vqgan = VQGAN(VQGANConfig(dd, n_embed=1024, embed_dim=embed)).to(dev).eval().requires_grad_(False)
    return clip, vqgan, name


class _Loop:
    """The state both hand-written loops share: z from random codes, Adam, the straight-through decode."""

    def __init__(self, clip: Clip, vqgan: VQGAN, size: int, dev: torch.device) -> None:
        self.clip, self.vqgan, self.dev = clip, vqgan, dev
        with torch.no_grad():
            self.target = clip.text_features([TEXT])  # (1, D)
        self.codebook = vqgan.codebook.detach()
        self.g = torch.Generator().manual_seed(0)  # the references draw on the CPU
        n = size // vqgan.factor
        idx = torch.randint(len(self.codebook), (n * n,), generator=self.g).to(dev)
        self.z = self.codebook[idx].view(1, n, n, -1).permute(0, 3, 1, 2).clone().requires_grad_(True)
        self.opt = torch.optim.Adam([self.z], lr=0.1)
        self.zmin = self.codebook.min(0).values.view(1, -1, 1, 1)
        self.zmax = self.codebook.max(0).values.view(1, -1, 1, 1)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.g).to(self.dev)  # a blocking copy, as in the references

    def image(self) -> torch.Tensor:
        zf = self.z.movedim(1, 3)
        d = zf.pow(2).sum(-1, keepdim=True) + self.codebook.pow(2).sum(1) - 2 * zf @ self.codebook.T
        zq = F.one_hot(d.argmin(-1), len(self.codebook)).float() @ self.codebook
        zq = (zf + (zq - zf).detach()).movedim(3, 1)  # straight-through
        return self.vqgan.decode(zq).add(1).div(2).clamp(0, 1)

    def finish(self, cut: torch.Tensor) -> None:
        feats = F.normalize(self.clip.model.encode_image(self.clip.normalise(cut)).float(), dim=-1)
        loss = (feats - self.target).norm(dim=-1).div(2).arcsin().pow(2).mul(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            self.z.copy_(self.z.clamp(self.zmin, self.zmax))


def bare_loop(clip: Clip, vqgan: VQGAN, size: int, cutouts: int, dev: torch.device) -> Callable[[], None]:
    """The textbook step with the `iris` profile's views: crops (45-100 %), flips and ±15° rotations by one
    grid_sample, brightness/contrast jitter, noise."""
    st = _Loop(clip, vqgan, size, dev)
    s_out = clip.image_size

    def step() -> None:
        img = st.image()
        n = cutouts
        s = st.rand(n) * 0.55 + 0.45
        a = (st.rand(n) * 2 - 1) * math.radians(15)
        f = torch.where(st.rand(n) < 0.5, -1.0, 1.0)
        t = (st.rand(n, 2) * 2 - 1) * (1 - s)[:, None]
        theta = torch.stack(
            [
                torch.stack([s * a.cos() * f, -s * a.sin(), t[:, 0]], 1),
                torch.stack([s * a.sin() * f, s * a.cos(), t[:, 1]], 1),
            ],
            1,
        )
        grid = F.affine_grid(theta, [n, 3, s_out, s_out], align_corners=False)
        cut = F.grid_sample(img.expand(n, -1, -1, -1), grid, padding_mode="reflection", align_corners=False)
        mean = cut.mean(dim=(1, 2, 3), keepdim=True)
        gain = 1 + (st.rand(n, 1, 1, 1) * 2 - 1) * 0.1
        shift = (st.rand(n, 1, 1, 1) * 2 - 1) * 0.08
        cut = (cut - mean) * gain + mean + shift
        cut = cut + st.rand(n, 1, 1, 1) * 0.1 * torch.randn(cut.shape, generator=st.g).to(dev)
        st.finish(cut)

    return step


def reference_loop(
    clip: Clip, vqgan: VQGAN, size: int, cutouts: int, dev: torch.device
) -> Callable[[], None]:
    """nerdyrodent/VQGAN-CLIP's default step: pooled cutouts, then Af, Pe, Ji, Er one by one, then noise."""
    st = _Loop(clip, vqgan, size, dev)
    s_out = clip.image_size
    cfg = PROFILES["classic"]
    base = F.affine_grid(torch.eye(2, 3, device=dev)[None], [1, 3, s_out, s_out], align_corners=False)

    def warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)

    def step() -> None:
        img = st.image()
        pooled = [
            (F.adaptive_avg_pool2d(img, s_out) + F.adaptive_max_pool2d(img, s_out)) / 2
            for _ in range(cutouts)
        ]
        x = torch.cat(pooled)
        n = cutouts
        on = (st.rand(n) < 0.7).float()
        ang = (st.rand(n) * 2 - 1) * math.radians(15) * on
        sh = (st.rand(n) * 2 - 1) * math.radians(5) * on
        tr = (st.rand(n, 2) * 2 - 1) * 0.2 * on[:, None]
        cos, sin, tan = ang.cos(), ang.sin(), sh.tan()
        theta = torch.stack(
            [
                torch.stack([cos, cos * tan - sin, tr[:, 0]], 1),
                torch.stack([sin, sin * tan + cos, tr[:, 1]], 1),
            ],
            1,
        )
        x = warp(x, F.affine_grid(theta, [n, 3, s_out, s_out], align_corners=False))  # Af
        grid = perspective_grid(base.expand(n, -1, -1, -1), 0.7 * (st.rand(n) < 0.7).float(), st.rand)
        x = warp(x, grid)  # Pe
        x = colour_jitter(x, cfg, (st.rand(n) < 0.7).float(), st.rand)  # Ji
        x = erase(x, 0.7, (0.1, 0.4), st.rand)  # Er
        facs = x.new_empty([n, 1, 1, 1]).uniform_(0, 0.1)
        st.finish(x + facs * torch.randn_like(x))

    return step


def ours(clip: Clip, vqgan: VQGAN, size: int, cutouts: int, profile: str) -> Callable[[], None]:
    req = ImagineRequest(TEXT, seed=0, steps=10**6, width=size, height=size, cutouts=cutouts, profile=profile)
    gen = VQGANGeneration(clip, vqgan, req)
    return lambda: gen.step(read_loss=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, nargs="+", help="px (default: 256 512 on CUDA, 256 on the CPU)")
    p.add_argument("--cutouts", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="interleaved timed steps of each")
    p.add_argument("--device", default="auto")
    p.add_argument("--models", choices=["auto", "real", "tiny"], default="auto")
    args = p.parse_args()

    dev = resolve_device(args.device)
    kind = args.models if args.models != "auto" else ("real" if dev.type == "cuda" else "tiny")
    sizes = args.size or ([256, 512] if dev.type == "cuda" else [256])
    clip, vqgan, name = load_models(kind, dev)

    def timed(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()  # the step's work, not only its queuing

        return run

    print(
        f"{name} + VQGAN f16 ({kind}, random weights) on {dev}, {args.cutouts} cutouts, "
        f"{args.steps} rounds (each contender once per round); median s/step (wall clock, and process CPU "
        "time, steadier on a shared machine)"
    )
    for size in sizes:
        contenders = {
            "bare": bare_loop(clip, vqgan, size, args.cutouts, dev),
            "ours (iris)": ours(clip, vqgan, size, args.cutouts, "iris"),
            "reference": reference_loop(clip, vqgan, size, args.cutouts, dev),
            "ours (classic)": ours(clip, vqgan, size, args.cutouts, "classic"),
        }
        wall, cpu = round_robin({k: timed(fn) for k, fn in contenders.items()}, args.steps)
        for label, times in (("wall", wall), ("cpu", cpu)):
            t = {k: median(v) for k, v in times.items()}
            iris, classic = t["ours (iris)"], t["ours (classic)"]
            print(
                f"{size:4d}px {label:4s}  bare {t['bare']:7.3f}  ours (iris) {iris:7.3f}  "
                f"ratio {iris / t['bare']:5.3f}   |   reference {t['reference']:7.3f}  "
                f"ours (classic) {classic:7.3f}  ratio {classic / t['reference']:5.3f}"
            )


def round_robin(
    fns: dict[str, Callable[[], None]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each function once per round, `repeats` rounds after a warm-up round, so that load that comes and
    goes on a shared machine hits every contender alike. Wall-clock and process CPU seconds per call."""
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return wall, cpu


if __name__ == "__main__":
    main()
