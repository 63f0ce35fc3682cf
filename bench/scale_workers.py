"""The distributed mode on this box: toy generations per minute with 1 and 2 `iris worker` processes, and
what the broker adds to each progress event against the in-process manager.

    python bench/scale_workers.py [--jobs 8] [--steps 20] [--size 32] [--cutouts 4]

A real nats-server (JetStream, file store) on a free port, real worker processes (OMP_NUM_THREADS=1 each),
the toy models. Throughput: `--jobs` generations queued at once through NatsManager, timed from the first
submit to the last Done (the workers are up and warm before). Event latency: the in-process manager's
Progress events, from the worker thread's emit to the handle on the event loop (the baseline), against the
broker's hop, from the worker's publish (its timestamp header) to a client on the same machine decoding it.
Targets (issue 11): 2 workers ≥ 1.5× the generations per minute of 1 on a box with the cores for it; the
broker's p95 per event small against a step.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iris.config import parse_config
from iris.request import ImagineRequest
from iris.service import wire
from iris.service.events import Progress
from iris.service.nats import NatsManager

ROOT = Path(__file__).resolve().parents[1]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs) * 1000, q))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_data(tmp: Path, url: str, args: argparse.Namespace) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "config.toy.yaml").read_text())
    data["imagine"].update(steps=args.steps, width=args.size, height=args.size, cutouts=args.cutouts)
    data["imagine"]["preview_every"] = 10
    data["manager"] = {"backend": "nats", "journal_path": str(tmp / "jobs.sqlite3"), "max_queue": 100}
    data["manager"]["max_queued_per_user"] = 100
    data["nats"] = {"url": url, "prefix": "bench", "heartbeat_s": 1.0}
    data["data_dir"] = str(tmp)
    return data


def start_worker(tmp: Path, data: dict[str, Any], n: int) -> subprocess.Popen[bytes]:
    folder = tmp / f"worker{n}"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({**data, "data_dir": str(folder)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(folder / "worker.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "iris", "worker", "--config", str(folder / "config.yaml"), "-v"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def request(args: argparse.Namespace, seed: int) -> ImagineRequest:
    return ImagineRequest(
        "a red circle", seed=seed, steps=args.steps, width=args.size, height=args.size, cutouts=args.cutouts
    )


async def until(check: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.05)


async def throughput(m: NatsManager, args: argparse.Namespace, workers: int) -> float:
    """Generations per minute with `workers` live workers."""
    await until(lambda: len(m.mirror.workers()) == workers)
    t0 = time.perf_counter()
    handles = [m.imagine(request(args, i), owner=f"user{i}") for i in range(args.jobs)]
    for h in handles:
        await h.result()
    return args.jobs * 60 / (time.perf_counter() - t0)


async def broker_latency(m: NatsManager, args: argparse.Namespace) -> list[float]:
    """Seconds from a worker's publish of a Progress event to a client here decoding it."""
    b = m.broker_()
    lat: list[float] = []

    async def on_event(msg: Any) -> None:
        now = time.time()
        if isinstance(wire.loads(msg.data), Progress) and msg.headers and "Iris-Sent" in msg.headers:
            lat.append(now - float(msg.headers["Iris-Sent"]))

    sub = await b.nc.subscribe(b.names.events("*"), cb=on_event)
    for h in [m.imagine(request(args, 100 + i), owner=f"lat{i}") for i in range(2)]:
        await h.result()
    await sub.unsubscribe()
    return lat


async def local_latency(data: dict[str, Any], args: argparse.Namespace) -> list[float]:
    """The in-process manager: seconds from the worker thread's emit to the handle on the event loop."""
    from models.manager import InferenceManager

    sent: dict[int, float] = {}

    class Timed(InferenceManager):
        def _emit(self, job: Any, event: Any) -> None:
            sent[id(event)] = time.time()
            super()._emit(job, event)

    cfg = parse_config({**data, "manager": {**data["manager"], "backend": "local"}})
    lat: list[float] = []
    async with Timed(cfg) as m:
        for i in range(2):
            handle = m.imagine(request(args, 100 + i), owner="lat")
            async for ev in handle.events():
                if isinstance(ev, Progress):
                    lat.append(time.time() - sent.pop(id(ev)))
    return lat


async def main_async(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="iris-bench-"))
    port = free_port()
    binary = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    server = subprocess.Popen(
        [binary, "-js", "-sd", str(tmp / "js"), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    try:
        time.sleep(0.5)
        data = config_data(tmp, f"nats://127.0.0.1:{port}", args)
        local = await local_latency(data, args)
        cfg = parse_config(data)
        async with NatsManager(dataclasses.replace(cfg)) as m:
            procs.append(start_worker(tmp, data, 0))
            await until(lambda: len(m.mirror.workers()) == 1)
            await (m.imagine(request(args, 999), owner="warm")).result()  # models loaded, caches warm
            one = await throughput(m, args, 1)
            print(f"1 worker: {one:.1f} generations/min", file=sys.stderr)
            remote = await broker_latency(m, args)
            procs.append(start_worker(tmp, data, 1))
            await until(lambda: len(m.mirror.workers()) == 2)
            warm = [m.imagine(request(args, 990 + i), owner=f"warm{i}") for i in range(2)]
            await asyncio.gather(*(h.result() for h in warm))
            two = await throughput(m, args, 2)
            step = m.status().step_time_s or float("nan")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        server.terminate()
        server.wait(10)
        if not os.environ.get("IRIS_BENCH_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"toy models, {args.jobs} generations of {args.steps} steps at {args.size} px, {args.cutouts} "
        f"cutouts; {os.cpu_count()} CPU cores; step time {step * 1000:.0f} ms"
    )
    print(f"1 worker              : {one:7.1f} generations/min")
    print(f"2 workers             : {two:7.1f} generations/min")
    print(f"ratio 2/1             : {two / one:7.2f}   (target >= 1.5 with a core or GPU per worker)")
    for name, xs in (("event latency, local  ", local), ("broker hop per event  ", remote)):
        print(f"{name}: p50 {pct(xs, 50):7.2f} ms  p95 {pct(xs, 95):7.2f} ms  ({len(xs)} events)")
    print(
        f"p95 local + broker vs local: {(pct(local, 95) + pct(remote, 95)) / pct(local, 95):7.2f}×; "
        f"broker p95 / step time: {pct(remote, 95) / (step * 1000):7.3f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--cutouts", type=int, default=4)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
