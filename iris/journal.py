"""The job journal: generation jobs in SQLite, so a restart can resume unfinished work and deliver
pictures that were made but not delivered.

Nothing here knows Discord: owners and channel/message ids are opaque strings in `meta`.
One journal has one owner: opening it takes an exclusive OS lock on a sidecar file (`<journal>.lock`),
held until `close()` or until the process dies (the OS drops it even on kill -9).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from iris.errors import BadFile, IrisError
from iris.request import ImagineRequest
from iris.sqlite import check_database_file, connect, transaction

log = logging.getLogger(__name__)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    GENERATED = "generated"  # the picture is made and journaled, not yet delivered
    DELIVERED = "delivered"  # the caller confirmed delivery (`InferenceManager.mark_delivered`)
    FAILED = "failed"
    CANCELLED = "cancelled"


UNFINISHED = (JobState.QUEUED, JobState.RUNNING)
FINISHED = (JobState.DELIVERED, JobState.FAILED, JobState.CANCELLED)  # retention may delete these


class JournalLocked(IrisError):
    """Another process (or another manager in this one) already owns this journal."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    request TEXT NOT NULL,      -- ImagineRequest as JSON; bytes values are references into `blobs`
    init_image BLOB,            -- journals written before `blobs` existed kept the init image here
    meta TEXT NOT NULL,         -- opaque strings for the caller (channel, message ids, ...)
    state TEXT NOT NULL,        -- a JobState value
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL,
    seed INTEGER,               -- the seed actually used, once the job started
    error TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created);
CREATE TABLE IF NOT EXISTS blobs (
    job TEXT NOT NULL,
    n INTEGER NOT NULL,         -- the request's n-th bytes value, in JSON order
    data BLOB NOT NULL,
    PRIMARY KEY (job, n)
);
"""

# Columns added after the first release, added to older journals on open.
_RESULT_COLUMNS = {"result_png": "BLOB", "clip_score": "REAL", "reduced": "TEXT"}
_COLUMNS = (
    "id, owner, request, init_image, meta, state, step, total, seed, error, created, updated, "
    "result_png, clip_score, reduced"
)


@dataclass(frozen=True)
class JournalEntry:
    id: str
    owner: str
    request: ImagineRequest
    meta: dict[str, str]
    state: JobState
    step: int  # steps done
    total: int
    seed: int | None  # the seed actually used (set when the job starts)
    error: str | None
    created: float  # Unix time
    updated: float  # Unix time
    result_png: bytes | None = None  # the final picture, once GENERATED (kept after delivery)
    clip_score: float | None = None
    reduced: str | None = None  # set when an out-of-memory retry reduced the settings

    @property
    def resumed_request(self) -> ImagineRequest:
        """The request to run again after a restart or on another worker: with the seed it started with,
        so it makes the picture it would have made."""
        return self.request if self.seed is None else dataclasses.replace(self.request, seed=self.seed)


class Journal:
    def __init__(self, path: str | os.PathLike[str], readonly: bool = False) -> None:
        """`readonly`: read a journal another process owns and writes (get, of_owner, in_states): no
        lock taken, no schema made; the file must exist. Writes then raise sqlite3.OperationalError."""
        self.path = Path(path)
        check_database_file(self.path)  # a folder, a FIFO or another file: refused before any side file
        self._lock = threading.Lock()
        self._lock_file: IO[bytes] | None = None
        if readonly:
            self._db = _connect_readonly(self.path)
            return
        self._lock_file = _take_lock(self.path)
        try:
            self._db = connect(self.path, _SCHEMA)
            self._migrate()
        except BaseException:
            self._lock_file.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._lock_file is not None:
                self._lock_file.close()  # releases the OS lock

    def _migrate(self) -> None:
        have = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        with transaction(self._db):
            for name, kind in _RESULT_COLUMNS.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
            # Before GENERATED/DELIVERED existed, "done" meant the picture was posted.
            self._db.execute("UPDATE jobs SET state = ? WHERE state = 'done'", (JobState.DELIVERED,))

    def add(self, job_id: str, owner: str, request: ImagineRequest, meta: dict[str, str]) -> None:
        blobs: list[bytes] = []
        fields = _encode(dataclasses.asdict(request), blobs)
        now = time.time()
        with self._lock, transaction(self._db):
            self._db.execute("DELETE FROM blobs WHERE job = ?", (job_id,))
            self._db.execute(
                "INSERT OR REPLACE INTO jobs (id, owner, request, meta, state, total, seed, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, owner, json.dumps(fields), json.dumps(meta), JobState.QUEUED, request.steps,
                 request.seed, now, now),
            )  # fmt: skip
            self._db.executemany(
                "INSERT INTO blobs (job, n, data) VALUES (?, ?, ?)",
                [(job_id, n, data) for n, data in enumerate(blobs)],
            )

    def update(self, job_id: str, **changes: Any) -> None:
        """Set any of state, step, seed, error, result_png, clip_score, reduced."""
        allowed = {"state", "step", "seed", "error", *_RESULT_COLUMNS}
        if not changes or set(changes) - allowed:
            raise ValueError(f"journal updates take {allowed}, got {set(changes)}")
        cols = ", ".join(f"{k} = ?" for k in changes)
        with self._lock:
            self._db.execute(
                f"UPDATE jobs SET {cols}, updated = ? WHERE id = ?", (*changes.values(), time.time(), job_id)
            )

    def move(self, job_id: str, from_state: JobState, to_state: JobState) -> bool:
        """Set `to_state` only if the job is in `from_state` now; whether it changed."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET state = ?, updated = ? WHERE id = ? AND state = ?",
                (to_state, time.time(), job_id, from_state),
            )
        return cur.rowcount > 0

    def get(self, job_id: str) -> JournalEntry | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return self._entry(row) if row else None

    def in_states(self, *states: JobState) -> list[JournalEntry]:
        """Jobs in any of `states`, oldest first."""
        with self._lock:
            marks = ",".join("?" * len(states))
            sql = f"SELECT {_COLUMNS} FROM jobs WHERE state IN ({marks}) ORDER BY created"
            rows = self._db.execute(sql, states).fetchall()
            return [self._entry(r) for r in rows]

    def of_owner(self, owner: str, limit: int) -> list[JournalEntry]:
        """`owner`'s jobs, newest first, at most `limit`."""
        with self._lock:
            sql = f"SELECT {_COLUMNS} FROM jobs WHERE owner = ? ORDER BY created DESC LIMIT ?"
            rows = self._db.execute(sql, (owner, limit)).fetchall()
            return [self._entry(r) for r in rows]

    def unfinished(self) -> list[JournalEntry]:
        """Jobs that were queued or running when the service stopped, oldest first."""
        return self.in_states(*UNFINISHED)

    def prune(self, before: float) -> int:
        """Delete jobs that are over (delivered, failed, cancelled, or generated and never delivered)
        and last changed before `before` (Unix time), with their blobs; how many were deleted."""
        over = (*FINISHED, JobState.GENERATED)
        marks = ",".join("?" * len(over))
        old = f"SELECT id FROM jobs WHERE state IN ({marks}) AND updated < ?"
        with self._lock, transaction(self._db):
            self._db.execute(f"DELETE FROM blobs WHERE job IN ({old})", (*over, before))
            return self._db.execute(f"DELETE FROM jobs WHERE id IN ({old})", (*over, before)).rowcount

    def _entry(self, row: tuple[Any, ...]) -> JournalEntry:
        (job_id, owner, request, legacy_init, meta, state, step, total, seed, error, created, updated,
         result_png, clip_score, reduced) = row  # fmt: skip
        blobs = [r[0] for r in self._db.execute("SELECT data FROM blobs WHERE job = ? ORDER BY n", (job_id,))]
        fields = _decode(json.loads(request), blobs)
        if legacy_init is not None and fields.get("init_image") is None:
            fields["init_image"] = legacy_init
        known = {f.name for f in dataclasses.fields(ImagineRequest)}
        if set(fields) - known:  # a field a later version wrote; this version cannot honour it
            log.warning("job %s: ignoring unknown request fields %s", job_id, sorted(set(fields) - known))
        req = ImagineRequest(**{k: v for k, v in fields.items() if k in known})
        return JournalEntry(
            job_id, owner, req, json.loads(meta), JobState(state), step, total, seed, error, created, updated,
            result_png, clip_score, reduced,
        )  # fmt: skip


# -- values <-> JSON ------------------------------------------------------------------------------------
# Requests are plain data: str, int, float, bool, None, bytes, and tuples/lists of those. bytes go to the
# `blobs` table (kept as BLOBs, not base64 text) and tuples are tagged so they come back as tuples.


def _encode(value: Any, blobs: list[bytes]) -> Any:
    if isinstance(value, bytes):
        blobs.append(value)
        return {"$blob": len(blobs) - 1}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, blobs) for v in value]}
    if isinstance(value, list):
        return [_encode(v, blobs) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v, blobs) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot journal a {type(value).__name__}")


def _decode(value: Any, blobs: list[bytes]) -> Any:
    if isinstance(value, list):
        return [_decode(v, blobs) for v in value]
    if isinstance(value, dict):
        if set(value) == {"$blob"}:
            return blobs[value["$blob"]]
        if set(value) == {"$tuple"}:
            return tuple(_decode(v, blobs) for v in value["$tuple"])
        return {k: _decode(v, blobs) for k, v in value.items()}
    return value


def _connect_readonly(path: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(
            f"{path.absolute().as_uri()}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
        )
    except sqlite3.Error as e:
        raise BadFile(f"cannot read the job journal {path}: {e}") from None


def _take_lock(path: Path) -> IO[bytes]:
    """Hold an exclusive, non-blocking OS lock on `<path>.lock`; JournalLocked if someone else has it."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(lock_path, "a+b")  # noqa: SIM115 - held open for the journal's life
    except OSError as e:
        raise BadFile(f"cannot open the job journal {path}: {e.strerror or e}") from None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise JournalLocked(
            f"the job journal {path} is in use by another Iris process; stop it first "
            "(or point manager.journal_path at another file)"
        ) from None
    return f
