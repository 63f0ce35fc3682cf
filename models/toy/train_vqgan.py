"""Train the toy VQGAN: taming's modules, reconstruction + codebook loss, on the toy world.

    python -m models.toy.train_vqgan           # reproduces models/toy/iris-toy-vqgan.safetensors

No discriminator or perceptual loss: toy images are flat colours, and what matters for generation is
that the codebook keeps colour, so L1 + MSE on pixels is enough. Codes unused for a while are restarted
on random encoder outputs, which keeps the codebook alive.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from models.toy import TOY_VQGAN_CONFIG, TOY_VQGAN_WEIGHTS, world
from models.toy.train_clip import to_tensor
from models.vqgan import VQGAN, VQGANConfig


def evaluate(model: VQGAN, images: torch.Tensor) -> tuple[float, float]:
    """Mean absolute error (pixels in [0, 1]) and the share of images whose dominant colour survives."""
    from PIL import Image

    model.eval()
    with torch.no_grad():
        x = images.float() / 127.5 - 1
        rec = ((model.reconstruct(x) + 1) / 2).clamp(0, 1)
    model.train()
    mae = (rec - images.float() / 255).abs().mean().item()
    keep = 0
    for a, b in zip(images, rec, strict=True):
        im_a = Image.fromarray(a.permute(1, 2, 0).numpy())
        im_b = Image.fromarray((b * 255 + 0.5).byte().permute(1, 2, 0).numpy())
        keep += world.dominant_colour(im_a) == world.dominant_colour(im_b)
    return mae, keep / len(images)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--crop", type=int, default=32, help="train on random crops of this side (px)...")
    p.add_argument(
        "--full-from",
        type=float,
        default=0.8,
        help="...until this fraction of the steps, then on whole images",
    )
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--pool", type=int, default=8000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(TOY_VQGAN_WEIGHTS))
    args = p.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    cfg = VQGANConfig.from_yaml(TOY_VQGAN_CONFIG)
    model = VQGAN(cfg)
    print(f"params: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M, factor {cfg.factor}")
    pool = to_tensor(s.image for s in world.samples(args.pool, seed=2000 + args.seed))
    held = to_tensor(s.image for s in world.samples(200, seed=88_888))

    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.5, 0.9))
    usage = torch.zeros(cfg.n_embed)
    t0 = time.time()
    for step in range(args.steps):
        lr = args.lr * (0.5 * (1 + math.cos(math.pi * step / args.steps)) * 0.95 + 0.05)
        for g in opt.param_groups:
            g["lr"] = lr
        full = step >= args.steps * args.full_from
        # Crops are 4x cheaper than whole images; the last steps see whole images (and the attention
        # block its full-size token grid).
        idx = torch.randint(len(pool), (args.batch // 4 if full else args.batch,), generator=gen)
        x = pool[idx].float() / 127.5 - 1  # (B, 3, 64, 64) in [-1, 1]
        if not full:
            oy, ox = torch.randint(0, x.shape[2] - args.crop + 1, (2,), generator=gen).tolist()
            x = x[:, :, oy : oy + args.crop, ox : ox + args.crop]
        if torch.rand(1, generator=gen).item() < 0.5:
            x = x.flip(3)
        z = model.encode(x)
        zq, codebook_loss, (_, _, codes) = model.quantize(z)
        rec = model.decode(zq)
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + codebook_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

        usage = usage * 0.98 + torch.bincount(codes.flatten(), minlength=cfg.n_embed).float()
        if step % 100 == 99 and step < args.steps * 0.8:
            dead = (usage < 1e-3).nonzero().flatten()
            if len(dead):
                flat = z.detach().permute(0, 2, 3, 1).reshape(-1, cfg.embed_dim)
                pick = torch.randint(len(flat), (len(dead),), generator=gen)
                model.codebook.data[dead] = flat[pick]
                usage[dead] = 1.0
        if step % 100 == 0 or step == args.steps - 1:
            used = int((usage > 1e-3).sum())
            print(
                f"step {step:5d} loss {loss.item():.4f} codes used {used} "
                f"{(time.time() - t0) / (step + 1):.2f}s/step",
                flush=True,
            )
        if (step + 1) % 1000 == 0 or step == args.steps - 1:
            mae, keep = evaluate(model, held)
            print(f"  held-out MAE {mae:.4f}, dominant colour kept {keep:.3f}", flush=True)

    mae, keep = evaluate(model, held)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "steps": str(args.steps),
        "seed": str(args.seed),
        "batch": str(args.batch),
        "heldout_mae": f"{mae:.4f}",
        "heldout_colour_kept": f"{keep:.4f}",
    }
    save_file(state, args.out, metadata=meta)
    print(f"saved {args.out} (MAE {mae:.4f}, colour kept {keep:.3f})")


if __name__ == "__main__":
    main()
