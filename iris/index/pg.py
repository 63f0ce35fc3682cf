"""The index on PostgreSQL + pgvector (`index.url`), shared by every bot process.

The same methods and meaning as the SQLite `ImageIndex`; searching is `SearchingIndex`'s, on in-memory
structures kept current from the `changes` table (whose max seq tells a search whether anything was
committed since), so a search costs what it costs on SQLite plus one round trip.

Thread-safe: one connection behind a lock; every method does its database work in the calling thread,
so async callers use `asyncio.to_thread`. A lost connection (the server restarted) is opened again by
the next call; a server that cannot be reached is an `IndexUnavailable`, never a driver traceback.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from iris.config import IndexConfig
from iris.index.base import CHANGES_KEPT, DAY_S, Hit, ScanState, SearchingIndex, message_of, prefix_end
from iris.index.pg_conn import Conn, IndexUnavailable, PgLog, connect, describe
from iris.index.pg_schema import WRITE_LOCK, HalfVec, migrate, register_halfvec
from iris.index.search import SearchCache
from iris.index.vectors import GroupVectors

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def _retried(method: Callable[Concatenate[PgIndex, P], R]) -> Callable[Concatenate[PgIndex, P], R]:
    """Run `method` again once on a new connection when the old one was lost (a server restart: the
    failed transaction was rolled back); when it fails again, the server is down: IndexUnavailable."""

    @functools.wraps(method)
    def run(self: PgIndex, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except psycopg.OperationalError as e:
            if not self._lost():
                raise
            log.warning("index: the connection to %s was lost (%s); connecting again", self.where, e)
        try:
            return method(self, *args, **kwargs)
        except psycopg.OperationalError as e:
            if not self._lost():
                raise
            raise IndexUnavailable(f"the search index database {self.where} is unreachable: {e}") from None

    return run


class PgIndex(SearchingIndex):
    """The image index in one PostgreSQL database; any number of processes may open it."""

    def __init__(
        self, url: str, config: IndexConfig | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.url = url
        self.where = describe(url)
        self.config = config or IndexConfig()
        self.clock = clock  # unix seconds; injectable so retention is testable
        self._lock = threading.RLock()
        self._closed = False
        self._conn: Conn | None = connect(url)
        try:
            migrate(self._conn)
        except psycopg.DatabaseError as e:  # e.g. no pgvector on that server, or no right to add it
            self._conn.close()
            raise IndexUnavailable(
                f"the search index database {self.where} could not be set up: {e}. It needs the pgvector "
                "extension (a superuser can run CREATE EXTENSION vector in that database)"
            ) from None
        register_halfvec(self._conn)
        self._search = SearchCache(PgLog(self._db), self.config.search_memory_mib * 2**20)
        self._pruned_at = -float("inf")

    # -- the connection ------------------------------------------------------------------------------
    def _db(self) -> Conn:
        """The open connection, opened again when it was lost; called under the lock."""
        if self._closed:
            raise IndexUnavailable("the search index is closed (the bot is shutting down)")
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = connect(self.url)
            register_halfvec(self._conn)
        return self._conn

    def _lost(self) -> bool:
        with self._lock:
            return self._conn is None or self._conn.closed or self._conn.broken

    @contextmanager
    def _write(self) -> Iterator[Conn]:
        """A transaction holding WRITE_LOCK (so its change seqs commit in order); all or nothing."""
        with self._lock:
            db = self._db()
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                yield db

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._search.clear()
            if self._conn is not None:
                self._conn.close()

    # -- retention ---------------------------------------------------------------------------------
    @_retried
    def prune(self) -> None:
        """Drop what outlived its retention: saved queries, orphan query vectors, tombstones, old log."""
        now = self.clock()
        keep_s = self.config.retention_days * DAY_S
        with self._write() as db:
            self._pruned_at = now
            db.execute("DELETE FROM finds WHERE created < %s", (now - keep_s,))
            db.execute(
                "DELETE FROM tombstones WHERE deleted_at < %s", (now - self.config.tombstone_days * DAY_S,)
            )
            db.execute(
                "DELETE FROM changes WHERE seq <= (SELECT MAX(seq) FROM changes) - %s", (CHANGES_KEPT,)
            )
        cutoff = now - keep_s
        while True:  # short transactions, like the SQLite index: writers are never held up for long
            with self._write() as db:
                rows = db.execute(
                    "SELECT content_hash, model_id FROM vectors WHERE added < %s LIMIT 500", (cutoff,)
                ).fetchall()
                if not rows:
                    return
                keys = ([r[0] for r in rows], [r[1] for r in rows])
                db.execute(
                    "DELETE FROM vectors v USING unnest(%s::text[], %s::text[]) AS k(h, m) "
                    "WHERE v.content_hash = k.h AND v.model_id = k.m "
                    "AND NOT EXISTS (SELECT 1 FROM items i WHERE i.content_hash = v.content_hash) "
                    "AND NOT EXISTS (SELECT 1 FROM finds f WHERE f.data ->> 'image_hash' = v.content_hash)",
                    keys,
                )
                db.execute(
                    "UPDATE vectors v SET added = %s FROM unnest(%s::text[], %s::text[]) AS k(h, m) "
                    "WHERE v.content_hash = k.h AND v.model_id = k.m",
                    (now, *keys),
                )

    # -- vectors -----------------------------------------------------------------------------------
    @_retried
    def missing_vectors(self, hashes: Iterable[str], model_id: str) -> set[str]:
        wanted = set(hashes)
        with self._lock:
            rows = self._db().execute(
                "SELECT content_hash FROM vectors WHERE model_id = %s AND content_hash = ANY(%s)",
                (model_id, sorted(wanted)),
            )
            return wanted - {r[0] for r in rows}

    @_retried
    def put_vectors(self, model_id: str, vectors: dict[str, np.ndarray]) -> None:
        now = self.clock()
        rows = [(h, model_id, HalfVec(np.asarray(v)), now) for h, v in vectors.items()]
        with self._write() as db, db.cursor() as cur:
            cur.executemany(
                "INSERT INTO vectors (content_hash, model_id, vector, added) VALUES (%s, %s, %b, %s) "
                "ON CONFLICT (content_hash, model_id) DO UPDATE SET vector = excluded.vector, "
                "added = excluded.added",
                rows,
            )

    @_retried
    def vector(self, content_hash: str, model_id: str) -> np.ndarray | None:
        with self._lock:
            row = (
                self._db()
                .execute(
                    "SELECT vector FROM vectors WHERE content_hash = %s AND model_id = %s",
                    (content_hash, model_id),
                    binary=True,
                )
                .fetchone()
            )
        return np.frombuffer(row[0], dtype="<f2").astype(np.float32) if row else None

    # -- items -------------------------------------------------------------------------------------
    @_retried
    def items(self, scope: str) -> dict[str, tuple[str | None, str, dict[str, Any]]]:
        """key → (content hash, status, meta) for every item of a scope."""
        with self._lock:
            rows = self._db().execute(
                "SELECT key, content_hash, status, meta FROM items WHERE scope = %s", (scope,)
            )
            return {k: (h, s, m) for k, h, s, m in rows}

    @_retried
    def known(self, scope: str, keys: Iterable[str]) -> set[str]:
        """Which of `keys` are indexed in `scope` (ok or bad), or belong to a message deleted from it."""
        keys = list(dict.fromkeys(keys))
        messages = sorted({m for k in keys if (m := message_of(k)) is not None})
        with self._lock:
            db = self._db()
            out = {
                r[0]
                for r in db.execute("SELECT key FROM items WHERE scope = %s AND key = ANY(%s)", (scope, keys))
            }
            q = "SELECT message FROM tombstones WHERE scope = %s AND message = ANY(%s)"
            dead = {r[0] for r in db.execute(q, (scope, messages))}
        return out | {k for k in keys if message_of(k) in dead}

    @_retried
    def upsert_many(
        self, scope: str, rows: Iterable[tuple[str, str | None, dict[str, Any], str, bytes | None]]
    ) -> set[str]:
        """`upsert` for many (key, content hash, meta, status, thumb) rows in one transaction.

        Returns the keys refused because their message was deleted."""
        batch = list(rows)
        keys = [r[0] for r in batch]
        messages = sorted({m for k in keys if (m := message_of(k)) is not None})
        with self._write() as db, db.cursor() as cur:
            q = "SELECT message FROM tombstones WHERE scope = %s AND message = ANY(%s)"
            dead = {r[0] for r in db.execute(q, (scope, messages))}
            q = "SELECT key, content_hash FROM items WHERE scope = %s AND key = ANY(%s)"
            old = dict(db.execute(q, (scope, keys)).fetchall())
            ok = [r for r in batch if message_of(r[0]) not in dead]
            # An upsert keeps the row's id, which search structures hold.
            cur.executemany(
                "INSERT INTO items (scope, key, content_hash, status, meta) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (scope, key) DO UPDATE SET content_hash = excluded.content_hash, "
                "status = excluded.status, meta = excluded.meta",
                [(scope, k, h, st, Jsonb(m)) for k, h, m, st, _ in ok],
            )
            cur.executemany(
                "INSERT INTO thumbs VALUES (%s, %s, %s) "
                "ON CONFLICT (scope, key) DO UPDATE SET data = excluded.data",
                [(scope, k, t) for k, _, _, _, t in ok if t is not None],
            )
            cur.executemany(  # new content and no new thumbnail: the old one is wrong now
                "DELETE FROM thumbs WHERE scope = %s AND key = %s",
                [(scope, k) for k, h, _, _, t in ok if t is None and k in old and old[k] != h],
            )
        return {r[0] for r in batch if message_of(r[0]) in dead}

    @_retried
    def thumbnail(self, scope: str, key: str) -> bytes | None:
        with self._lock:
            q = "SELECT data FROM thumbs WHERE scope = %s AND key = %s"
            row = self._db().execute(q, (scope, key)).fetchone()
        return bytes(row[0]) if row else None

    @_retried
    def remove(self, scope: str, keys: Sequence[str]) -> int:
        with self._write() as db:
            return db.execute(
                "DELETE FROM items WHERE scope = %s AND key = ANY(%s)", (scope, list(keys))
            ).rowcount

    @_retried
    def remove_prefix(self, scope: str, prefix: str) -> int:
        """Remove the items of `scope` whose key starts with `prefix` (e.g. every image of one message)."""
        with self._write() as db:
            return self._remove_prefix(db, scope, prefix)

    @staticmethod
    def _remove_prefix(db: Conn, scope: str, prefix: str) -> int:
        if not prefix:
            return db.execute("DELETE FROM items WHERE scope = %s", (scope,)).rowcount
        end = prefix_end(prefix)
        q = "DELETE FROM items WHERE scope = %s AND key >= %s AND key < %s"
        return db.execute(q, (scope, prefix, end)).rowcount

    @_retried
    def delete_messages(self, scope: str, message_ids: Iterable[int | str]) -> int:
        """Remove every item of these messages and remember them (index.tombstone_days), so that a scan
        still holding one of them cannot add it back: a delete always wins."""
        ids = sorted({str(int(m)) for m in message_ids})
        now = self.clock()
        with self._write() as db, db.cursor() as cur:
            n = sum(self._remove_prefix(db, scope, f"{m}/") for m in ids)
            cur.executemany(
                "INSERT INTO tombstones VALUES (%s, %s, %s) "
                "ON CONFLICT (scope, message) DO UPDATE SET deleted_at = excluded.deleted_at",
                [(scope, m, now) for m in ids],
            )
        self._maybe_prune()
        return n

    @_retried
    def remove_scope(self, scope: str) -> int:
        """Forget a whole scope (a deleted channel): its items and its scan state."""
        with self._write() as db:
            n = db.execute("DELETE FROM items WHERE scope = %s", (scope,)).rowcount
            db.execute("DELETE FROM scans WHERE scope = %s", (scope,))
            return n

    @_retried
    def scopes(self, prefix: str) -> list[str]:
        with self._lock:
            db = self._db()
            if not prefix:
                return [r[0] for r in db.execute("SELECT DISTINCT scope FROM items")]
            end = prefix_end(prefix)
            q = "SELECT DISTINCT scope FROM items WHERE scope >= %s AND scope < %s"
            return [r[0] for r in db.execute(q, (prefix, end))]

    @_retried
    def set_excluded(self, scope_prefix: str, channel: str, excluded: bool) -> None:
        with self._lock:
            if excluded:
                q = "INSERT INTO excluded VALUES (%s, %s) ON CONFLICT DO NOTHING"
            else:
                q = "DELETE FROM excluded WHERE scope_prefix = %s AND channel = %s"
            self._db().execute(q, (scope_prefix, channel))

    @_retried
    def excluded(self, scope_prefix: str) -> set[str]:
        with self._lock:
            q = "SELECT channel FROM excluded WHERE scope_prefix = %s"
            return {r[0] for r in self._db().execute(q, (scope_prefix,))}

    @_retried
    def missing_for_model(self, scope: str, model_id: str) -> list[tuple[str, dict[str, Any]]]:
        """Items of `scope` with no vector for `model_id` yet (after a model change): (key, meta)."""
        with self._lock:
            rows = self._db().execute(
                "SELECT i.key, i.meta FROM items i LEFT JOIN vectors v ON v.content_hash = i.content_hash "
                "AND v.model_id = %s WHERE i.scope = %s AND i.status = 'ok' AND v.content_hash IS NULL",
                (model_id, scope),
            )
            return [(k, m) for k, m in rows]

    # -- saved queries and scan state --------------------------------------------------------------
    @_retried
    def save_find(self, find_id: str, data: dict[str, Any]) -> None:
        """Keep a query (index.retention_days); `data["image_hash"]` keeps that query vector alive too."""
        with self._lock:
            self._db().execute(
                "INSERT INTO finds (id, data, created) VALUES (%s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET data = excluded.data, created = excluded.created",
                (find_id, Jsonb(data), self.clock()),
            )
        self._maybe_prune()

    @_retried
    def get_find(self, find_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db().execute("SELECT data FROM finds WHERE id = %s", (find_id,)).fetchone()
        return dict(row[0]) if row else None

    @_retried
    def scan_state(self, scope: str) -> ScanState:
        with self._lock:
            q = "SELECT newest, oldest, complete FROM scans WHERE scope = %s"
            row = self._db().execute(q, (scope,)).fetchone()
        return ScanState(row[0], row[1], bool(row[2])) if row else ScanState()

    @_retried
    def set_scan_state(self, scope: str, state: ScanState) -> None:
        with self._lock:
            self._db().execute(
                "INSERT INTO scans VALUES (%s, %s, %s, %s) ON CONFLICT (scope) DO UPDATE SET "
                "newest = excluded.newest, oldest = excluded.oldest, complete = excluded.complete",
                (scope, state.newest, state.oldest, state.complete),
            )

    @_retried
    def count(self, scope: str | None = None) -> int:
        with self._lock:
            db = self._db()
            if scope is None:
                row = db.execute("SELECT COUNT(*) FROM items WHERE status = 'ok'").fetchone()
            else:
                row = db.execute(
                    "SELECT COUNT(*) FROM items WHERE status = 'ok' AND scope = %s", (scope,)
                ).fetchone()
        return int(row[0]) if row else 0

    # -- search (the rest is SearchingIndex's) -----------------------------------------------------
    @_retried
    def search(self, query: np.ndarray, scopes: Sequence[str], model_id: str, k: int = 10) -> list[Hit]:
        return super().search(query, scopes, model_id, k)

    @_retried
    def warm(self, scope: str, model_id: str) -> None:
        super().warm(scope, model_id)

    def _item_rows(self, ids: Sequence[int]) -> dict[int, tuple[str, str, dict[str, Any]]]:
        rows = self._db().execute("SELECT id, scope, key, meta FROM items WHERE id = ANY(%s)", (list(ids),))
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def _load_detached(self, group: str, model_id: str) -> tuple[GroupVectors, int]:
        with closing(connect(self.url)) as db:
            register_halfvec(db)
            return PgLog(lambda: db).load(group, model_id)
