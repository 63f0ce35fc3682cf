"""The index's PostgreSQL tables, their migrations, and how vectors cross the wire (pgvector's halfvec).

The same tables as the SQLite file (`schema`), with the differences PostgreSQL asks for: items carry an
`id` (the search structures' row id; it survives an upsert), keys and scopes compare bytewise (COLLATE
"C": group ranges such as `discord:1:` .. `discord:1;` must not depend on the server's locale), and the
change log's order is the order of commits (see WRITE_LOCK).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import psycopg
from psycopg.adapt import Dumper, Loader
from psycopg.pq import Format
from psycopg.types import TypeInfo

# Advisory lock keys ("IRIS" and a number): one database may hold other applications' locks too.
SCHEMA_LOCK = 0x4952_4953_0001  # held while the schema is created or migrated: two starts never race
# Held by every writing transaction until it commits. A change's seq is taken under it, so seqs are
# committed in order: a reader that has seen seq n has seen every change before n (a bare sequence
# would let a slower transaction commit a smaller seq after a reader moved past it).
WRITE_LOCK = 0x4952_4953_0002

# Each step runs once, in order, under SCHEMA_LOCK; the version reached is kept in schema_version.
MIGRATIONS: tuple[str, ...] = (
    f"""
CREATE TABLE vectors (
    content_hash TEXT NOT NULL,
    model_id TEXT NOT NULL,
    vector halfvec NOT NULL,            -- L2-normalised embedding
    added DOUBLE PRECISION NOT NULL,    -- unix time: last written, or last found in use
    PRIMARY KEY (content_hash, model_id)
);
CREATE INDEX vectors_added ON vectors (added);
CREATE TABLE items (
    id BIGSERIAL UNIQUE,                -- the search structures' row id
    scope TEXT COLLATE "C" NOT NULL,    -- what one search covers: a folder, a channel
    key TEXT COLLATE "C" NOT NULL,      -- the item within its scope: a relative path, message/attachment ids
    content_hash TEXT,                  -- NULL while unreadable (status 'bad')
    status TEXT NOT NULL DEFAULT 'ok',  -- 'ok' or 'bad'
    meta JSONB NOT NULL DEFAULT '{{}}', -- size, mtime, author, url, ...
    PRIMARY KEY (scope, key)
);
CREATE INDEX items_hash ON items (content_hash);
CREATE TABLE thumbs (
    scope TEXT COLLATE "C" NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    data BYTEA NOT NULL,                -- a small WebP/JPEG made at index time: grids need no download
    PRIMARY KEY (scope, key)
);
CREATE TABLE tombstones (
    scope TEXT COLLATE "C" NOT NULL,
    message TEXT COLLATE "C" NOT NULL,  -- a deleted message: its items may not come back (a delete wins)
    deleted_at DOUBLE PRECISION NOT NULL,  -- unix time; kept index.tombstone_days
    PRIMARY KEY (scope, message)
);
CREATE TABLE changes (
    seq BIGSERIAL PRIMARY KEY,
    item BIGINT,                        -- id of an item inserted, deleted, or whose hash/status changed
    scope TEXT COLLATE "C",             -- that item's scope
    content_hash TEXT,                  -- or: a vector written for this hash...
    model_id TEXT                       -- ...and this model
);
CREATE TABLE excluded (
    scope_prefix TEXT COLLATE "C" NOT NULL,  -- e.g. discord:GUILD:
    channel TEXT NOT NULL,              -- a channel an admin took out of search
    PRIMARY KEY (scope_prefix, channel)
);
CREATE TABLE finds (
    id TEXT PRIMARY KEY,                -- a /find query, kept so its buttons work after a restart
    data JSONB NOT NULL,
    created DOUBLE PRECISION NOT NULL   -- unix time; kept index.retention_days
);
CREATE TABLE scans (
    scope TEXT COLLATE "C" PRIMARY KEY, -- a channel's scope
    newest BIGINT,                      -- newest message id seen
    oldest BIGINT,                      -- oldest message id reached going back
    complete BOOLEAN NOT NULL DEFAULT FALSE  -- once the scan reached the start of the history
);
-- Every change to items and vectors is logged, whichever process made it (writers outside Iris too:
-- the trigger takes WRITE_LOCK itself, a no-op for Iris's writers, which hold it already).
CREATE FUNCTION iris_log_item() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({WRITE_LOCK});
    IF TG_OP = 'DELETE' THEN
        INSERT INTO changes (item, scope) VALUES (OLD.id, OLD.scope);
        DELETE FROM thumbs WHERE scope = OLD.scope AND key = OLD.key;
        RETURN OLD;
    END IF;
    IF TG_OP = 'INSERT' OR OLD.content_hash IS DISTINCT FROM NEW.content_hash
            OR OLD.status IS DISTINCT FROM NEW.status THEN
        INSERT INTO changes (item, scope) VALUES (NEW.id, NEW.scope);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER items_log AFTER INSERT OR UPDATE OR DELETE ON items
    FOR EACH ROW EXECUTE FUNCTION iris_log_item();
CREATE FUNCTION iris_log_vector() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({WRITE_LOCK});
    INSERT INTO changes (content_hash, model_id) VALUES (NEW.content_hash, NEW.model_id);
    RETURN NEW;
END $$;
CREATE TRIGGER vectors_log AFTER INSERT OR UPDATE OF vector ON vectors
    FOR EACH ROW EXECUTE FUNCTION iris_log_vector();
""",
)


def migrate(db: psycopg.Connection[Any]) -> int:
    """Bring the schema up to date (idempotent; concurrent starts wait for each other); the version."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        db.execute("CREATE EXTENSION IF NOT EXISTS vector")
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        have = int(row[0]) if row and row[0] is not None else 0
        for version, step in enumerate(MIGRATIONS, start=1):
            if version > have:
                db.execute(step.encode())  # bytes: several statements in one simple query
                db.execute("INSERT INTO schema_version VALUES (%s)", (version,))
    return len(MIGRATIONS)


class HalfVec:
    """A vector to store as pgvector's halfvec (sent in its binary form)."""

    __slots__ = ("values",)

    def __init__(self, values: np.ndarray) -> None:
        self.values = values


class _HalfVecDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: HalfVec) -> bytes:
        # halfvec_recv: int16 dimensions, int16 unused, then each value as a big-endian float16.
        v = np.asarray(obj.values, dtype=">f2").reshape(-1)
        return struct.pack(">hh", len(v), 0) + v.tobytes()


class _HalfVecLoader(Loader):
    format = Format.BINARY

    def load(self, data: Any) -> bytes:
        """The little-endian float16 bytes the search structures and the SQLite file use."""
        return np.frombuffer(bytes(data), dtype=">f2", offset=4).astype("<f2").tobytes()


def register_halfvec(db: psycopg.Connection[Any]) -> None:
    """Teach this connection halfvec's binary form (after `migrate` created the extension)."""
    info = TypeInfo.fetch(db, "halfvec")
    if info is None:
        raise RuntimeError("the vector extension is not installed in this database")
    dumper = type("HalfVecDumper", (_HalfVecDumper,), {"oid": info.oid})
    db.adapters.register_dumper(HalfVec, dumper)
    db.adapters.register_loader(info.oid, _HalfVecLoader)
