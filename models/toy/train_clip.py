"""Train the toy CLIP: an open_clip custom config, contrastive loss, on the toy world.

    python -m models.toy.train_clip            # reproduces models/toy/iris-toy-clip.safetensors

Class-aware contrastive targets: several images in a batch share a class, so every caption of the same
class counts as a match (plain CLIP loss would push identical captions apart).
"""

from __future__ import annotations

import argparse
import math
import random
import time

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from safetensors.torch import save_file

from models.cutouts import CutoutConfig, make_cutouts
from models.toy import TOY_CLIP_NAME, TOY_CLIP_WEIGHTS, TOY_DIR, world

TRAIN_VIEWS = CutoutConfig(
    min_scale=0.7, max_scale=1.0, max_rotate=12.0, brightness=0.06, contrast=0.1, noise=0.08
)


def to_tensor(images) -> torch.Tensor:
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])  # (N, H, W, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8


def normalise(x: torch.Tensor, model) -> torch.Tensor:
    mean = torch.tensor(model.visual.image_mean or open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.image_std or open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    classifier = open_clip.build_zero_shot_classifier(
        model, tokenizer, list(world.CLASSES), open_clip.SIMPLE_IMAGENET_TEMPLATES, num_classes_per_batch=None
    )
    feats = model.encode_image(normalise(images.float() / 255, model), normalize=True)
    acc = ((feats @ classifier).argmax(1) == labels).float().mean().item()
    model.train()
    return acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--pool", type=int, default=12000, help="toy images generated up front")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(TOY_CLIP_WEIGHTS))
    args = p.parse_args()

    torch.manual_seed(args.seed)
    rnd = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    open_clip.add_model_config(TOY_DIR)
    model = open_clip.create_model(TOY_CLIP_NAME, pretrained=None)
    tokenizer = open_clip.get_tokenizer(TOY_CLIP_NAME)
    print(f"params: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")

    t0 = time.time()
    pool = list(world.samples(args.pool, seed=1000 + args.seed))
    images = to_tensor(s.image for s in pool)
    classes = torch.tensor([world.CLASSES.index(s.label) for s in pool])
    held = list(world.samples(300, seed=99_999))
    held_images = to_tensor(s.image for s in held)
    held_classes = torch.tensor([world.CLASSES.index(s.label) for s in held])
    print(f"generated {len(pool)} training images in {time.time() - t0:.1f}s")

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    warmup = 60

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    model.train()
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        idx = torch.randint(len(images), (args.batch,), generator=gen)
        x = make_cutouts(images[idx].float() / 255, 1, 64, TRAIN_VIEWS, generator=gen).clamp(0, 1)
        cls = classes[idx]
        captions = []
        for c in cls.tolist():
            label = world.CLASSES[c]
            if rnd.random() < 0.5:
                captions.append(f"a {label}")
            else:
                captions.append(rnd.choice(OPENAI_IMAGENET_TEMPLATES)(label))
        img_f = model.encode_image(normalise(x, model), normalize=True)
        txt_f = model.encode_text(tokenizer(captions), normalize=True)
        logits = model.logit_scale.exp() * img_f @ txt_f.T  # (B, B)
        same = (cls[:, None] == cls[None, :]).float()
        targets = same / same.sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0 or step == args.steps - 1:
            print(
                f"step {step:5d} loss {loss.item():.4f} scale {model.logit_scale.exp().item():.1f} "
                f"{(time.time() - t0) / (step + 1):.2f}s/step",
                flush=True,
            )
        if (step + 1) % 300 == 0 or step == args.steps - 1:
            acc = zero_shot_accuracy(model, tokenizer, held_images, held_classes)
            print(
                f"  held-out zero-shot accuracy: {acc:.3f}",
                flush=True,
            )

    acc = zero_shot_accuracy(model, tokenizer, held_images, held_classes)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    meta = {
        "arch": TOY_CLIP_NAME,
        "steps": str(args.steps),
        "seed": str(args.seed),
        "batch": str(args.batch),
        "heldout_accuracy": f"{acc:.4f}",
    }
    save_file(state, args.out, metadata=meta)
    print(f"saved {args.out} (held-out accuracy {acc:.3f})")


if __name__ == "__main__":
    main()
