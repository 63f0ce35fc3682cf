"""Interleaved timing: alternate baseline and candidate runs so machine noise hits both alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(
    baseline: Callable[[], object], ours: Callable[[], object], repeats: int
) -> tuple[list[float], list[float]]:
    baseline()
    ours()  # warm-up: allocator, kernels, caches
    base_t, ours_t = [], []
    for _ in range(repeats):
        for fn, acc in ((baseline, base_t), (ours, ours_t)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return base_t, ours_t


def median(xs: list[float]) -> float:
    return statistics.median(xs)
