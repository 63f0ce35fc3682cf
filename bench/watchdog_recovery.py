"""The device child and its watchdog on the toy models, against a bare baseline in the same run:

    OMP_NUM_THREADS=1 python bench/watchdog_recovery.py

The baseline is what any replacement must pay: a bare Python process that imports torch and open_clip and
loads the toy CLIP. The ratio says what the watchdog's replacement costs on top (journal, hello, warm-up,
re-queueing).

- start: ProcessManager.start() (spawn, torch import, journal open, hello) and warm_up (models loaded);
- a step that hangs (job_deadline_s 2, watchdog_grace_s 0.5): from the job's start to its Failed event,
  from that to the next queued job's Started on the new child, and a classify sent during the hang
  (answered by the new child; the short job's grace finds the hang first);
- close(): with an idle child.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from iris.service.events import Failed, Started
from iris.service.process import ProcessManager
from tests.service import hooks
from tests.service.test_process import _config, req


def bare_process_s() -> float:
    """A bare process with the toy CLIP loaded: the floor of any replacement."""
    t = time.monotonic()
    code = "from models.engine import Engine\nfrom iris.config import load_config\n"
    code += "Engine(load_config('config.toy.yaml')).clip\n"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    return time.monotonic() - t


async def main(tmp: Path) -> None:
    bare = bare_process_s()
    print(f"bare process, toy CLIP loaded: {bare:.2f} s")
    cfg = _config(tmp, job_deadline_s=2.0)
    pm = ProcessManager(cfg, setup="tests.service.hooks:faults")
    t = time.monotonic()
    await pm.start()
    print(f"start (spawn to hello): {time.monotonic() - t:.2f} s")
    t = time.monotonic()
    await pm.warm_up()
    print(f"warm_up (toy models):   {time.monotonic() - t:.2f} s")

    hung = pm.imagine(req("hang, red circle", steps=6), "alice")
    after = pm.imagine(req("a blue square", steps=3), "bob")
    async for ev in hung.events():
        if isinstance(ev, Started):
            t0 = time.monotonic()
        if isinstance(ev, Failed):
            t1 = time.monotonic()
    async for ev in after.events():
        if isinstance(ev, Started):
            t2 = time.monotonic()
    print(
        f"hung job: start to Failed {t1 - t0:.2f} s (deadline 2 + grace 0.5); Failed to the next job's "
        f"Started on the new child {t2 - t1:.2f} s (ratio to the bare process: {(t2 - t1) / bare:.2f})"
    )

    os.remove(os.environ["IRIS_HANG_MARKER"])  # made by the first hang
    pm.imagine(req("hang, red circle", steps=6), "alice")
    await hooks.hung(os.environ["IRIS_HANG_MARKER"])
    t = time.monotonic()
    await pm.classify(Image.new("RGB", (64, 64), "red"), ["red circle", "blue square"])
    print(f"classify sent during a hang: answered after {time.monotonic() - t:.2f} s (grace 0.5)")
    t = time.monotonic()
    await pm.close()
    print(f"close (idle child): {time.monotonic() - t:.2f} s; restarts: {pm.restarts}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        os.environ["IRIS_HANG_MARKER"] = os.path.join(d, "hung")
        asyncio.run(main(Path(d)))
