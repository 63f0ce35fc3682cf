"""SQLite connections as Iris uses them: one per store, shared across threads behind the store's lock."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def connect(path: str | os.PathLike[str], schema: str) -> sqlite3.Connection:
    """Open (creating folders and tables) in autocommit mode with WAL, so readers never block the writer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(schema)
    return db
