"""Faults for the device child, installed with `ProcessManager(config, setup="tests.service.hooks:faults")`
(models/serve.py's --setup). They run inside the child, keyed by words in the job's prompt or text, so
a test picks which job misbehaves and the replacement child behaves the same way."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

FOREVER_S = 10**6


def _entered_hang() -> None:
    """Create the file $IRIS_HANG_MARKER (when set): the test then knows the worker is stuck."""
    marker = os.environ.get("IRIS_HANG_MARKER")
    if marker:
        with open(marker, "w"):
            pass


async def hung(marker: str, timeout: float = 30.0) -> None:
    """Wait (in the test) until a child is inside a hanging step."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(marker):
        if time.monotonic() > deadline:
            raise TimeoutError("no step hung")
        await asyncio.sleep(0.02)


def faults(manager: Any) -> None:
    """In prompts: "hang" — step 3 never returns (it creates $IRIS_HANG_MARKER first, if set);
    "slow" — each step takes 0.3 s more; "die" — the process exits (code 3) before step 2.
    In embed_text queries: "hang" — the short job never returns."""

    def before_step(gen: Any) -> None:
        prompt = gen.request.prompt
        if "hang" in prompt and gen.steps_done == 2:
            _entered_hang()
            time.sleep(FOREVER_S)
        if "slow" in prompt:
            time.sleep(0.3)
        if "die" in prompt and gen.steps_done == 1:
            os._exit(3)

    manager.step_hook = before_step
    run_short = manager._run_short

    def hanging_short(batch: list[Any]) -> None:
        if any(job.kind == "text" and "hang" in job.text for job in batch):
            time.sleep(FOREVER_S)
        run_short(batch)

    manager._run_short = hanging_short


def die_on_restart(manager: Any) -> None:
    """`faults`, and every child after the first exits before its hello (a broken install or bad weights
    that crash the process): the first start creates the file $IRIS_TEST_MARKER, later ones find it."""
    marker = os.environ["IRIS_TEST_MARKER"]
    if os.path.exists(marker):
        os._exit(1)
    with open(marker, "w"):
        pass
    faults(manager)


def die_loading(manager: Any) -> None:
    """The process exits while loading the models (weights that crash the library, say)."""

    async def warm_up() -> None:
        os._exit(4)

    manager.warm_up = warm_up
