"""Inference manager: classify latency idle vs during a generation, and batched vs sequential throughput.

    python bench/manager_latency.py [--clip toy|ViT-B-32] [--n 40] [--size 64] [--cutouts 16]

Targets (issue 3): p95 classify latency while a generation runs ≤ 2× idle p95 (at the step time of the
generation settings printed); 16 concurrent classifies ≥ 1.5× the throughput of 16 sequential ones.
Runs on the toy models (offline); `--clip ViT-B-32` uses that architecture with random weights.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iris.config import parse_config
from iris.request import ImagineRequest
from iris.service.events import Progress
from models.manager import InferenceManager
from models.toy import world

ROOT = Path(__file__).resolve().parents[1]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs) * 1000, q))


async def main_async(args: argparse.Namespace) -> None:
    data = yaml.safe_load((ROOT / "config.toy.yaml").read_text())
    tmp = tempfile.mkdtemp()
    data["manager"] = {
        "journal_path": f"{tmp}/jobs.sqlite3",
        "short_batch_size": 32,
        "step_slice": args.slice,
    }
    if args.clip != "toy":
        data["clip"] = {"preset": args.clip}
        data["vqgan"] = {"preset": None}
        data["imagine"]["generator"] = "pixels"
    data["imagine"]["width"] = data["imagine"]["height"] = args.size
    cfg = parse_config(data)
    labels = list(world.CLASSES)
    images = [s.image for s in world.samples(args.n, seed=9)]
    rnd = random.Random(0)
    async with InferenceManager(cfg) as m:
        await m.classify(images[0], labels)  # load models, cache label embeddings

        async def timed(im) -> float:
            t0 = time.perf_counter()
            await m.classify(im, labels)
            return time.perf_counter() - t0

        idle = [await timed(im) for im in images]

        gen = ImagineRequest(
            "a red circle",
            seed=0,
            steps=cfg.imagine.max_steps,
            width=args.size,
            height=args.size,
            cutouts=args.cutouts,
            generator=cfg.imagine.generator,
        )
        handle = m.imagine(gen, owner="bench")
        async for ev in handle.events():
            if isinstance(ev, Progress) and ev.step >= 3:
                break
        step_time = m.status().step_time_s or 0.0
        busy = []
        for im in images:  # arrive at random points within a step
            await asyncio.sleep(rnd.uniform(0, step_time))
            busy.append(await timed(im))
        handle.cancel()

        batch = images[:16]
        t0 = time.perf_counter()
        for im in batch:
            await m.classify(im, labels)
        seq = time.perf_counter() - t0
        t0 = time.perf_counter()
        await asyncio.gather(*(m.classify(im, labels) for im in batch))
        conc = time.perf_counter() - t0

    print(
        f"CLIP {args.clip}; generation: {cfg.imagine.generator} {args.size}px, {args.cutouts} cutouts, "
        f"step time {step_time * 1000:.0f} ms; {args.n} classifies each"
    )
    print(f"idle classify latency : p50 {pct(idle, 50):7.1f} ms  p95 {pct(idle, 95):7.1f} ms")
    print(f"busy classify latency : p50 {pct(busy, 50):7.1f} ms  p95 {pct(busy, 95):7.1f} ms")
    print(f"p95 ratio busy/idle   : {pct(busy, 95) / pct(idle, 95):7.2f}   (target <= 2)")
    print(f"16 classifies         : sequential {16 / seq:7.1f}/s, concurrent (batched) {16 / conc:7.1f}/s")
    print(f"throughput ratio      : {seq / conc:7.2f}   (target >= 1.5)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="toy", help='"toy" or an open_clip architecture (random weights)')
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--cutouts", type=int, default=16)
    p.add_argument("--slice", type=int, default=4, help="manager.step_slice: cutouts per slice of a step")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
