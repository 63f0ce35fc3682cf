"""Connections to the index's PostgreSQL server, and the change log its search structures read."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from iris.errors import IrisError
from iris.index.search import Change, Row, build_group, scope_range
from iris.index.vectors import GroupVectors

Conn = psycopg.Connection[Any]

CONNECT_TIMEOUT_S = 10


class IndexUnavailable(IrisError):
    """The index's database server cannot be reached."""


def describe(url: str) -> str:
    """The server and database of a URL, without its password: fit for a message or a log."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return "the configured PostgreSQL server"
    where = info.get("host") or "localhost"
    if info.get("port"):
        where = f"{where}:{info['port']}"
    return f"{where}/{info.get('dbname') or info.get('user') or ''}"


def connect(url: str) -> Conn:
    """A connection in autocommit mode that knows halfvec; IndexUnavailable when there is no server."""
    try:
        db = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise IndexUnavailable(
            f"the search index database {describe(url)} is unreachable: {reason}"
        ) from None
    return db


class PgLog:
    """The `ChangeLog` of a PostgreSQL index, on the connection `db()` gives."""

    def __init__(self, db: Callable[[], Conn]) -> None:
        self._db = db

    def marker(self) -> object:
        return self.last_seq()

    def last_seq(self) -> int:
        row = self._db().execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()
        return int(row[0]) if row else 0

    def first_seq(self) -> int | None:
        row = self._db().execute("SELECT MIN(seq) FROM changes").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def changes(self, after: int, upto: int | None = None) -> list[Change]:
        return (
            self._db()
            .execute(
                "SELECT seq, item, scope, content_hash, model_id FROM changes WHERE seq > %s AND seq <= %s "
                "ORDER BY seq",
                (after, 2**62 if upto is None else upto),
            )
            .fetchall()
        )

    def items_with(self, hashes: Sequence[str]) -> Iterable[tuple[int, str]]:
        q = "SELECT id, scope FROM items WHERE content_hash = ANY(%s)"
        return self._db().execute(q, (list(hashes),)).fetchall()

    def searchable(self, model_id: str, ids: Sequence[int]) -> Iterable[Row]:
        return (
            self._db()
            .execute(
                "SELECT i.id, i.scope, v.vector FROM items i JOIN vectors v "
                "ON v.content_hash = i.content_hash AND v.model_id = %s "
                "WHERE i.status = 'ok' AND i.id = ANY(%s)",
                (model_id, list(ids)),
                binary=True,
            )
            .fetchall()
        )

    def load(self, group: str, model_id: str) -> tuple[GroupVectors, int]:
        """One repeatable-read snapshot, so the rows and the change number agree (seqs commit in order)."""
        db = self._db()
        # A server's channels are a range of scopes; any other group is its one scope (no NUL in text).
        where, args = (
            ("i.scope >= %s AND i.scope < %s", scope_range(group))
            if group.endswith(":")
            else (
                "i.scope = %s",
                (group,),
            )
        )
        with db.transaction():
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            seq = self.last_seq()
            with db.cursor(name="iris_load", binary=True) as cur:  # streamed from the server
                cur.execute(
                    "SELECT i.id, i.scope, v.vector FROM items i JOIN vectors v "
                    "ON v.content_hash = i.content_hash AND v.model_id = %s "
                    f"WHERE i.status = 'ok' AND {where} ORDER BY i.scope",
                    (model_id, *args),
                )
                g = build_group(iter(lambda: cur.fetchmany(4096), []))
        return g, seq
