"""The index's store, on SQLite and on PostgreSQL: thumbnails, `known` without decoding a channel,
deletes that win, retention."""

from __future__ import annotations

import numpy as np
import pytest

from iris.config import IndexConfig
from iris.index import ImageIndex
from tests.pg_server import open_test_index

DAY = 86_400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def index(tmp_path, clock, index_url):
    with open_test_index(tmp_path, index_url, IndexConfig(tombstone_days=2, retention_days=30), clock) as ix:
        yield ix


def unit(i: int, dim: int = 8) -> np.ndarray:
    return np.eye(dim, dtype=np.float32)[i]


def test_thumbnail_is_stored_with_the_item_and_follows_its_content(index):
    index.upsert("discord:1:2", "10/a", "h1", {}, thumb=b"\xff\xd8jpeg-1")
    assert index.thumbnail("discord:1:2", "10/a") == b"\xff\xd8jpeg-1"
    assert index.thumbnail("discord:1:2", "10/b") is None
    index.upsert("discord:1:2", "10/a", "h1", {"edited": True})  # same content, no new thumb: kept
    assert index.thumbnail("discord:1:2", "10/a") == b"\xff\xd8jpeg-1"
    index.upsert("discord:1:2", "10/a", "h2", {})  # new content without a thumb: the old one is wrong now
    assert index.thumbnail("discord:1:2", "10/a") is None
    index.upsert("discord:1:2", "10/a", "h2", {}, thumb=b"jpeg-2")
    index.remove("discord:1:2", ["10/a"])
    assert index.thumbnail("discord:1:2", "10/a") is None


def test_known_answers_without_decoding_the_channel(index, monkeypatch):
    for i in range(50):
        index.upsert("discord:1:2", f"{100 + i}/a", f"h{i}", {"n": i})
    index.upsert("discord:1:2", "999/x", None, {}, status="bad")
    index.upsert("discord:1:3", "500/a", "hx", {})  # another channel
    monkeypatch.setattr("json.loads", lambda *a, **k: pytest.fail("known() decoded meta"))
    asked = ["100/a", "149/a", "150/a", "999/x", "500/a", "100/b"]
    assert index.known("discord:1:2", asked) == {"100/a", "149/a", "999/x"}


def test_a_delete_wins_over_a_scan_that_was_downloading(index):
    scope = "discord:1:2"
    index.upsert(scope, "10/a", "h1", {})
    index.upsert(scope, "10/b", "h2", {})
    index.upsert(scope, "11/a", "h3", {})
    index.upsert(scope, "100/a", "h4", {})  # another message whose id starts with "10"
    assert index.delete_messages(scope, [10, "12"]) == 2
    assert set(index.items(scope)) == {"11/a", "100/a"}
    # the scan had 10/a and 12/a in flight when the messages were deleted: neither comes back
    assert index.upsert(scope, "10/a", "h1", {}) is False
    assert index.upsert(scope, "12/a", "h5", {}) is False
    assert index.upsert(scope, "13/a", "h6", {}) is True
    assert set(index.items(scope)) == {"11/a", "100/a", "13/a"}
    assert index.known(scope, ["10/a", "12/z", "14/a"]) == {"10/a", "12/z"}
    assert index.upsert("discord:1:9", "10/a", "h1", {}) is True  # a tombstone is per channel


def test_tombstones_expire(index, clock):
    index.delete_messages("discord:1:2", [10])
    clock.now += 1.5 * DAY
    index.delete_messages("discord:1:2", [11])  # a write that lets retention run (it runs at most hourly)
    assert index.upsert("discord:1:2", "10/a", "h", {}) is False
    clock.now += 1 * DAY  # 10's tombstone is 2.5 days old, 11's 1 day
    index.prune()
    assert index.upsert("discord:1:2", "10/a", "h", {}) is True
    assert index.upsert("discord:1:2", "11/a", "h", {}) is False


def test_old_finds_and_their_query_vectors_are_dropped(index, clock):
    index.put_vectors("m", {"item-hash": unit(0), "query-old": unit(1), "query-new": unit(2)})
    index.upsert("discord:1:2", "10/a", "item-hash", {})
    index.save_find("old", {"image_hash": "query-old"})
    clock.now += 20 * DAY
    index.put_vectors("m", {"query-new2": unit(3)})
    index.save_find("new", {"image_hash": "query-new"})
    clock.now += 15 * DAY  # "old" is 35 days old, "new" 15
    index.save_find("newest", {"image_hash": None})
    assert index.get_find("old") is None
    assert index.get_find("new") == {"image_hash": "query-new"}
    assert index.vector("query-old", "m") is None  # its find is gone and no item uses it
    assert index.vector("query-new", "m") is not None  # 35 days old, but a kept find names it
    assert index.vector("item-hash", "m") is not None  # an indexed item uses it
    assert index.vector("query-new2", "m") is not None  # 15 days old


def test_retention_survives_reopen_of_an_old_file(tmp_path, clock):
    """A file written before `finds.created` existed gets the column; its rows count from the upgrade."""
    import sqlite3

    db = sqlite3.connect(tmp_path / "old.sqlite3")
    db.execute("CREATE TABLE finds (id TEXT PRIMARY KEY, data TEXT NOT NULL)")
    db.execute("INSERT INTO finds VALUES ('f', '{}')")
    db.commit()
    db.close()
    with ImageIndex(tmp_path / "old.sqlite3", IndexConfig(retention_days=1), clock) as index:
        assert index.get_find("f") == {}
        clock.now += 2 * DAY
        index.prune()
        assert index.get_find("f") is None


def test_upsert_many_writes_all_but_deleted_messages(index):
    index.delete_messages("discord:1:2", [11])
    refused = index.upsert_many(
        "discord:1:2",
        [
            ("10/a", "h1", {"n": 1}, "ok", b"t1"),
            ("11/a", "h2", {}, "ok", None),
            ("12/a", None, {}, "bad", None),
        ],
    )
    assert refused == {"11/a"}
    assert index.items("discord:1:2") == {"10/a": ("h1", "ok", {"n": 1}), "12/a": (None, "bad", {})}
    assert index.thumbnail("discord:1:2", "10/a") == b"t1"
