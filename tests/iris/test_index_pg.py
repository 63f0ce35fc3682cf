"""The index on PostgreSQL: what only a shared server asks for. Several processes (here: several index
objects, each with its own connections) on one database, schema creation racing at start, the server
going away and coming back. The store's behaviour itself is tested on both backends in test_index*.py."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import numpy as np
import psycopg
import pytest

from iris.config import IndexConfig
from iris.errors import IrisError
from iris.index import ImageIndex, open_index
from iris.index.pg import PgIndex
from iris.index.pg_conn import IndexUnavailable
from tests.pg_server import PgServer

V = np.eye(8, dtype=np.float32)
SCOPE = "discord:1:2"


def keys(hits):
    return [h.key for h in hits]


def test_writes_of_another_process_are_seen_by_the_next_search(pg_url):
    with PgIndex(pg_url) as bot, PgIndex(pg_url) as other:
        bot.put_vectors("m", {"h0": V[0], "h1": V[1]})
        bot.upsert(SCOPE, "10/a", "h0", {})
        bot.upsert(SCOPE, "11/a", "h1", {})
        assert keys(other.search(V[1], [SCOPE], "m", k=1)) == ["11/a"]  # `other` loads the server
        bot.delete_messages(SCOPE, [11])
        assert keys(other.search(V[1], [SCOPE], "m")) == ["10/a"]  # a delete in one, gone in the other
        other.upsert(SCOPE, "12/a", "h2", {"n": 2})  # an item before its vector...
        assert keys(bot.search(V[2], [SCOPE], "m")) == ["10/a"]
        other.put_vectors("m", {"h2": V[2]})  # ...becomes searchable when the vector arrives
        hits = bot.search(V[2], [SCOPE], "m")
        assert keys(hits) == ["12/a", "10/a"] and hits[0].meta == {"n": 2}
        assert other.search_stats()["loads"] == 1 and other.search_stats()["updates"] >= 1  # deltas


def test_processes_starting_at_once_create_the_schema_once(pg_url):
    start = threading.Barrier(4)
    opened: list[PgIndex] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        start.wait()
        try:
            opened.append(PgIndex(pg_url))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(opened) == 4
    for ix in opened:
        ix.close()
    with psycopg.connect(pg_url) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    with PgIndex(pg_url) as again:  # opening an up-to-date database changes nothing
        again.upsert(SCOPE, "1/a", None, {}, status="bad")
        assert again.items(SCOPE) == {"1/a": (None, "bad", {})}


def test_open_index_picks_the_backend_from_the_config(tmp_path, pg_url):
    with open_index(IndexConfig(path=str(tmp_path / "i.sqlite3"))) as ix:
        assert isinstance(ix, ImageIndex)
    with open_index(IndexConfig(path=str(tmp_path / "unused.sqlite3"), url=pg_url)) as ix:
        assert isinstance(ix, PgIndex)
    assert not (tmp_path / "unused.sqlite3").exists()


def test_a_lost_connection_is_opened_again_by_the_next_call(pg_url):
    with PgIndex(pg_url) as ix:
        ix.put_vectors("m", {"h0": V[0]})
        ix.upsert(SCOPE, "10/a", "h0", {})
        assert keys(ix.search(V[0], [SCOPE], "m")) == ["10/a"]
        with psycopg.connect(pg_url, autocommit=True) as admin:  # what a server restart does to it
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        assert keys(ix.search(V[0], [SCOPE], "m")) == ["10/a"]
        ix.upsert(SCOPE, "11/a", "h0", {})
        assert ix.count(SCOPE) == 2


def test_a_server_down_is_a_clear_error_and_its_return_is_picked_up():
    with tempfile.TemporaryDirectory(prefix="iris-pg-") as root:
        server = PgServer(Path(root), keep=True)  # stopping it keeps its data
        url = server.new_database()
        ix = PgIndex(url)
        try:
            ix.put_vectors("m", {"h0": V[0]})
            ix.upsert(SCOPE, "10/a", "h0", {})
            server.stop()
            with pytest.raises(IndexUnavailable) as down:
                ix.search(V[0], [SCOPE], "m")
            assert isinstance(down.value, IrisError) and "unreachable" in str(down.value)
            assert "Traceback" not in str(down.value) and "password" not in str(down.value)
            with pytest.raises(IndexUnavailable):
                PgIndex(url)  # opening one while the server is down: the same clear error
            server = PgServer(Path(root), keep=True)  # the same data folder: the same socket, the same URL
            assert keys(ix.search(V[0], [SCOPE], "m")) == ["10/a"]
        finally:
            ix.close()
            server.stop()


def test_a_database_where_pgvector_cannot_be_added_is_a_clear_error(pg_server):
    url = pg_server.new_database()
    role = "guest_" + url.split("/")[3].split("?")[0]
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")  # may not create extensions (nor tables) there
    with pytest.raises(IndexUnavailable, match="CREATE EXTENSION vector"):
        PgIndex(url.replace("postgres:@", f"{role}:@"))


def test_writers_in_parallel_are_all_seen_by_a_reader(pg_url):
    """Changes commit in the order of their numbers in the change log, so a reader catching up while
    others write never steps over a change that committed late with a lower number."""
    with PgIndex(pg_url) as reader:
        reader.put_vectors("m", {f"h{i}": V[i] for i in range(8)})
        reader.upsert(SCOPE, "1/a", "h0", {})
        reader.warm(SCOPE, "m")
        writers = [PgIndex(pg_url) for _ in range(3)]
        stop = threading.Event()

        def write(ix: PgIndex, w: int) -> None:
            for n in range(40):
                ix.upsert_many(SCOPE, [(f"{1000 * (w + 1) + n}/a", f"h{n % 8}", {}, "ok", None)])

        def read() -> None:
            while not stop.is_set():
                reader.search(V[1], [SCOPE], "m", k=5)

        threads = [threading.Thread(target=write, args=(ix, w)) for w, ix in enumerate(writers)]
        searching = threading.Thread(target=read)
        searching.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        searching.join()
        for ix in writers:
            ix.close()
        assert len(reader.search(V[1], [SCOPE], "m", k=10_000)) == 1 + 3 * 40
        assert reader.search_stats()["loads"] == 1  # caught up from the log, never reloaded
