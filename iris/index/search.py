"""The in-memory search structure: one per server (or folder) and model, permissions applied as a filter.

A group (a Discord server's channels `discord:GUILD:*`, or one folder) keeps its vectors fp16, one block
per large scope, so a member's readable channels select whole blocks: the filter is exact and costs
nothing per excluded row, and six members with six role sets share one copy. Small scopes (threads) share
one tagged pool, filtered by a mask. Blocks grow by appending (an eighth of spare room at most) and
forget rows by masking; a block is compacted only when a quarter of it is dead. After any write, from
this process or another, only the logged delta (`changes`) is applied.

Scores come from simsimd's fp16 dot product (SIMD, reads the fp16 blocks in place); without simsimd,
numpy converts slices to float32 first (correct, about 15 times slower).
"""

from __future__ import annotations

import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from iris.index.sql import chunks, qs

try:
    import simsimd
except ImportError:  # pragma: no cover - exercised where simsimd is not installed
    simsimd = None

log = logging.getLogger(__name__)

GroupKey = tuple[str, str]  # (group, model id)

SLACK = 8  # a full block grows by 1/SLACK of its size: spare room stays under 12.5 %
MIN_ROOM = 16  # rows; the smallest growth step
COMPACT_DEAD = 4  # a block with more than 1/COMPACT_DEAD masked rows is compacted
SMALL = 512  # rows: a scope with at most this many shares its group's pool instead of its own block
_NUMPY_CHUNK = 4096  # rows converted to float32 at a time by the numpy fallback


def group_of(scope: str) -> str:
    """The group a scope is searched in: a Discord server's channels share one; any other scope is its own."""
    if scope.startswith("discord:"):
        head, sep, _ = scope[len("discord:") :].partition(":")
        if sep:
            return f"discord:{head}:"
    return scope


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

    def kill(self, rowids: np.ndarray, tag: int | None = None) -> int:
        """Mask these items' rows (only those tagged `tag`, if given); returns how many."""
        rowids = rowids[rowids <= self.max_rowid]
        if not len(rowids):
            return 0
        hit = np.isin(self.rowids[: self.n], rowids) & self.alive[: self.n]
        if tag is not None:
            hit &= self.tags[: self.n] == tag
        killed = int(hit.sum())
        if killed:
            self.alive[: self.n][hit] = False
            self.dead += killed
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
            tag = self.tag_of.setdefault(scope, len(self.tag_of))
            self.pool.append(rowids, vecs, tag)
            self.in_pool[scope] = have + len(rowids)
            return
        if have and self.pool is not None:  # outgrew the pool: its rows there move to its own block
            p, tag = self.pool, self.tag_of[scope]
            mine = (p.tags[: p.n] == tag) & p.alive[: p.n]
            old_ids, old_vecs = p.rowids[: p.n][mine].copy(), p.vecs[: p.n][mine].copy()
            p.kill(old_ids, tag)
            rowids, vecs = np.concatenate([old_ids, rowids]), np.concatenate([old_vecs, vecs])
        self.in_pool.pop(scope, None)
        # Spare room from the start, so the first appends copy nothing (a large fresh allocation's
        # pages that are never written are usually not even resident).
        m = len(rowids)
        block = self.blocks[scope] = Block(self.dim, m + max(MIN_ROOM, m // SLACK))
        block.append(rowids, vecs)

    def kill(self, scope: str, rowids: np.ndarray) -> None:
        if scope in self.blocks:
            self.blocks[scope].kill(rowids)
        elif self.in_pool.get(scope) and self.pool is not None:
            self.in_pool[scope] -= self.pool.kill(rowids, self.tag_of[scope])

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


def _vectors(blobs: Sequence[bytes]) -> np.ndarray:
    """(len(blobs), dim) float16 from the stored little-endian blobs."""
    return np.frombuffer(b"".join(blobs), dtype="<f2").reshape(len(blobs), -1)


def _scope_range(group: str) -> tuple[str, str]:
    """scope >= lo AND scope < hi selects exactly the group's scopes."""
    if group.endswith(":"):
        return group, group[:-1] + ";"  # ';' follows ':'
    return group, group + "\0"


class SearchCache:
    """The loaded groups (least recently searched first) and how far into `changes` they are.

    Not locked itself: the owning ImageIndex calls it under its lock, on its connection."""

    def __init__(self, db: sqlite3.Connection, max_bytes: int) -> None:
        self._db = db
        self.max_bytes = max_bytes
        self._groups: OrderedDict[tuple[str, str], GroupVectors] = OrderedDict()
        self._cursor = 0  # last `changes` seq applied to every loaded group
        self._seen: tuple[int, int] | None = None  # (data_version, total_changes) at the last check
        self.loads = 0  # whole-group loads (first search, after eviction or a pruned log)
        self.updates = 0  # delta applications to a loaded group
        self.evictions = 0
        self._warned: set[str] = set()

    def clear(self) -> None:
        self._groups.clear()

    def stats(self) -> dict[str, int]:
        return {
            "groups": len(self._groups),
            "vectors": sum(g.live for g in self._groups.values()),
            "bytes": sum(g.nbytes for g in self._groups.values()),  # allocated, spare room included
            "used_bytes": sum(g.used_bytes for g in self._groups.values()),  # rows in use
            "loads": self.loads,
            "updates": self.updates,
            "evictions": self.evictions,
        }

    def views(self, group: str, model_id: str, scopes: Sequence[str]) -> list[View] | None:
        """The current rows of `scopes` (all in `group`) after applying the delta; None: not loaded."""
        self.catch_up()
        g = self._groups.get((group, model_id))
        if g is None:
            return None
        self._groups.move_to_end((group, model_id))
        return g.views(scopes)

    def adopt(self, group: str, model_id: str, g: GroupVectors, seq: int) -> GroupVectors:
        """Take a group loaded on another connection as of change `seq`: the changes logged since are
        replayed on it (replaying is idempotent), then it joins the others at the common cursor."""
        self.catch_up()
        key = (group, model_id)
        if key in self._groups:  # another thread loaded it meanwhile
            return self._groups[key]
        if seq < self._cursor:
            first = self._db.execute("SELECT MIN(seq) FROM changes").fetchone()[0]
            if first is None or first > seq + 1:  # pruned meanwhile: load again, under the lock
                g, _ = load_group(self._db, group, model_id)
            else:
                rows = self._db.execute(
                    "SELECT seq, item, scope, content_hash, model_id FROM changes "
                    "WHERE seq > ? AND seq <= ? ORDER BY seq",
                    (seq, self._cursor),
                ).fetchall()
                self._replay(rows, {key: g})
        self._groups[key] = g
        self.loads += 1
        self._enforce_bound(keep=key)
        return g

    # -- keeping up with the database ------------------------------------------------------------------
    def _last_seq(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return int(row[0]) if row else 0

    def catch_up(self) -> None:
        """Apply every change logged since the last call, whichever connection made it."""
        # data_version moves when another connection commits, total_changes when this one writes.
        seen = (int(self._db.execute("PRAGMA data_version").fetchone()[0]), self._db.total_changes)
        if seen == self._seen:
            return
        self._seen = seen
        if not self._groups:
            self._cursor = self._last_seq()
            return
        first = self._db.execute("SELECT MIN(seq) FROM changes").fetchone()[0]
        if (first or self._last_seq() + 1) > self._cursor + 1:
            log.info("search: the change log was pruned past this reader; reloading on demand")
            self._groups.clear()
            self._cursor = self._last_seq()
            return
        rows = self._db.execute(
            "SELECT seq, item, scope, content_hash, model_id FROM changes WHERE seq > ? ORDER BY seq",
            (self._cursor,),
        ).fetchall()
        if not rows:
            return
        self._cursor = rows[-1][0]
        self._replay(rows, self._groups)

    def _replay(
        self, rows: Sequence[tuple[int, Any, Any, Any, Any]], groups: Mapping[GroupKey, GroupVectors]
    ) -> None:
        """Apply logged changes (seq, item, scope, content_hash, model_id) to `groups`."""
        items: dict[str, set[int]] = {}  # scope -> changed item rowids
        hashes: dict[str, set[str]] = {}  # model -> hashes given a vector
        for _, item, scope, content_hash, model_id in rows:
            if item is not None:
                items.setdefault(scope, set()).add(item)
            else:
                hashes.setdefault(model_id, set()).add(content_hash)
        models = {m for _, m in groups}
        for model_id, hs in hashes.items():
            if model_id in models:
                for chunk in chunks(sorted(hs)):
                    for rowid, scope in self._db.execute(
                        f"SELECT rowid, scope FROM items WHERE content_hash IN ({qs(chunk)})", chunk
                    ):
                        items.setdefault(scope, set()).add(rowid)
        for (group, model_id), g in groups.items():
            touched = {s: ids for s, ids in items.items() if group_of(s) == group}
            if touched:
                self._apply(g, model_id, touched)
                self.updates += 1

    def _apply(self, g: GroupVectors, model_id: str, touched: dict[str, set[int]]) -> None:
        """Mask every touched item, then append the ones that are (still) searchable."""
        for scope, ids in touched.items():
            g.kill(scope, np.fromiter(ids, dtype=np.int64, count=len(ids)))
        every = sorted(i for ids in touched.values() for i in ids)
        fresh: dict[str, tuple[list[int], list[bytes]]] = {}
        for chunk in chunks(every):
            for rowid, scope, blob in self._db.execute(
                "SELECT i.rowid, i.scope, v.vector FROM items i JOIN vectors v "
                "ON v.content_hash = i.content_hash AND v.model_id = ? "
                f"WHERE i.status = 'ok' AND i.rowid IN ({qs(chunk)})",
                (model_id, *chunk),
            ):
                got = fresh.setdefault(scope, ([], []))
                got[0].append(rowid)
                got[1].append(blob)
        for scope, (rowids, blobs) in fresh.items():
            g.add(scope, np.array(rowids, dtype=np.int64), _vectors(blobs))

    def _enforce_bound(self, keep: tuple[str, str]) -> None:
        """Drop least recently searched groups while over the bound; a lone group over it stays loaded
        (a search needs it whole) and is logged once."""
        total = sum(g.nbytes for g in self._groups.values())
        for key in list(self._groups):
            if total <= self.max_bytes:
                return
            if key == keep or len(self._groups) == 1:
                continue
            total -= self._groups.pop(key).nbytes
            self.evictions += 1
        if total > self.max_bytes and keep[0] not in self._warned:
            self._warned.add(keep[0])
            log.warning(
                "search: %s alone holds %.0f MiB of vectors, over index.search_memory_mib (%.0f MiB)",
                keep[0],
                total / 2**20,
                self.max_bytes / 2**20,
            )


def load_group(db: sqlite3.Connection, group: str, model_id: str) -> tuple[GroupVectors, int]:
    """Every searchable vector of `group` for `model_id`, and the last change the snapshot includes.

    One read transaction, so the rows and the change number agree; on a connection of its own it holds
    no lock of the index, so writers and other servers' searches go on while a big server loads."""
    lo, hi = _scope_range(group)
    db.execute("BEGIN")
    try:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        seq = int(row[0]) if row else 0
        cur = db.execute(
            "SELECT i.rowid, i.scope, v.vector FROM items i JOIN vectors v "
            "ON v.content_hash = i.content_hash AND v.model_id = ? "
            "WHERE i.status = 'ok' AND i.scope >= ? AND i.scope < ? ORDER BY i.scope",
            (model_id, lo, hi),
        )
        g = GroupVectors(0)  # learns its dimension from the first rows; an empty group stays empty
        scope, ids, blobs = "", list[int](), list[bytes]()
        while batch := cur.fetchmany(4096):
            for rowid, s, blob in batch:
                if s != scope and ids:
                    g.add(scope, np.array(ids, dtype=np.int64), _vectors(blobs))
                    ids, blobs = [], []
                scope = s
                ids.append(rowid)
                blobs.append(blob)
        if ids:
            g.add(scope, np.array(ids, dtype=np.int64), _vectors(blobs))
    finally:
        db.execute("COMMIT")
    return g, seq
