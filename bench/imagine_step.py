"""One imagine step: our VQGANGeneration.step() vs a bare loop written directly against taming + open_clip.

    python bench/imagine_step.py [--size 256] [--cutouts 8] [--steps 3] [--device cpu]

Same ViT-B-32 (random weights), same f16 VQGAN architecture (random weights, n_embed 1024), same size and
cutouts. Target (issue 2): ratio ours/bare <= 1.1 in s/step.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from taming.modules.diffusionmodules.model import Decoder, Encoder  # noqa: F401  (the bare loop's parts)
from taming.modules.vqvae.quantize import VectorQuantizer2  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._timing import interleaved, median
from iris.request import ImagineRequest
from models.clip import Clip
from models.device import resolve_device
from models.generate import VQGANGeneration
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


def bare_loop(clip_model, vqgan: VQGAN, size: int, cutouts: int, dev: torch.device, text: str):
    """The textbook VQGAN+CLIP step, straight against the libraries (no Iris code in the step)."""
    tok = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        target = F.normalize(clip_model.encode_text(tok([text]).to(dev)).float(), dim=-1)
    codebook = vqgan.quantize.embedding.weight.detach()
    g = torch.Generator().manual_seed(0)
    n = size // 16
    z = codebook[torch.randint(len(codebook), (n * n,), generator=g)].view(1, n, n, -1).permute(0, 3, 1, 2)
    z = z.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.1)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD, device=dev).view(1, 3, 1, 1)
    zmin, zmax = codebook.min(0).values.view(1, -1, 1, 1), codebook.max(0).values.view(1, -1, 1, 1)

    def step() -> None:
        opt.zero_grad()
        zf = z.movedim(1, 3)
        d = zf.pow(2).sum(-1, keepdim=True) + codebook.pow(2).sum(1) - 2 * zf @ codebook.T
        zq = F.one_hot(d.argmin(-1), len(codebook)).float() @ codebook
        zq = (zf + (zq - zf).detach()).movedim(3, 1)  # straight-through
        img = vqgan.decoder(vqgan.post_quant_conv(zq)).add(1).div(2).clamp(0, 1)
        s = torch.rand(cutouts, generator=g).to(dev) * 0.55 + 0.45
        a = (torch.rand(cutouts, generator=g).to(dev) * 2 - 1) * math.radians(15)
        t = (torch.rand(cutouts, 2, generator=g).to(dev) * 2 - 1) * (1 - s)[:, None]
        theta = torch.stack(
            [
                torch.stack([s * a.cos(), -s * a.sin(), t[:, 0]], 1),
                torch.stack([s * a.sin(), s * a.cos(), t[:, 1]], 1),
            ],
            1,
        )
        grid = F.affine_grid(theta, [cutouts, 3, 224, 224], align_corners=False)
        cut = F.grid_sample(
            img.expand(cutouts, -1, -1, -1), grid, padding_mode="reflection", align_corners=False
        )
        cut = cut + 0.05 * torch.randn(cut.shape, generator=g).to(dev)
        feats = F.normalize(clip_model.encode_image((cut - mean) / std).float(), dim=-1)
        loss = (feats - target).norm(dim=-1).div(2).arcsin().pow(2).mul(2).mean()
        loss.backward()
        opt.step()
        with torch.no_grad():
            z.copy_(z.clamp(zmin, zmax))

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--cutouts", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="interleaved timed steps of each")
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    dev = resolve_device(args.device)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None, device=dev)
    clip = Clip(model, open_clip.get_tokenizer("ViT-B-32"), preprocess, "ViT-B-32", dev)
    vqgan = VQGAN(VQGANConfig(F16, n_embed=1024, embed_dim=256)).to(dev).eval().requires_grad_(False)
    text = "a watercolor fox"
    req = ImagineRequest(text, seed=0, steps=10_000, width=args.size, height=args.size, cutouts=args.cutouts)
    gen = VQGANGeneration(clip, vqgan, req)
    bare = bare_loop(clip.model, vqgan, args.size, args.cutouts, dev, text)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    base_t, ours_t = interleaved(lambda: (bare(), sync()), lambda: (gen.step(), sync()), args.steps)
    b, o = median(base_t), median(ours_t)
    print(
        f"ViT-B-32 + VQGAN f16 (random weights) on {dev}, {args.size}px, {args.cutouts} cutouts, "
        f"{args.steps} interleaved steps each"
    )
    print(f"bare taming+open_clip loop: {b:7.3f} s/step")
    print(f"VQGANGeneration.step()    : {o:7.3f} s/step")
    print(f"ratio ours/bare           : {o / b:7.3f}   (target <= 1.1)")


if __name__ == "__main__":
    main()
