"""SQLite connections as Iris uses them: one per store, shared across threads behind the store's lock."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from iris.errors import BadFile

_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def connect(path: str | os.PathLike[str], schema: str) -> sqlite3.Connection:
    """Open (creating folders and tables) in autocommit mode with WAL, so readers never block the writer.

    Autocommit means `with db:` opens NO transaction: group statements with `transaction(db)`.
    Raises BadFile, naming the path, when it is not a place for a database: a folder, a pipe or a device,
    another kind of file (never overwritten), or somewhere that cannot be written."""
    path = Path(path)
    check_database_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(schema)
        except BaseException:
            db.close()
            raise
    except (sqlite3.Error, OSError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise BadFile(f"cannot open the database {path}: {reason}") from None
    return db


def check_database_file(path: Path) -> None:
    """Refuse, before SQLite touches it, anything at `path` but a database file or nothing at all."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return  # created on open
    except OSError as e:
        raise BadFile(f"cannot open the database {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise BadFile(f"{path} is a folder, not a database file")
    if not stat.S_ISREG(st.st_mode):
        raise BadFile(f"{path} is not a regular file (a pipe or a device?), so it cannot hold a database")
    if st.st_size == 0:
        return  # an empty file is a new database
    try:
        with open(path, "rb") as f:
            head = f.read(len(_HEADER))
    except OSError as e:
        raise BadFile(f"cannot read the database {path}: {e.strerror or e}") from None
    if head != _HEADER:
        raise BadFile(f"{path} is not an SQLite database; it is left as it is")


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
