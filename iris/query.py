"""/find's query algebra, like rclip's: `"a cat +sunset -text"`, each term with an optional `:weight`."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from iris.errors import BadRequest
from iris.prompts import split_weight

_SPLIT = re.compile(r"(?:^|\s+)([+-])(?=\S)")


@dataclass(frozen=True)
class QueryTerm:
    text: str
    weight: float  # negative: away from this text


def parse_query(query: str, max_chars: int = 500) -> list[QueryTerm]:
    """`"a cat +sunset:0.5 -text"` → [a cat (1), sunset (0.5), text (-1)]. The first term may be empty
    only when an image is the query."""
    if len(query) > max_chars:
        raise BadRequest(f"the query is {len(query):,} characters long; the limit is {max_chars:,}")
    parts = _SPLIT.split(query.strip())
    terms: list[QueryTerm] = []
    sign = 1.0
    for i, part in enumerate(parts):
        if i % 2 == 1:
            sign = 1.0 if part == "+" else -1.0
            continue
        part = part.strip()
        if not part:
            continue
        w = split_weight(part)  # the same `text:weight` syntax as prompts
        terms.append(QueryTerm(w.text, sign * w.weight))
        sign = 1.0
    return terms


def combine(vectors: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Weighted sum of unit vectors, renormalised (the query direction)."""
    if not vectors:
        raise BadRequest("give a text query or an image to search with")
    v = np.sum([w * np.asarray(x, dtype=np.float32) for x, w in zip(vectors, weights, strict=True)], axis=0)
    norm = float(np.linalg.norm(v))
    if norm < 1e-6:
        raise BadRequest("the query's terms cancel each other out")
    return (v / norm).astype(np.float32)
