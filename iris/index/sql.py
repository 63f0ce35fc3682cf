"""Small SQL helpers shared by the index's modules: parameter lists and chunking under SQLite's limits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")


def qs(items: Sequence[object]) -> str:
    """'?,?,?' for an IN (...) list of len(items) parameters."""
    return ",".join("?" * len(items))


def chunks(items: Sequence[T], n: int = 500) -> Iterable[Sequence[T]]:
    """Slices of at most n items: IN lists stay far below SQLite's parameter limit."""
    for i in range(0, len(items), n):
        yield items[i : i + n]
