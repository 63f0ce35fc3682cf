"""The search structure's arrays: fp16 blocks of rows, masked deletes, and exact top-k over views of them.

Pure numpy (and simsimd): no SQL here. A group (one server, or one folder) holds a block per large scope
and one tagged pool for the small ones; a search scores only the blocks its allowed scopes name, so the
permission filter is exact and the one copy serves every member.

Scores come from simsimd's fp16 dot product (SIMD, reads the fp16 blocks in place); without simsimd,
numpy converts slices to float32 first (correct, about 15 times slower).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

try:
    import simsimd
except ImportError:  # pragma: no cover - exercised where simsimd is not installed
    simsimd = None  # type: ignore[assignment]

SLACK = 8  # a full block grows by 1/SLACK of its size: spare room stays under 12.5 %
MIN_ROOM = 16  # rows; the smallest growth step
COMPACT_DEAD = 4  # a block with more than 1/COMPACT_DEAD masked rows is compacted
SMALL = 512  # rows: a scope with at most this many shares its group's pool instead of its own block
_NUMPY_CHUNK = 4096  # rows converted to float32 at a time by the numpy fallback


def dots(mat: np.ndarray, q16: np.ndarray, out: np.ndarray) -> None:
    """out[i] = mat[i] · q, in float32: mat (n, d) float16 contiguous, q16 (d,) float16, out (n,) float32."""
    if not len(mat):
        return
    if simsimd is not None:
        # Not cdist(out=...): in simsimd 6.5 that path drops a reference to None on every call.
        out[:] = np.asarray(simsimd.cdist(q16[None, :], mat, metric="dot", out_dtype="float32"))[0]
        return
    q = q16.astype(np.float32)
    for lo in range(0, len(mat), _NUMPY_CHUNK):
        np.matmul(mat[lo : lo + _NUMPY_CHUNK].astype(np.float32), q, out=out[lo : lo + _NUMPY_CHUNK])


class Block:
    """Rows [0, n) of vectors, `alive` False where an item was removed since; `tags` name each row's scope
    in a group's shared pool of small scopes."""

    __slots__ = ("alive", "dead", "max_rowid", "n", "rowids", "tags", "vecs")

    def __init__(self, dim: int, capacity: int) -> None:
        self.vecs = np.empty((capacity, dim), dtype=np.float16)  # (capacity, dim)
        self.rowids = np.empty(capacity, dtype=np.int64)  # items.rowid of each row
        self.tags = np.zeros(capacity, dtype=np.int32)
        self.alive = np.ones(capacity, dtype=bool)
        self.n = 0
        self.dead = 0
        self.max_rowid = -1  # no row above it: a brand-new item's rowid is skipped without a search

    @property
    def nbytes(self) -> int:
        return self.vecs.nbytes + self.rowids.nbytes + self.tags.nbytes + self.alive.nbytes

    @property
    def used_bytes(self) -> int:
        return self.nbytes * self.n // max(1, len(self.rowids))

    @property
    def live(self) -> int:
        return self.n - self.dead

    def _resize(self, capacity: int) -> None:
        keep = self.alive[: self.n] if self.dead else slice(0, self.n)
        vecs, rowids, tags = self.vecs[: self.n][keep], self.rowids[: self.n][keep], self.tags[: self.n][keep]
        self.n, self.dead = len(rowids), 0
        self.vecs = np.empty((capacity, self.vecs.shape[1]), dtype=np.float16)
        self.rowids = np.empty(capacity, dtype=np.int64)
        self.tags = np.zeros(capacity, dtype=np.int32)
        self.alive = np.ones(capacity, dtype=bool)
        self.vecs[: self.n], self.rowids[: self.n], self.tags[: self.n] = vecs, rowids, tags

    def append(self, rowids: np.ndarray, vecs: np.ndarray, tag: int = 0) -> None:
        m = len(rowids)
        if self.n + m > len(self.rowids):
            need = self.live + m
            self._resize(need + max(MIN_ROOM, need // SLACK))
        self.vecs[self.n : self.n + m] = vecs
        self.rowids[self.n : self.n + m] = rowids
        self.tags[self.n : self.n + m] = tag
        self.alive[self.n : self.n + m] = True
        self.n += m
        if m:
            self.max_rowid = max(self.max_rowid, int(rowids.max()))

    def kill(self, rowids: np.ndarray) -> np.ndarray:
        """Mask these items' rows; returns the tags of the rows masked (one per row)."""
        rowids = rowids[rowids <= self.max_rowid]
        if not len(rowids):
            return self.tags[:0]
        hit = np.isin(self.rowids[: self.n], rowids) & self.alive[: self.n]
        killed = self.tags[: self.n][hit]  # a copy: compaction below replaces the arrays
        if len(killed):
            self.alive[: self.n][hit] = False
            self.dead += len(killed)
            if self.dead * COMPACT_DEAD > self.n:
                self._resize(self.live + max(MIN_ROOM, self.live // SLACK))
        return killed


class GroupVectors:
    """The vectors of one group for one model: a block per large scope, one shared pool for small ones.

    Scoring a block costs a kernel call (~30 µs) whatever its size, so a server with thousands of small
    threads keeps them in one pool, scored in one call with a mask (or gathered when few are allowed)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.blocks: dict[str, Block] = {}  # scopes with more than SMALL rows
        self.pool: Block | None = None  # the rows of every smaller scope, tagged
        self.tag_of: dict[str, int] = {}  # scope -> its tag in the pool
        self.scope_of: list[str] = []  # tag -> scope
        self.in_pool: dict[str, int] = {}  # scope -> its live rows in the pool

    def _all(self) -> list[Block]:
        return [*self.blocks.values(), *([self.pool] if self.pool is not None else [])]

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._all())

    @property
    def used_bytes(self) -> int:
        return sum(b.used_bytes for b in self._all())

    @property
    def live(self) -> int:
        return sum(b.live for b in self._all())

    def add(self, scope: str, rowids: np.ndarray, vecs: np.ndarray) -> None:
        self.dim = self.dim or vecs.shape[1]  # an empty group learns its dimension from its first rows
        block = self.blocks.get(scope)
        if block is not None:
            block.append(rowids, vecs)
            return
        have = self.in_pool.get(scope, 0)
        if have + len(rowids) <= SMALL:
            if self.pool is None:
                self.pool = Block(self.dim, len(rowids) + MIN_ROOM)
            if scope not in self.tag_of:
                self.tag_of[scope] = len(self.scope_of)
                self.scope_of.append(scope)
            tag = self.tag_of[scope]
            self.pool.append(rowids, vecs, tag)
            self.in_pool[scope] = have + len(rowids)
            return
        if have and self.pool is not None:  # outgrew the pool: its rows there move to its own block
            p, tag = self.pool, self.tag_of[scope]
            mine = (p.tags[: p.n] == tag) & p.alive[: p.n]
            old_ids, old_vecs = p.rowids[: p.n][mine].copy(), p.vecs[: p.n][mine].copy()
            p.kill(old_ids)
            rowids, vecs = np.concatenate([old_ids, rowids]), np.concatenate([old_vecs, vecs])
        self.in_pool.pop(scope, None)
        # Spare room from the start, so the first appends copy nothing (a large fresh allocation's
        # pages that are never written are usually not even resident).
        m = len(rowids)
        block = self.blocks[scope] = Block(self.dim, m + max(MIN_ROOM, m // SLACK))
        block.append(rowids, vecs)

    def kill(self, touched: Mapping[str, Collection[int]]) -> None:
        """Mask the rows of these items (scope -> item rowids): own blocks one by one, the pool in one
        pass whatever the number of small scopes touched."""
        pooled = []
        for scope, ids in touched.items():
            rowids = np.fromiter(ids, dtype=np.int64, count=len(ids))
            if scope in self.blocks:
                self.blocks[scope].kill(rowids)
            elif self.in_pool.get(scope):
                pooled.append(rowids)
        if pooled and self.pool is not None:
            tags, counts = np.unique(self.pool.kill(np.concatenate(pooled)), return_counts=True)
            for tag, count in zip(tags.tolist(), counts.tolist(), strict=True):
                self.in_pool[self.scope_of[tag]] -= count

    def views(self, scopes: Iterable[str]) -> list[View]:
        """The rows of `scopes` as they are now: safe to score without the lock, while writes go on."""
        out, tags = [], []
        for s in dict.fromkeys(scopes):
            b = self.blocks.get(s)
            if b is not None and b.live:
                out.append(View(b.vecs[: b.n], b.alive[: b.n].copy() if b.dead else None, b.rowids[: b.n]))
            elif b is None and self.in_pool.get(s):
                tags.append(self.tag_of[s])
        p = self.pool
        if tags and p is not None:
            mask = np.isin(p.tags[: p.n], tags) & p.alive[: p.n]
            picked = int(mask.sum())
            if picked * 4 < p.n:  # a few allowed: copy them out rather than score the whole pool
                rows = np.flatnonzero(mask)
                out.append(View(p.vecs[rows], None, p.rowids[rows]))
            elif picked:
                out.append(View(p.vecs[: p.n], mask, p.rowids[: p.n]))
        return out


@dataclass(frozen=True)
class View:
    """A block frozen for one search. Appends write past its rows and compaction makes new arrays, so
    its arrays never change under it; `alive` is a copy (None: every row alive)."""

    vecs: np.ndarray  # (n, dim) float16
    alive: np.ndarray | None  # (n,) bool
    rowids: np.ndarray  # (n,) int64


def top_k(views: Sequence[View], q: np.ndarray, k: int) -> list[tuple[float, int]]:
    """The best k (score, item rowid) over the rows of `views`, best first."""
    total = sum(len(v.rowids) for v in views)
    if not total or k <= 0:
        return []
    if any(v.vecs.shape[1] != q.shape[0] for v in views):
        raise ValueError(f"the query has {q.shape[0]} dimensions, the index {views[0].vecs.shape[1]}")
    q16 = q.astype(np.float16)
    scores = np.empty(total, dtype=np.float32)  # every allowed row's score, blocks end to end
    starts = np.empty(len(views), dtype=np.int64)
    at = 0
    for i, v in enumerate(views):
        n = len(v.rowids)
        starts[i] = at
        out = scores[at : at + n]
        dots(v.vecs, q16, out)
        if v.alive is not None:
            out[~v.alive] = -np.inf
        at += n
    k = min(k, total)
    best = np.argpartition(-scores, k - 1)[:k] if k < total else np.arange(total)
    best = best[np.argsort(-scores[best], kind="stable")]
    which = np.searchsorted(starts, best, side="right") - 1
    return [
        (float(scores[j]), int(views[w].rowids[j - starts[w]]))
        for j, w in zip(best.tolist(), which.tolist(), strict=True)
        if scores[j] != -np.inf
    ]
