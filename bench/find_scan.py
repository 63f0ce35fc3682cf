"""Indexing realistic photos for /find: the bot's channel scan vs a bare download+decode+embed loop.

    python bench/find_scan.py [--n 2000] [--bases 48] [--seed 0] [--stalls-ms 100] [--slow-callbacks 100]

A fake Discord (tests/fake_discord) runs in a child process, so the figures below are the bot's alone; it
serves `--n` messages with one photo each from its CDN the way Discord does: chunked transfer encoding, 32 KiB
pieces with 1 ms between them, signed links. The photos are real JPEGs (tests/photos.py, quality 90,
0.5 to 8 MB, up to 4000 × 3000). Drawing and encoding thousands of them would take an hour on two cores,
so `--bases` of them are drawn (kept in a temp directory for later runs) and each message gets a copy made
distinct by a JPEG comment: other bytes and content hash (the index treats it as a new image), same pixels.

Ours: the real bot (toy CLIP, config.toy.yaml) logged in to the fake; the /find cog's `DiscordIndex.scan`
of the channel, timed from the call to its return (history pages, downloads, decodes, embeddings,
thumbnails, SQLite writes). The download rate limit is lifted (`find_downloads_per_s`) so both sides
download as fast as the CDN serves, with the same concurrency (`find_download_concurrency`).
Bare: the same URLs, 100 at a time (a history page), each downloaded (the same concurrency) then decoded
by PIL in a worker thread to CLIP's size (JPEG draft mode, `find_image_side`); each page is embedded by
the same toy CLIP in batches of 32.

While each side runs a ticker wakes every 10 ms and records how late it woke (the event loop's lag) and
the process's resident memory. It also ticks alone for `--idle-s` first: on a shared, loaded machine the
loop is late now and then with nothing to do, and that floor is printed as "idle". To find what makes
the loop late: `--stalls-ms` samples the loop thread's stack while it is late (a stack ending in the
selector's poll means the thread was waiting for the CPU or the GIL, not running a slow callback);
`--slow-callbacks` turns on asyncio's debug mode, which names each callback that ran too long.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.photos import MB, Photos, corpus, variant  # noqa: E402

PAGE = 100  # messages per history page, as the scan reads them
BATCH = 32  # images per embedding call, as the scan embeds them


# -- the fake Discord, in a child process ---------------------------------------------------------------


class Spliced:
    """`head + tail` as the CDN slices it, without a copy of `tail`: thousands of files share a few."""

    def __init__(self, head: bytes, tail: memoryview) -> None:
        self.head, self.tail = head, tail

    def __len__(self) -> int:
        return len(self.head) + len(self.tail)

    def __getitem__(self, part: slice) -> bytes:
        start, stop, _ = part.indices(len(self))
        cut = len(self.head)
        out = self.head[start:stop] if start < cut else b""
        if stop > cut:
            out += bytes(self.tail[max(start - cut, 0) : stop - cut])
        return out


async def serve(n: int, photo_dir: Path, bases: int, seed: int) -> None:
    from tests.fake_discord import FakeDiscord
    from tests.fake_discord.cdn import image_size

    photos = Photos(photo_dir)
    specs = corpus(bases, seed=seed)
    files = [photos.get(s) for s in specs]
    async with FakeDiscord() as fake:
        guild = fake.add_guild("Photos")
        channel = fake.add_channel(guild, "camera-roll")
        alice = fake.add_member(guild, "alice")
        sizes = []
        for i in range(n):
            base = files[i % len(files)]
            head = variant(base[:2], i)  # SOI + a comment: the rest is the base file
            data: Any = Spliced(head, memoryview(base)[2:])  # served like bytes (len and slices)
            message = await fake.post_message(
                channel, alice, attachments=[(f"IMG_{i:05d}.jpg", data, "image/jpeg")]
            )
            message.attachments[0].dimensions = image_size(base)
            sizes.append(len(data))
        info = {
            "base_url": fake.base_url,
            "api_url": fake.api_url,
            "gateway_url": fake.gateway_url,
            "token": fake.token,
            "guild": guild.id,
            "channel": channel.id,
            "sizes": sizes,
            "chunk_bytes": fake.cdn.chunk_bytes,
            "delay_s": fake.cdn.delay_s,
        }
        print(json.dumps(info), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent is done


# -- measuring ------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the process's peak so far
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Stalls(threading.Thread):
    """Where the event loop's thread is while the loop is stalled: sampled every quarter of `threshold` once
    the ticker has not ticked for `threshold` seconds. Counts per stack say roughly how long each held it."""

    def __init__(self, threshold: float) -> None:
        super().__init__(daemon=True)
        self.threshold = threshold
        self.last_tick = time.monotonic()  # set by the ticker
        self.loop_thread = threading.get_ident()
        self.stacks: Counter[str] = Counter()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.threshold / 4):
            if time.monotonic() - self.last_tick > self.threshold:
                frame = sys._current_frames().get(self.loop_thread)
                if frame is not None:
                    self.stacks["".join(traceback.format_stack(frame, limit=14))] += 1


@dataclass
class Watch:
    """A ticker on the event loop: the largest lateness of a 10 ms sleep, and the peak resident memory."""

    period: float = 0.010
    max_lag: float = 0.0
    peak_rss: int = 0
    ticks: int = 0
    lags: list[float] = field(default_factory=list)  # seconds late, every tick
    stalls: Stalls | None = None  # told of every tick, if given

    def p99(self) -> float:
        return sorted(self.lags)[int(len(self.lags) * 0.99)] if self.lags else 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.period
            await asyncio.sleep(self.period)
            self.lags.append(loop.time() - due)
            self.max_lag = max(self.max_lag, self.lags[-1])
            self.ticks += 1
            if self.stalls is not None:
                self.stalls.last_tick = time.monotonic()
            if self.ticks % 5 == 0:
                self.peak_rss = max(self.peak_rss, rss_bytes())

    async def timed(self, work: Any) -> float:
        if self.stalls is not None:
            self.stalls.last_tick = time.monotonic()
        ticker = asyncio.create_task(self.run())
        self.peak_rss = rss_bytes()
        t0 = time.perf_counter()
        try:
            await work
        finally:
            elapsed = time.perf_counter() - t0
            ticker.cancel()
            self.peak_rss = max(self.peak_rss, rss_bytes())
        return elapsed


def decode(data: bytes, side: int) -> Image.Image:
    """The bare decode: JPEG draft mode to at least `side`, then the shorter side reduced to `side`."""
    encoded = Image.open(io.BytesIO(data))
    encoded.draft("RGB", (side, side))
    image = encoded.convert("RGB")
    w, h = image.size
    scale = side / min(w, h)
    if scale < 1:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    return image


async def bare(urls: list[str], clip: Any, concurrency: int, side: int) -> int:
    sem = asyncio.Semaphore(concurrency)
    done = 0
    async with aiohttp.ClientSession() as session:

        async def fetch_and_decode(url: str) -> Image.Image:
            async with sem, session.get(url) as resp:
                resp.raise_for_status()
                data = await resp.read()
            return await asyncio.to_thread(decode, data, side)

        for lo in range(0, len(urls), PAGE):
            images = await asyncio.gather(*(fetch_and_decode(u) for u in urls[lo : lo + PAGE]))
            vectors = await asyncio.to_thread(clip.encode_images, images, BATCH)
            done += len(vectors)
    return done


def config(info: dict[str, Any], tmp: Path) -> Any:
    from iris.config import parse_config

    data = yaml.safe_load((ROOT / "config.toy.yaml").read_text())
    data["discord"] = {
        "find_allowed_hosts": [info["base_url"]],  # the fake's CDN and media proxy (http on 127.0.0.1)
        "find_downloads_per_s": 100_000,  # no rate limit: both sides download as fast as the CDN serves
    }
    data["manager"] = {"journal_path": str(tmp / "jobs.sqlite3")}
    data["index"] = {"path": str(tmp / "index.sqlite3")}
    return parse_config(data)


async def measure(info: dict[str, Any], tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    slow_ms, idle_s = args.slow_callbacks, args.idle_s
    import yarl
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    from bot.app import IrisBot
    from models.clip import load_clip

    if slow_ms is not None:
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = slow_ms / 1000
        logging.basicConfig(format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("asyncio").setLevel(logging.WARNING)
    cfg = config(info, tmp)
    # The fake acks a heartbeat before discord.py's keep-alive thread records having sent it, so the client
    # computes a "latency" of one heartbeat interval and warns "Can't keep up"; the loop was not behind.
    logging.getLogger("discord.gateway").setLevel(logging.ERROR)
    warm = [Image.new("RGB", (224, 224), (i * 40, 90, 200)) for i in range(4)]
    # The bare loop's CLIP, loaded before the bot logs in (loading blocks; the gateway would fall behind).
    clip = load_clip(cfg.clip.preset, device=cfg.device, precision=cfg.precision, offline=True)
    clip.encode_images(warm)
    Route.BASE = info["api_url"]
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(info["gateway_url"])
    bot = IrisBot(cfg, guild_ready_timeout=0.1)
    runner = asyncio.create_task(bot.start(info["token"]))
    try:
        while not bot.is_ready():
            if runner.done():
                runner.result()
                raise RuntimeError("the bot stopped before it was ready")
            await asyncio.sleep(0.05)
        channel = bot.get_channel(info["channel"])
        cog: Any = bot.get_cog("Find")
        index = cog.discord_index
        await bot.manager.embed_images(warm)  # first forward passes and thread start-up, outside the timing
        rss_before = rss_bytes()
        idle_watch = Watch()  # the machine's own lag: the ticker alone, with the bot idle
        await idle_watch.timed(asyncio.sleep(idle_s))

        stalls = Stalls(args.stalls_ms / 1000) if args.stalls_ms else None
        if stalls is not None:
            stalls.start()
        ours_watch = Watch(stalls=stalls)
        report = None

        async def scan() -> None:
            nonlocal report
            report = await index.scan(channel)

        ours_s = await ours_watch.timed(scan())
        if stalls is not None:
            stalls.done.set()

        # The same files: fresh links from history (not timed), then the bare loop on its own CLIP.
        urls = [m.attachments[0].url async for m in channel.history(limit=None)]  # type: ignore[union-attr]
        bare_watch = Watch()
        count = 0

        async def bare_run() -> None:
            nonlocal count
            dc = cfg.discord
            count = await bare(urls, clip, dc.find_download_concurrency, dc.find_image_side)

        bare_s = await bare_watch.timed(bare_run())
    finally:
        await bot.close()
        await asyncio.wait({runner}, timeout=10)
    assert report is not None
    return {
        "ours_s": ours_s,
        "bare_s": bare_s,
        "indexed": report.indexed,
        "bad": report.bad,
        "problems": report.problems[:3],
        "bare_count": count,
        "ours_lag": ours_watch.max_lag,
        "bare_lag": bare_watch.max_lag,
        "ours_p99": ours_watch.p99(),
        "idle_lag": idle_watch.max_lag,
        "idle_p99": idle_watch.p99(),
        "bare_p99": bare_watch.p99(),
        "ours_rss": ours_watch.peak_rss,
        "bare_rss": bare_watch.peak_rss,
        "rss_before": rss_before,
        "load": os.getloadavg(),
        "stalls": stalls.stacks.most_common(args.stall_stacks) if stalls is not None else [],
        "concurrency": cfg.discord.find_download_concurrency,
        "decodes": cfg.discord.find_decode_concurrency,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="messages, one photo each")
    p.add_argument("--bases", type=int, default=48, help="distinct drawn photos the messages are copies of")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--idle-s", type=float, default=5.0, help="seconds of ticking with the bot idle first")
    p.add_argument(
        "--photos", type=Path, default=Path(tempfile.gettempdir()) / "iris-bench-photos", help="photo cache"
    )
    p.add_argument(
        "--slow-callbacks",
        type=float,
        metavar="MS",
        help="log every event-loop callback that runs longer than MS (asyncio debug mode; slows both sides)",
    )
    p.add_argument(
        "--stalls-ms",
        type=float,
        metavar="MS",
        help="during the scan, sample where the loop's thread is whenever the loop is MS late; print the top",
    )
    p.add_argument("--stall-stacks", type=int, default=3, help="how many stall stacks to print")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child: the fake Discord
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve(args.n, args.photos, args.bases, args.seed))
        return

    photos = Photos(args.photos)
    specs = corpus(args.bases, seed=args.seed)
    t0 = time.perf_counter()
    for spec in specs:
        photos.path(spec)  # drawn once, then kept on disk
    drawn = time.perf_counter() - t0
    child = [sys.executable, __file__, "--serve", "--n", str(args.n), "--bases", str(args.bases)]
    child += ["--seed", str(args.seed), "--photos", str(args.photos)]
    with subprocess.Popen(child, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as fake:
        assert fake.stdout is not None and fake.stdin is not None
        line = fake.stdout.readline()
        if not line:
            raise SystemExit("the fake Discord did not start")
        info = json.loads(line)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                r = asyncio.run(measure(info, Path(tmp), args))
        finally:
            fake.stdin.close()
            fake.wait(timeout=30)

    sizes, mib = info["sizes"], 2**20
    ours, base = r["indexed"] / r["ours_s"], r["bare_count"] / r["bare_s"]
    total, mean = sum(sizes) / MB, sum(sizes) / len(sizes) / MB
    print(
        f"{args.n} photos ({args.bases} drawn, in {drawn:.0f} s; the rest copies made distinct by a JPEG "
        f"comment): {total:.0f} MB, mean {mean:.2f} MB, {min(sizes) / MB:.2f}-{max(sizes) / MB:.2f} MB"
    )
    print(
        f"CDN: chunked, {info['chunk_bytes'] // 1024} KiB pieces {info['delay_s'] * 1000:g} ms apart; "
        f"{r['concurrency']} downloads and {r['decodes']} decodes at once; toy CLIP on CPU"
    )
    print(f"bare download+decode+embed : {base:8.2f} img/s ({r['bare_s']:.1f} s)")
    print(
        f"Iris channel scan          : {ours:8.2f} img/s ({r['ours_s']:.1f} s, "
        f"{r['indexed']} indexed, {r['bad']} bad)"
    )
    if r["problems"]:
        print(f"  first problems: {r['problems']}")
    print(f"ratio ours/bare            : {ours / base:8.3f}")
    lag_ours, lag_bare = r["ours_lag"] * 1000, r["bare_lag"] * 1000
    p99_ours, p99_bare = r["ours_p99"] * 1000, r["bare_p99"] * 1000
    lag_idle, p99_idle = r["idle_lag"] * 1000, r["idle_p99"] * 1000
    print(
        f"largest event-loop lag     : scan {lag_ours:.0f} ms, bare {lag_bare:.0f} ms, idle {lag_idle:.0f} ms"
    )
    print(
        f"p99 event-loop lag         : scan {p99_ours:.0f} ms, bare {p99_bare:.0f} ms, idle {p99_idle:.0f} ms"
    )
    load = " / ".join(f"{x:.1f}" for x in r["load"])
    print(f"machine load average       : {load} (1, 5, 15 min, at the end; {os.cpu_count()} CPUs)")
    rss_ours, rss_bare, rss_before = r["ours_rss"] / mib, r["bare_rss"] / mib, r["rss_before"] / mib
    print(
        f"peak RSS                   : scan {rss_ours:.0f} MiB, bare {rss_bare:.0f} MiB "
        f"(before: {rss_before:.0f} MiB)"
    )

    for stack, samples in r["stalls"]:
        print(f"\nloop stalled here ({samples} samples, {samples * args.stalls_ms / 4:.0f} ms):\n{stack}")


if __name__ == "__main__":
    main()
