"""What every index backend shares: its plain data, and search through the in-memory structures.

A backend (SQLite in `store`, PostgreSQL in `pg`) keeps items and vectors; searching is the same for
both: `search.SearchCache` holds one structure per server, kept current from the backend's change log,
and `scopes` filter it exactly (the permission rule lives here once).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self

import numpy as np

from iris.config import IndexConfig
from iris.index.search import SearchCache, group_of
from iris.index.vectors import GroupVectors, View, top_k

DAY_S = 86_400.0
PRUNE_EVERY_S = 3_600.0  # retention runs at most this often, on saved queries and deletes
CHANGES_KEPT = 200_000  # log entries kept; a reader further behind reloads instead of replaying


@dataclass(frozen=True)
class ScanState:
    newest: int | None = None
    oldest: int | None = None
    complete: bool = False


@dataclass(frozen=True)
class Hit:
    scope: str
    key: str
    score: float  # cosine similarity to the query
    meta: dict[str, Any]


def message_of(key: str) -> str | None:
    """The message id a Discord item key ("MESSAGE/ATTACHMENT") belongs to; None for a folder path."""
    head, sep, _ = key.partition("/")
    return head if sep and head.isdigit() else None


def prefix_end(prefix: str) -> str:
    """The first string after every string that starts with `prefix` (not empty): `col >= prefix AND
    col < prefix_end(prefix)` is exact (LIKE folds case and reads `_` as any character) and walks an index
    (the columns compare bytewise in both backends)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class SearchingIndex:
    """What every backend shares over its own calls: search, `upsert` as one row of `upsert_many`,
    retention when due, the context manager. The backend sets `config`, `clock`, `_lock`, `_search` and
    `_pruned_at`, and reads and writes its rows."""

    config: IndexConfig
    clock: Callable[[], float]
    _lock: threading.RLock
    _search: SearchCache
    _pruned_at: float  # clock() time of the last retention pass

    def close(self) -> None:
        raise NotImplementedError

    def prune(self) -> None:
        raise NotImplementedError

    def upsert_many(
        self, scope: str, rows: Iterable[tuple[str, str | None, dict[str, Any], str, bytes | None]]
    ) -> set[str]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def upsert(
        self,
        scope: str,
        key: str,
        content_hash: str | None,
        meta: dict[str, Any],
        status: str = "ok",
        thumb: bytes | None = None,
    ) -> bool:
        """Add or update an item; False (and nothing written) when its message was deleted: a delete wins.

        `thumb` replaces the stored thumbnail; None keeps it only while the content stays the same."""
        return not self.upsert_many(scope, [(key, content_hash, meta, status, thumb)])

    def _maybe_prune(self) -> None:
        if self.clock() - self._pruned_at >= PRUNE_EVERY_S:
            self.prune()

    def _item_rows(self, ids: Sequence[int]) -> dict[int, tuple[str, str, dict[str, Any]]]:
        """id -> (scope, key, meta) of the items that still exist; called under the lock."""
        raise NotImplementedError

    def _load_detached(self, group: str, model_id: str) -> tuple[GroupVectors, int]:
        """`ChangeLog.load` on a connection of its own, without the lock."""
        raise NotImplementedError

    def search(self, query: np.ndarray, scopes: Sequence[str], model_id: str, k: int = 10) -> list[Hit]:
        """Top-k items of `scopes` by cosine similarity to the unit vector `query`.

        Each server (or folder) has one in-memory structure; `scopes` is a filter over it, exact."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        by_group: dict[str, list[str]] = {}
        for s in dict.fromkeys(scopes):
            by_group.setdefault(group_of(s), []).append(s)
        views = [v for group, allowed in by_group.items() for v in self._views(group, model_id, allowed)]
        found = top_k(views, q, k)  # without the lock: writes and other searches go on
        with self._lock:
            rows = self._item_rows([rowid for _, rowid in found])
        # An item deleted between scoring and this read is left out; its id, if reused by then, must
        # still name an allowed scope.
        asked = set(scopes)
        hits = [
            Hit(rows[rid][0], rows[rid][1], score, rows[rid][2])
            for score, rid in found
            if rid in rows and rows[rid][0] in asked
        ]
        hits.sort(key=lambda h: (-h.score, h.scope, h.key))
        return hits

    def warm(self, scope: str, model_id: str) -> None:
        """Load the search structure of `scope`'s server (or folder) now, ahead of its first search."""
        self._views(group_of(scope), model_id, [])

    def _views(self, group: str, model_id: str, allowed: Sequence[str]) -> list[View]:
        """`allowed`'s rows in `group`, up to date; a group not in memory is loaded on a connection of
        its own, without the lock (a million vectors take seconds), then catches up under it."""
        with self._lock:
            got = self._search.views(group, model_id, allowed)
        if got is not None:
            return got
        loaded, seq = self._load_detached(group, model_id)
        with self._lock:
            return self._search.adopt(group, model_id, loaded, seq).views(allowed)

    def search_stats(self) -> dict[str, int]:
        """What the in-memory search structures hold: bytes, vectors, loads and delta updates so far."""
        with self._lock:
            return self._search.stats()


class Index(Protocol):
    """What callers (the bot's /find, `iris find`) may use of an index, whichever its backend."""

    def close(self) -> None: ...
    def prune(self) -> None: ...
    def missing_vectors(self, hashes: Iterable[str], model_id: str) -> set[str]: ...
    def put_vectors(self, model_id: str, vectors: dict[str, np.ndarray]) -> None: ...
    def vector(self, content_hash: str, model_id: str) -> np.ndarray | None: ...
    def items(self, scope: str) -> dict[str, tuple[str | None, str, dict[str, Any]]]: ...
    def known(self, scope: str, keys: Iterable[str]) -> set[str]: ...
    def upsert(
        self,
        scope: str,
        key: str,
        content_hash: str | None,
        meta: dict[str, Any],
        status: str = "ok",
        thumb: bytes | None = None,
    ) -> bool: ...
    def upsert_many(
        self, scope: str, rows: Iterable[tuple[str, str | None, dict[str, Any], str, bytes | None]]
    ) -> set[str]: ...
    def thumbnail(self, scope: str, key: str) -> bytes | None: ...
    def remove(self, scope: str, keys: Sequence[str]) -> int: ...
    def remove_prefix(self, scope: str, prefix: str) -> int: ...
    def delete_messages(self, scope: str, message_ids: Iterable[int | str]) -> int: ...
    def remove_scope(self, scope: str) -> int: ...
    def scopes(self, prefix: str) -> list[str]: ...
    def set_excluded(self, scope_prefix: str, channel: str, excluded: bool) -> None: ...
    def excluded(self, scope_prefix: str) -> set[str]: ...
    def missing_for_model(self, scope: str, model_id: str) -> list[tuple[str, dict[str, Any]]]: ...
    def save_find(self, find_id: str, data: dict[str, Any]) -> None: ...
    def get_find(self, find_id: str) -> dict[str, Any] | None: ...
    def scan_state(self, scope: str) -> ScanState: ...
    def set_scan_state(self, scope: str, state: ScanState) -> None: ...
    def count(self, scope: str | None = None) -> int: ...
    def search(self, query: np.ndarray, scopes: Sequence[str], model_id: str, k: int = 10) -> list[Hit]: ...
    def warm(self, scope: str, model_id: str) -> None: ...
    def search_stats(self) -> dict[str, int]: ...


def open_index(config: IndexConfig) -> Index:
    """The index `config` names: PostgreSQL at `index.url` when set (shared by every bot process),
    else the SQLite file at `index.path` (the embedded default)."""
    if config.url:
        from iris.index.pg import PgIndex  # psycopg is loaded only by those who use it

        return PgIndex(config.url, config)
    from iris.index.store import ImageIndex

    return ImageIndex(config.path, config)
