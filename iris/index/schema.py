"""The index file's tables, the triggers that log every change to items and vectors, later columns."""

from __future__ import annotations

SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    content_hash TEXT NOT NULL,
    model_id TEXT NOT NULL,
    vector BLOB NOT NULL,              -- L2-normalised embedding, float16, little-endian
    PRIMARY KEY (content_hash, model_id)
);
CREATE TABLE IF NOT EXISTS items (
    scope TEXT NOT NULL,               -- what one search covers: a folder, a channel
    key TEXT NOT NULL,                 -- the item within its scope: a relative path, message/attachment ids
    content_hash TEXT,                 -- NULL while unreadable (status 'bad')
    status TEXT NOT NULL DEFAULT 'ok', -- 'ok' or 'bad'
    meta TEXT NOT NULL DEFAULT '{}',   -- JSON: size, mtime, author, url, ...
    PRIMARY KEY (scope, key)
);
CREATE INDEX IF NOT EXISTS items_hash ON items (content_hash);
CREATE TABLE IF NOT EXISTS thumbs (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    data BLOB NOT NULL,                -- a small WebP/JPEG made at index time: grids need no download
    PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS tombstones (
    scope TEXT NOT NULL,
    message TEXT NOT NULL,             -- a deleted message: its items may not come back (a delete wins)
    deleted_at REAL NOT NULL,          -- unix time; kept index.tombstone_days
    PRIMARY KEY (scope, message)
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item INTEGER,                      -- rowid of an item inserted, deleted, or whose hash/status changed
    scope TEXT,                        -- that item's scope
    content_hash TEXT,                 -- or: a vector written for this hash...
    model_id TEXT                      -- ...and this model
);
CREATE TRIGGER IF NOT EXISTS items_added AFTER INSERT ON items BEGIN
    INSERT INTO changes (item, scope) VALUES (new.rowid, new.scope);
END;
CREATE TRIGGER IF NOT EXISTS items_changed AFTER UPDATE ON items
WHEN old.content_hash IS NOT new.content_hash OR old.status IS NOT new.status BEGIN
    INSERT INTO changes (item, scope) VALUES (new.rowid, new.scope);
END;
CREATE TRIGGER IF NOT EXISTS items_removed AFTER DELETE ON items BEGIN
    INSERT INTO changes (item, scope) VALUES (old.rowid, old.scope);
    DELETE FROM thumbs WHERE scope = old.scope AND key = old.key;
END;
CREATE TRIGGER IF NOT EXISTS vectors_added AFTER INSERT ON vectors BEGIN
    INSERT INTO changes (content_hash, model_id) VALUES (new.content_hash, new.model_id);
END;
CREATE TABLE IF NOT EXISTS excluded (
    scope_prefix TEXT NOT NULL,        -- e.g. discord:GUILD:
    channel TEXT NOT NULL,             -- a channel an admin took out of search
    PRIMARY KEY (scope_prefix, channel)
);
CREATE TABLE IF NOT EXISTS finds (
    id TEXT PRIMARY KEY,               -- a /find query, kept so its buttons work after a restart
    data TEXT NOT NULL                 -- JSON
);
CREATE TABLE IF NOT EXISTS scans (
    scope TEXT PRIMARY KEY,            -- a channel's scope
    newest INTEGER,                    -- newest message id seen
    oldest INTEGER,                    -- oldest message id reached going back
    complete INTEGER NOT NULL DEFAULT 0  -- 1 once the scan reached the start of the history
);
"""

# Columns added after the first release: (table, column, declaration). Rows that predate them get "now".
ADDED_COLUMNS = (
    ("finds", "created", "REAL NOT NULL DEFAULT 0"),  # unix time; kept index.retention_days
    ("vectors", "added", "REAL NOT NULL DEFAULT 0"),  # unix time: last written, or last found in use
)
