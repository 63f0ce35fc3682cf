"""The job journal: generation jobs in SQLite, so a restart can offer unfinished work back.

Nothing here knows Discord: owners and channel/message ids are opaque strings in `meta`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iris.request import ImagineRequest
from iris.sqlite import connect

UNFINISHED = ("queued", "running")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    request TEXT NOT NULL,      -- ImagineRequest as JSON, without the init image
    init_image BLOB,            -- the init image file, if any
    meta TEXT NOT NULL,         -- opaque strings for the caller (channel, message ids, ...)
    state TEXT NOT NULL,        -- queued, running, done, failed, cancelled
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL,
    seed INTEGER,
    error TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
"""


@dataclass(frozen=True)
class JournalEntry:
    id: str
    owner: str
    request: ImagineRequest
    meta: dict[str, str]
    state: str
    step: int
    total: int
    seed: int | None
    error: str | None
    created: float
    updated: float


class Journal:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db = connect(self.path, _SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, job_id: str, owner: str, request: ImagineRequest, meta: dict[str, str]) -> None:
        fields = dataclasses.asdict(request)
        init = fields.pop("init_image")
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO jobs (id, owner, request, init_image, meta, state, total, seed,"
                " created, updated) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
                (
                    job_id,
                    owner,
                    json.dumps(fields),
                    init,
                    json.dumps(meta),
                    request.steps,
                    request.seed,
                    now,
                    now,
                ),
            )

    def update(self, job_id: str, **changes: Any) -> None:
        """Set any of state, step, seed, error."""
        allowed = {"state", "step", "seed", "error"}
        if not changes or set(changes) - allowed:
            raise ValueError(f"journal updates take {allowed}, got {set(changes)}")
        cols = ", ".join(f"{k} = ?" for k in changes)
        with self._lock:
            self._db.execute(
                f"UPDATE jobs SET {cols}, updated = ? WHERE id = ?", (*changes.values(), time.time(), job_id)
            )

    def get(self, job_id: str) -> JournalEntry | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _entry(row) if row else None

    def unfinished(self) -> list[JournalEntry]:
        """Jobs that were queued or running when the service stopped, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE state IN ({','.join('?' * len(UNFINISHED))}) ORDER BY created",
                UNFINISHED,
            ).fetchall()
        return [_entry(r) for r in rows]


def _entry(row: tuple[Any, ...]) -> JournalEntry:
    job_id, owner, request, init, meta, state, step, total, seed, error, created, updated = row
    req = ImagineRequest(**json.loads(request), init_image=init)
    return JournalEntry(
        job_id, owner, req, json.loads(meta), state, step, total, seed, error, created, updated
    )
