"""Encode throughput: our Clip.encode_images vs a bare open_clip loop; same model and batch.

    python bench/encode_throughput.py [--images 64] [--batch 32] [--repeats 3] [--device cpu]

Target (issue 2): ratio ours/bare >= 0.9 in images/s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._timing import interleaved, median
from models.clip import Clip
from models.device import resolve_device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="ViT-B-32")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    dev = resolve_device(args.device)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(args.arch, pretrained=None, device=dev)
    model.eval()
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (320, 320, 3), dtype=np.uint8)) for _ in range(args.images)
    ]
    clip = Clip(model, open_clip.get_tokenizer(args.arch), preprocess, args.arch, dev)

    def bare() -> None:
        with torch.inference_mode():
            for i in range(0, len(images), args.batch):
                x = torch.stack([preprocess(im) for im in images[i : i + args.batch]]).to(dev)
                F.normalize(model.encode_image(x).float(), dim=-1).cpu().numpy()

    def ours() -> None:
        clip.encode_images(images, batch_size=args.batch)

    base_t, ours_t = interleaved(bare, ours, args.repeats)
    b, o = args.images / median(base_t), args.images / median(ours_t)
    print(
        f"{args.arch} on {dev}, {args.images} images, batch {args.batch}, {args.repeats} interleaved repeats"
    )
    print(f"bare open_clip loop: {b:8.2f} img/s")
    print(f"Clip.encode_images : {o:8.2f} img/s")
    print(f"ratio ours/bare    : {o / b:8.3f}   (target >= 0.9)")


if __name__ == "__main__":
    main()
