"""SQLite connections as Iris uses them: one per store, shared across threads behind the store's lock."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def connect(path: str | os.PathLike[str], schema: str) -> sqlite3.Connection:
    """Open (creating folders and tables) in autocommit mode with WAL, so readers never block the writer.

    Autocommit means `with db:` opens NO transaction: group statements with `transaction(db)`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(schema)
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run the block's statements atomically: all of them are committed, or none (on any exception)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
