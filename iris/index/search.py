"""The in-memory search structures of an index: one per server (or folder) and model, kept current.

A group (a Discord server's channels `discord:GUILD:*`, or one folder) is loaded once, from one
snapshot, on a connection of its own; after that every write, from this process or another, reaches it
as a delta read from the `changes` log (new rows appended, removed ones masked), never a rebuild.
`SearchCache` bounds the memory of all groups together, dropping the least recently searched first.
It reads the database through a `ChangeLog`: `SqliteLog` here, `PgLog` in `iris.index.pg`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from iris.index.sql import chunks, qs
from iris.index.vectors import GroupVectors, View

log = logging.getLogger(__name__)

GroupKey = tuple[str, str]  # (group, model id)
Change = tuple[int, Any, Any, Any, Any]  # (seq, item, scope, content_hash, model_id) of the `changes` log
Row = tuple[int, str, bytes]  # (item id, scope, vector as little-endian float16 bytes)


class ChangeLog(Protocol):
    """What a search structure reads from its database; called under the owning index's lock."""

    def marker(self) -> object:
        """A value that moves whenever any connection commits a change (cheap: asked on every search)."""

    def last_seq(self) -> int:
        """The newest `changes` seq, 0 for none."""

    def first_seq(self) -> int | None:
        """The oldest `changes` seq still kept; None for an empty log."""

    def changes(self, after: int, upto: int | None = None) -> list[Change]:
        """The log entries after `after` (up to `upto`), oldest first."""

    def items_with(self, hashes: Sequence[str]) -> Iterable[tuple[int, str]]:
        """(item id, scope) of every item whose content is one of `hashes`."""

    def searchable(self, model_id: str, ids: Sequence[int]) -> Iterable[Row]:
        """The rows of these items that are searchable now: status ok, with a vector for `model_id`."""

    def load(self, group: str, model_id: str) -> tuple[GroupVectors, int]:
        """Every searchable row of `group` and the last change the snapshot includes, in one snapshot."""


def group_of(scope: str) -> str:
    """The group a scope is searched in: a Discord server's channels share one; any other scope is its own."""
    if scope.startswith("discord:"):
        head, sep, _ = scope[len("discord:") :].partition(":")
        if sep:
            return f"discord:{head}:"
    return scope


def _vectors(blobs: Sequence[bytes]) -> np.ndarray:
    """(len(blobs), dim) float16 from the stored little-endian blobs."""
    return np.frombuffer(b"".join(blobs), dtype="<f2").reshape(len(blobs), -1)


def scope_range(group: str) -> tuple[str, str]:
    """scope >= lo AND scope < hi selects exactly the group's scopes."""
    if group.endswith(":"):
        return group, group[:-1] + ";"  # ';' follows ':'
    return group, group + "\0"


class SearchCache:
    """The loaded groups (least recently searched first) and how far into `changes` they are.

    Not locked itself: the owning index calls it under its lock, on its connection."""

    def __init__(self, log: ChangeLog, max_bytes: int) -> None:
        self._log = log
        self.max_bytes = max_bytes
        self._groups: OrderedDict[tuple[str, str], GroupVectors] = OrderedDict()
        self._cursor = 0  # last `changes` seq applied to every loaded group
        self._seen: object = None  # the log's marker at the last check
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
            first = self._log.first_seq()
            if first is None or first > seq + 1:  # pruned meanwhile: load again, under the lock
                g, _ = self._log.load(group, model_id)
            else:
                self._replay(self._log.changes(seq, self._cursor), {key: g})
        self._groups[key] = g
        self.loads += 1
        self._enforce_bound(keep=key)
        return g

    # -- keeping up with the database ------------------------------------------------------------------
    def catch_up(self) -> None:
        """Apply every change logged since the last call, whichever connection made it."""
        seen = self._log.marker()
        if seen == self._seen:
            return
        # The marker and the cursor move only once the changes are applied: a read that fails half way
        # (a locked file, a dropped connection) is done again by the next call, never skipped.
        if not self._groups:
            self._cursor = self._log.last_seq()
        else:
            first = self._log.first_seq()
            if (first or self._log.last_seq() + 1) > self._cursor + 1:
                log.info("search: the change log was pruned past this reader; reloading on demand")
                self._groups.clear()
                self._cursor = self._log.last_seq()
            elif rows := self._log.changes(self._cursor):
                self._replay(rows, self._groups)
                self._cursor = rows[-1][0]
        self._seen = seen

    def _replay(self, rows: Sequence[Change], groups: Mapping[GroupKey, GroupVectors]) -> None:
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
                for rowid, scope in self._log.items_with(sorted(hs)):
                    items.setdefault(scope, set()).add(rowid)
        for (group, model_id), g in groups.items():
            touched = {s: ids for s, ids in items.items() if group_of(s) == group}
            if touched:
                self._apply(g, model_id, touched)
                self.updates += 1

    def _apply(self, g: GroupVectors, model_id: str, touched: dict[str, set[int]]) -> None:
        """Mask every touched item, then append the ones that are (still) searchable."""
        g.kill(touched)
        every = sorted(i for ids in touched.values() for i in ids)
        fresh: dict[str, tuple[list[int], list[bytes]]] = {}
        for rowid, scope, blob in self._log.searchable(model_id, every):
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


def build_group(batches: Iterable[Sequence[Row]]) -> GroupVectors:
    """A group from its rows, sorted by scope, in batches."""
    g = GroupVectors(0)  # learns its dimension from the first rows; an empty group stays empty
    scope, ids, blobs = "", list[int](), list[bytes]()
    for batch in batches:
        for rowid, s, blob in batch:
            if s != scope and ids:
                g.add(scope, np.array(ids, dtype=np.int64), _vectors(blobs))
                ids, blobs = [], []
            scope = s
            ids.append(rowid)
            blobs.append(blob)
    if ids:
        g.add(scope, np.array(ids, dtype=np.int64), _vectors(blobs))
    return g


class SqliteLog:
    """The `ChangeLog` of an SQLite index file, on one of its connections."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def marker(self) -> object:
        # data_version moves when another connection commits, total_changes when this one writes.
        return (int(self._db.execute("PRAGMA data_version").fetchone()[0]), self._db.total_changes)

    def last_seq(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return int(row[0]) if row else 0

    def first_seq(self) -> int | None:
        first = self._db.execute("SELECT MIN(seq) FROM changes").fetchone()[0]
        return None if first is None else int(first)

    def changes(self, after: int, upto: int | None = None) -> list[Change]:
        q = "SELECT seq, item, scope, content_hash, model_id FROM changes WHERE seq > ? AND seq <= ?"
        q += " ORDER BY seq"
        return self._db.execute(q, (after, 2**62 if upto is None else upto)).fetchall()

    def items_with(self, hashes: Sequence[str]) -> Iterable[tuple[int, str]]:
        for chunk in chunks(hashes):
            yield from self._db.execute(
                f"SELECT rowid, scope FROM items WHERE content_hash IN ({qs(chunk)})", chunk
            )

    def searchable(self, model_id: str, ids: Sequence[int]) -> Iterable[Row]:
        for chunk in chunks(ids):
            yield from self._db.execute(
                "SELECT i.rowid, i.scope, v.vector FROM items i JOIN vectors v "
                "ON v.content_hash = i.content_hash AND v.model_id = ? "
                f"WHERE i.status = 'ok' AND i.rowid IN ({qs(chunk)})",
                (model_id, *chunk),
            )

    def load(self, group: str, model_id: str) -> tuple[GroupVectors, int]:
        """One read transaction, so the rows and the change number agree; on a connection of its own it
        holds no lock of the index, so writers and other servers' searches go on while a big server loads."""
        lo, hi = scope_range(group)
        self._db.execute("BEGIN")
        try:
            seq = self.last_seq()
            cur = self._db.execute(
                "SELECT i.rowid, i.scope, v.vector FROM items i JOIN vectors v "
                "ON v.content_hash = i.content_hash AND v.model_id = ? "
                "WHERE i.status = 'ok' AND i.scope >= ? AND i.scope < ? ORDER BY i.scope",
                (model_id, lo, hi),
            )
            g = build_group(iter(lambda: cur.fetchmany(4096), []))
        finally:
            self._db.execute("COMMIT")
        return g, seq
