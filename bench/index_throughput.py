"""Indexing throughput: Iris's path (decode, hash, embed, store) vs a bare open_clip loop; same model, batch.

    python bench/index_throughput.py [--arch toy|ViT-B-32] [--n 256] [--batch 32] [--repeats 3]

Ours is what bot/find/ (its scans) does with downloaded bytes: per image `load_image` and `image_sha256` and a
`missing_vectors` check; per batch `Clip.encode_images` and `put_vectors`; per item an `upsert`. Every run
writes under a new model id and scope, so each one indexes from scratch. The bare loop starts from the
same images already decoded: preprocess → encode_image → normalise. Downloads are excluded from both.
Inputs are PNG bytes of toy-world images; `--arch toy` is the shipped toy CLIP, any other name is that
open_clip architecture with random weights.
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
import tempfile
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._timing import interleaved, median
from iris.images import image_sha256, load_image
from iris.index import ImageIndex
from models.clip import Clip, load_clip
from models.device import autocast, resolve_device
from models.toy import world


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="toy", help="toy (shipped weights) or an open_clip architecture")
    p.add_argument("--n", type=int, default=256, help="images per run")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    if args.arch == "toy":
        clip = load_clip("toy", device=args.device)
    else:
        dev = resolve_device(args.device)
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms(args.arch, pretrained=None, device=dev)
        clip = Clip(model, open_clip.get_tokenizer(args.arch), preprocess, args.arch, dev)
    model, preprocess, dev = clip.model, clip.preprocess, clip.device

    images = [s.image for s in world.samples(args.n, seed=args.seed)]
    blobs = [png_bytes(im) for im in images]
    if len({image_sha256(b) for b in blobs}) < len(blobs):
        print("note: some toy images repeat; ours embeds each content once")

    def bare() -> None:
        with torch.inference_mode(), autocast(dev, clip.dtype):  # the same precision Clip runs at
            for i in range(0, len(images), args.batch):
                x = torch.stack([preprocess(im) for im in images[i : i + args.batch]]).to(dev)
                F.normalize(model.encode_image(x).float(), dim=-1).cpu().numpy()

    with tempfile.TemporaryDirectory() as tmp, ImageIndex(Path(tmp) / "index.sqlite3") as index:
        runs = itertools.count()

        def ours() -> None:
            run = next(runs)
            model_id, scope = f"{clip.name}#{run}", f"bench:{run}"  # nothing embedded yet: a first scan
            for lo in range(0, len(blobs), args.batch):
                rows, fresh = [], {}
                for j, data in enumerate(blobs[lo : lo + args.batch]):
                    key = f"{lo + j:06d}.png"
                    image = load_image(data, name=key)
                    h = image_sha256(data)
                    if h not in fresh and index.missing_vectors([h], model_id):
                        fresh[h] = image
                    rows.append((key, h, len(data)))
                vecs = clip.encode_images(list(fresh.values()), batch_size=args.batch)
                index.put_vectors(model_id, dict(zip(fresh, vecs, strict=True)))
                for key, h, size in rows:
                    index.upsert(scope, key, h, {"hash": h, "size": size})

        base_t, ours_t = interleaved(bare, ours, args.repeats)

    b, o = args.n / median(base_t), args.n / median(ours_t)
    side = world.IMAGE_SIZE
    print(
        f"{clip.name} on {dev} ({clip.dtype}), {args.n} PNG toy images {side}×{side}, batch {args.batch}, "
        f"{args.repeats} interleaved repeats"
    )
    print(f"bare open_clip loop (decoded images)  : {b:8.2f} img/s")
    print(f"Iris indexing (decode+hash+embed+store): {o:8.2f} img/s")
    print(f"ratio ours/bare                        : {o / b:8.3f}")


if __name__ == "__main__":
    main()
