"""The index's SQLite side: items, vectors, thumbnails, tombstones, saved queries, scan state, retention.

One embedding per (content hash, model id), so the same picture posted twice, or a re-scan, never costs a
second forward pass. Items (a file in a folder, an attachment in a channel) point at a content hash within
a scope (a folder, a channel). Every change to `items` or `vectors` is logged by a trigger in `changes`,
whichever process made it, so in-memory search structures catch up by reading only the delta.

Thread-safe: one connection behind a lock; every method does its SQLite and numpy work in the calling
thread, so async callers use `asyncio.to_thread`. Nothing here imports torch.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from iris.config import IndexConfig
from iris.index.base import CHANGES_KEPT, DAY_S, ScanState, SearchingIndex, message_of, prefix_end
from iris.index.schema import ADDED_COLUMNS, SCHEMA
from iris.index.search import SearchCache, SqliteLog
from iris.index.sql import chunks, qs
from iris.index.vectors import GroupVectors
from iris.sqlite import connect, transaction

log = logging.getLogger(__name__)


class ImageIndex(SearchingIndex):
    """The image index on one SQLite file; any number of processes may open the same file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: IndexConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.config = config or IndexConfig()
        self.clock = clock  # unix seconds; injectable so retention is testable
        self._db = connect(self.path, SCHEMA)
        self._lock = threading.RLock()
        self._migrate()
        self._search = SearchCache(SqliteLog(self._db), self.config.search_memory_mib * 2**20)
        self._pruned_at = -float("inf")  # retention first runs on the first write that checks it (off
        # the opener's path: an upgraded file's first run touches every vector once, in short steps)

    def _migrate(self) -> None:
        with self._lock, transaction(self._db):
            for table, column, decl in ADDED_COLUMNS:
                have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                    self._db.execute(f"UPDATE {table} SET {column} = ?", (self.clock(),))
            # Retention finds old vectors through this, without reading every row's blob.
            self._db.execute("CREATE INDEX IF NOT EXISTS vectors_added ON vectors (added)")

    def close(self) -> None:
        with self._lock:
            self._search.clear()
            self._db.close()

    # -- retention ---------------------------------------------------------------------------------
    def prune(self) -> None:
        """Drop what outlived its retention: saved queries, orphan query vectors, tombstones, old log."""
        now = self.clock()
        keep_s = self.config.retention_days * DAY_S
        with self._lock, transaction(self._db):
            self._pruned_at = now
            self._db.execute("DELETE FROM finds WHERE created < ?", (now - keep_s,))
            self._db.execute(
                "DELETE FROM tombstones WHERE deleted_at < ?", (now - self.config.tombstone_days * DAY_S,)
            )
            self._db.execute(
                "DELETE FROM changes WHERE seq <= (SELECT MAX(seq) FROM changes) - ?", (CHANGES_KEPT,)
            )
        self._prune_vectors(now, now - keep_s)

    def _prune_vectors(self, now: float, cutoff: float) -> None:
        """Delete vectors older than `cutoff` that no item and no kept find uses (a query image's lives as
        long as a find names it); the ones in use are stamped `now`, so the next runs skip them for a
        retention period. In short transactions: other threads' writes are never held up for long."""
        while True:
            with self._lock, transaction(self._db):
                ids = [
                    r[0]
                    for r in self._db.execute(
                        "SELECT rowid FROM vectors WHERE added < ? LIMIT 500", (cutoff,)
                    ).fetchall()
                ]
                if not ids:
                    return
                self._db.execute(
                    f"DELETE FROM vectors WHERE rowid IN ({qs(ids)}) "
                    "AND NOT EXISTS (SELECT 1 FROM items i WHERE i.content_hash = vectors.content_hash) "
                    "AND NOT EXISTS (SELECT 1 FROM finds f "
                    "WHERE json_extract(f.data, '$.image_hash') = vectors.content_hash)",
                    ids,
                )
                self._db.execute(f"UPDATE vectors SET added = ? WHERE rowid IN ({qs(ids)})", (now, *ids))

    # -- vectors -----------------------------------------------------------------------------------
    def missing_vectors(self, hashes: Iterable[str], model_id: str) -> set[str]:
        wanted = set(hashes)
        with self._lock:
            have = {
                row[0]
                for chunk in chunks(sorted(wanted), 500)
                for row in self._db.execute(
                    f"SELECT content_hash FROM vectors WHERE model_id = ? AND content_hash IN ({qs(chunk)})",
                    (model_id, *chunk),
                )
            }
        return wanted - have

    def put_vectors(self, model_id: str, vectors: dict[str, np.ndarray]) -> None:
        now = self.clock()
        rows = [(h, model_id, np.asarray(v, dtype="<f2").tobytes(), now) for h, v in vectors.items()]
        with self._lock, transaction(self._db):
            self._db.executemany(
                "INSERT OR REPLACE INTO vectors (content_hash, model_id, vector, added) VALUES (?, ?, ?, ?)",
                rows,
            )

    def vector(self, content_hash: str, model_id: str) -> np.ndarray | None:
        with self._lock:
            row = self._db.execute(
                "SELECT vector FROM vectors WHERE content_hash = ? AND model_id = ?", (content_hash, model_id)
            ).fetchone()
        return np.frombuffer(row[0], dtype="<f2").astype(np.float32) if row else None

    # -- items -------------------------------------------------------------------------------------
    def items(self, scope: str) -> dict[str, tuple[str | None, str, dict[str, Any]]]:
        """key → (content hash, status, meta) for every item of a scope (decodes every row; see `known`)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, content_hash, status, meta FROM items WHERE scope = ?", (scope,)
            ).fetchall()
        return {k: (h, s, json.loads(m)) for k, h, s, m in rows}

    def known(self, scope: str, keys: Iterable[str]) -> set[str]:
        """Which of `keys` are indexed in `scope` (ok or bad), or belong to a message deleted from it."""
        keys = list(dict.fromkeys(keys))
        messages = sorted({m for k in keys if (m := message_of(k)) is not None})
        with self._lock:
            out = {
                row[0]
                for chunk in chunks(keys, 500)
                for row in self._db.execute(
                    f"SELECT key FROM items WHERE scope = ? AND key IN ({qs(chunk)})", (scope, *chunk)
                )
            }
            dead = {
                row[0]
                for chunk in chunks(messages, 500)
                for row in self._db.execute(
                    f"SELECT message FROM tombstones WHERE scope = ? AND message IN ({qs(chunk)})",
                    (scope, *chunk),
                )
            }
        return out | {k for k in keys if message_of(k) in dead}

    def upsert_many(
        self, scope: str, rows: Iterable[tuple[str, str | None, dict[str, Any], str, bytes | None]]
    ) -> set[str]:
        """`upsert` for many (key, content hash, meta, status, thumb) rows in one transaction.

        Returns the keys refused because their message was deleted."""
        refused: set[str] = set()
        batch = list(rows)
        with self._lock, transaction(self._db):
            for part in chunks(batch, 500):
                keys = [r[0] for r in part]
                messages = sorted({m for k in keys if (m := message_of(k)) is not None})
                dead = {
                    r[0]
                    for r in self._db.execute(
                        f"SELECT message FROM tombstones WHERE scope = ? AND message IN ({qs(messages)})",
                        (scope, *messages),
                    )
                }
                old = dict(
                    self._db.execute(
                        f"SELECT key, content_hash FROM items WHERE scope = ? AND key IN ({qs(keys)})",
                        (scope, *keys),
                    ).fetchall()
                )
                ok = [r for r in part if message_of(r[0]) not in dead]
                refused.update(r[0] for r in part if message_of(r[0]) in dead)
                # An upsert, not INSERT OR REPLACE: the row keeps its rowid, which search structures hold.
                self._db.executemany(
                    "INSERT INTO items (scope, key, content_hash, status, meta) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (scope, key) DO UPDATE SET content_hash = excluded.content_hash, "
                    "status = excluded.status, meta = excluded.meta",
                    [(scope, k, h, st, json.dumps(m)) for k, h, m, st, _ in ok],
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO thumbs VALUES (?, ?, ?)",
                    [(scope, k, t) for k, _, _, _, t in ok if t is not None],
                )
                self._db.executemany(  # new content and no new thumbnail: the old one is wrong now
                    "DELETE FROM thumbs WHERE scope = ? AND key = ?",
                    [(scope, k) for k, h, _, _, t in ok if t is None and k in old and old[k] != h],
                )
        return refused

    def thumbnail(self, scope: str, key: str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT data FROM thumbs WHERE scope = ? AND key = ?", (scope, key)
            ).fetchone()
        return bytes(row[0]) if row else None

    def remove(self, scope: str, keys: Sequence[str]) -> int:
        with self._lock, transaction(self._db):
            n = 0
            for chunk in chunks(list(keys), 500):
                n += self._db.execute(
                    f"DELETE FROM items WHERE scope = ? AND key IN ({qs(chunk)})", (scope, *chunk)
                ).rowcount
            return n

    def remove_prefix(self, scope: str, prefix: str) -> int:
        """Remove the items of `scope` whose key starts with `prefix` (e.g. every image of one message)."""
        with self._lock, transaction(self._db):
            return self._remove_prefix(scope, prefix)

    def _remove_prefix(self, scope: str, prefix: str) -> int:
        if not prefix:
            return int(self._db.execute("DELETE FROM items WHERE scope = ?", (scope,)).rowcount)
        # A key range, not LIKE: it walks the (scope, key) index instead of every key of the scope.
        end = prefix_end(prefix)
        n = self._db.execute(
            "DELETE FROM items WHERE scope = ? AND key >= ? AND key < ?", (scope, prefix, end)
        ).rowcount
        return int(n)

    def delete_messages(self, scope: str, message_ids: Iterable[int | str]) -> int:
        """Remove every item of these messages and remember them (index.tombstone_days), so that a scan
        still holding one of them cannot add it back: a delete always wins."""
        ids = sorted({str(int(m)) for m in message_ids})
        now = self.clock()
        with self._lock, transaction(self._db):
            n = sum(self._remove_prefix(scope, f"{m}/") for m in ids)
            self._db.executemany(
                "INSERT OR REPLACE INTO tombstones VALUES (?, ?, ?)", [(scope, m, now) for m in ids]
            )
        self._maybe_prune()
        return n

    def remove_scope(self, scope: str) -> int:
        """Forget a whole scope (a deleted channel): its items and its scan state."""
        with self._lock, transaction(self._db):
            n = self._db.execute("DELETE FROM items WHERE scope = ?", (scope,)).rowcount
            self._db.execute("DELETE FROM scans WHERE scope = ?", (scope,))
            return int(n)

    def scopes(self, prefix: str) -> list[str]:
        with self._lock:
            if not prefix:
                return [r[0] for r in self._db.execute("SELECT DISTINCT scope FROM items")]
            end = prefix_end(prefix)
            rows = self._db.execute(
                "SELECT DISTINCT scope FROM items WHERE scope >= ? AND scope < ?", (prefix, end)
            )
            return [r[0] for r in rows]

    def set_excluded(self, scope_prefix: str, channel: str, excluded: bool) -> None:
        with self._lock:
            if excluded:
                self._db.execute("INSERT OR IGNORE INTO excluded VALUES (?, ?)", (scope_prefix, channel))
            else:
                self._db.execute(
                    "DELETE FROM excluded WHERE scope_prefix = ? AND channel = ?", (scope_prefix, channel)
                )

    def excluded(self, scope_prefix: str) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT channel FROM excluded WHERE scope_prefix = ?", (scope_prefix,))
            return {r[0] for r in rows}

    def missing_for_model(self, scope: str, model_id: str) -> list[tuple[str, dict[str, Any]]]:
        """Items of `scope` with no vector for `model_id` yet (after a model change): (key, meta)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT i.key, i.meta FROM items i LEFT JOIN vectors v ON v.content_hash = i.content_hash "
                "AND v.model_id = ? WHERE i.scope = ? AND i.status = 'ok' AND v.content_hash IS NULL",
                (model_id, scope),
            ).fetchall()
        return [(k, json.loads(m)) for k, m in rows]

    # -- saved queries and scan state --------------------------------------------------------------
    def save_find(self, find_id: str, data: dict[str, Any]) -> None:
        """Keep a query (index.retention_days); `data["image_hash"]` keeps that query vector alive too."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO finds (id, data, created) VALUES (?, ?, ?)",
                (find_id, json.dumps(data), self.clock()),
            )
        self._maybe_prune()

    def get_find(self, find_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM finds WHERE id = ?", (find_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def scan_state(self, scope: str) -> ScanState:
        with self._lock:
            q = "SELECT newest, oldest, complete FROM scans WHERE scope = ?"
            row = self._db.execute(q, (scope,)).fetchone()
        return ScanState(row[0], row[1], bool(row[2])) if row else ScanState()

    def set_scan_state(self, scope: str, state: ScanState) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO scans VALUES (?, ?, ?, ?)",
                (scope, state.newest, state.oldest, int(state.complete)),
            )

    def count(self, scope: str | None = None) -> int:
        with self._lock:
            if scope is None:
                return int(self._db.execute("SELECT COUNT(*) FROM items WHERE status = 'ok'").fetchone()[0])
            q = "SELECT COUNT(*) FROM items WHERE status = 'ok' AND scope = ?"
            return int(self._db.execute(q, (scope,)).fetchone()[0])

    # -- search (the rest is SearchingIndex's) -----------------------------------------------------
    def _item_rows(self, ids: Sequence[int]) -> dict[int, tuple[str, str, dict[str, Any]]]:
        return {
            r[0]: (r[1], r[2], json.loads(r[3]))
            for chunk in chunks(list(ids), 500)
            for r in self._db.execute(
                f"SELECT rowid, scope, key, meta FROM items WHERE rowid IN ({qs(chunk)})", chunk
            )
        }

    def _load_detached(self, group: str, model_id: str) -> tuple[GroupVectors, int]:
        with closing(sqlite3.connect(self.path, timeout=60)) as db:
            return load_group(db, group, model_id)


def load_group(db: sqlite3.Connection, group: str, model_id: str) -> tuple[GroupVectors, int]:
    """Every searchable vector of `group` for `model_id`, and the last change the snapshot includes."""
    return SqliteLog(db).load(group, model_id)
