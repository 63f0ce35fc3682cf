"""Figures for the device child and its watchdog on the toy models (not a test; prints seconds):

    OMP_NUM_THREADS=1 python -m tests.service.measure_watchdog

- start: ProcessManager.start() (spawn, torch import, journal open, hello) and warm_up (models loaded);
- a step that hangs (job_deadline_s 2, watchdog_grace_s 0.5): from the job's start to its Failed event,
  from that to the next queued job's Started on the new child, and a classify sent during the hang
  (answered by the new child; the short job's grace finds the hang first);
- close(): with an idle child.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from PIL import Image

from iris.service.events import Failed, Started
from iris.service.process import ProcessManager
from tests.service import hooks
from tests.service.test_process import _config, req


async def main(tmp: Path) -> None:
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
        f"Started on the new child {t2 - t1:.2f} s"
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
