"""The job journal on real SQLite: request round trips, result storage, migration, ownership, retention."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest

from iris.errors import BadFile
from iris.journal import JobState, Journal, JournalLocked
from iris.request import ImagineRequest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "jobs.sqlite3")
    yield j
    j.close()


def _every_field_set() -> ImagineRequest:
    """A request with every field away from its default (bytes ones included), built from the fields
    themselves so a field added later is covered without touching this test."""
    samples: dict[type | str, object] = {
        str: "a fox: 2 | ünïcode ☃",
        int: 123,
        float: 0.25,
        bytes: b"\x00\xffPNG",
    }
    values = {}
    hints = typing.get_type_hints(ImagineRequest)
    for f in dataclasses.fields(ImagineRequest):
        hint = hints[f.name]
        kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        kind = typing.get_origin(kinds[0]) or kinds[0]
        if kind is tuple:  # e.g. tuple[tuple[bytes, float], ...]: one element of each inner kind
            inner = typing.get_args(kinds[0])[0]
            values[f.name] = (tuple(samples[t] for t in typing.get_args(inner)),)
        else:
            values[f.name] = samples[kind]
    values["generator"] = "pixels"
    req = ImagineRequest(**values)
    for f in dataclasses.fields(ImagineRequest):
        assert getattr(req, f.name) != f.default, f"{f.name} is still at its default"
    return req


def test_every_request_field_survives_a_round_trip(tmp_path):
    req = _every_field_set()
    j = Journal(tmp_path / "j.sqlite3")
    j.add("job1", "u1", req, {"channel": "1"})
    j.close()
    again = Journal(tmp_path / "j.sqlite3")  # from disk, not from memory
    try:
        got = again.get("job1").request
    finally:
        again.close()
    assert got == req
    for f in dataclasses.fields(ImagineRequest):
        assert type(getattr(got, f.name)) is type(getattr(req, f.name)), f.name


def test_tuples_of_bytes_and_nested_values_round_trip(journal):
    from iris.journal import _decode, _encode

    value = {"prompts": ((b"\x01\x02", 0.5), (b"", -1.0)), "list": [b"x", None, True, "s"]}
    blobs: list[bytes] = []
    encoded = _encode(value, blobs)
    assert blobs == [b"\x01\x02", b"", b"x"]
    assert _decode(json.loads(json.dumps(encoded)), blobs) == value


def test_bytes_are_stored_as_blobs_not_text(journal, tmp_path):
    big = bytes(range(256)) * 4000
    journal.add("j", "u", ImagineRequest("x", init_image=big), {})
    row = journal._db.execute("SELECT request FROM jobs WHERE id = 'j'").fetchone()
    assert len(row[0]) < 1000  # the JSON holds a reference, not the megabyte
    assert journal.get("j").request.init_image == big


def test_a_journal_from_before_results_opens_and_reads(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        """CREATE TABLE jobs (id TEXT PRIMARY KEY, owner TEXT NOT NULL, request TEXT NOT NULL,
        init_image BLOB, meta TEXT NOT NULL, state TEXT NOT NULL, step INTEGER NOT NULL DEFAULT 0,
        total INTEGER NOT NULL, seed INTEGER, error TEXT, created REAL NOT NULL, updated REAL NOT NULL);"""
    )
    fields = {
        k: v for k, v in dataclasses.asdict(ImagineRequest("old", steps=5)).items() if k != "init_image"
    }
    db.execute(
        "INSERT INTO jobs VALUES ('a', 'u', ?, ?, '{}', 'queued', 0, 5, 9, NULL, 1.0, 1.0)",
        (json.dumps(fields), b"INIT"),
    )
    db.execute(
        "INSERT INTO jobs VALUES ('b', 'u', ?, NULL, '{}', 'done', 5, 5, 9, NULL, 1.0, 1.0)",
        (json.dumps(fields),),
    )
    db.commit()
    db.close()
    j = Journal(path)
    try:
        a, b = j.get("a"), j.get("b")
    finally:
        j.close()
    assert a.request.init_image == b"INIT" and a.state is JobState.QUEUED and a.result_png is None
    assert b.state is JobState.DELIVERED  # "done" meant posted


def test_mark_state_moves_only_from_the_expected_state(journal):
    journal.add("j", "u", ImagineRequest("x"), {})
    assert not journal.move("j", JobState.GENERATED, JobState.DELIVERED)
    journal.update("j", state=JobState.GENERATED, result_png=b"png", clip_score=0.5, reduced="cutouts 2 → 1")
    assert journal.move("j", JobState.GENERATED, JobState.DELIVERED)
    e = journal.get("j")
    assert (e.state, e.result_png, e.clip_score, e.reduced) == (
        JobState.DELIVERED,
        b"png",
        0.5,
        "cutouts 2 → 1",
    )


@dataclasses.dataclass(frozen=True)
class _LaterRequest(ImagineRequest):
    """A request as a later version may have it: image prompts as (file bytes, weight) pairs."""

    image_prompts: tuple[tuple[bytes, float], ...] = ()
    negative_image: bytes | None = None


def test_a_request_field_added_later_round_trips_without_journal_changes(tmp_path, monkeypatch):
    import iris.journal

    monkeypatch.setattr(iris.journal, "ImagineRequest", _LaterRequest)
    req = _LaterRequest(
        "x",
        seed=3,
        init_image=b"init",
        image_prompts=((b"\x89PNG a", 1.5), (b"\xff\xd8 b", -0.5)),
        negative_image=b"neg",
    )
    j = Journal(tmp_path / "j.sqlite3")
    j.add("job", "u", req, {})
    j.close()
    j = Journal(tmp_path / "j.sqlite3")
    try:
        assert j.get("job").request == req
    finally:
        j.close()


_HOLD = """
import sys, time
from iris.journal import Journal
held = Journal(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def test_one_journal_one_owner_across_processes_and_kill_9(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(JournalLocked) as refused:
            Journal(path)
        message = str(refused.value)
        assert str(path) in message and "\n" not in message and "another" in message
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up runs: the OS must drop the lock
        holder.wait()
    j = Journal(path)  # the dead owner's lock is gone
    j.close()


def test_the_lock_is_released_on_close(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    first = Journal(path)
    with pytest.raises(JournalLocked):
        Journal(path)  # the same process, a second owner: refused too
    first.close()
    second = Journal(path)
    second.close()


def test_prune_deletes_old_finished_jobs_with_their_blobs(journal):
    for job_id, state in [
        ("delivered", JobState.DELIVERED),
        ("failed", JobState.FAILED),
        ("cancelled", JobState.CANCELLED),
        ("generated", JobState.GENERATED),  # made but never delivered: goes too, once old
        ("queued", JobState.QUEUED),
        ("running", JobState.RUNNING),
    ]:
        journal.add(job_id, "u", ImagineRequest("x", init_image=b"I" * 1000), {})
        journal.update(job_id, state=state)
    journal.add("recent", "u", ImagineRequest("x", init_image=b"R"), {})
    journal.update("recent", state=JobState.DELIVERED)
    # all but "recent" were last changed 40 days ago
    journal._db.execute("UPDATE jobs SET updated = updated - 40 * 86400 WHERE id != 'recent'")
    assert journal.prune(time.time() - 30 * 86400) == 4
    left = {r[0] for r in journal._db.execute("SELECT id FROM jobs")}
    assert left == {"queued", "running", "recent"}  # unfinished work is never pruned
    blob_jobs = {r[0] for r in journal._db.execute("SELECT job FROM blobs")}
    assert blob_jobs == left  # the init images went with their jobs


@pytest.mark.parametrize("kind", ["folder", "fifo", "text_file", "read_only_folder", "parent_is_a_file"])
def test_a_journal_path_that_cannot_be_a_journal_is_one_line(tmp_path, kind):
    if kind == "folder":
        path = tmp_path / "j"
        path.mkdir()
    elif kind == "fifo":
        path = tmp_path / "j.sqlite3"
        os.mkfifo(path)
    elif kind == "text_file":
        path = tmp_path / "notes.txt"
        path.write_text("my notes\n" * 5)
    elif kind == "read_only_folder":
        path = Path("/proc/iris-jobs.sqlite3")  # even root cannot create files in /proc
    else:
        (tmp_path / "file").write_text("x")
        path = tmp_path / "file" / "j.sqlite3"
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(BadFile) as refused:
        Journal(path)
    assert str(path) in str(refused.value) and "\n" not in str(refused.value)
    if before is not None:
        assert path.read_bytes() == before


def test_of_owner_lists_one_owners_jobs_newest_first(journal):
    for n, owner in enumerate(["a", "b", "a", "a"]):
        journal.add(f"j{n}", owner, ImagineRequest(f"prompt {n}"), {})
        time.sleep(0.002)  # distinct creation times
    assert [e.id for e in journal.of_owner("a", 10)] == ["j3", "j2", "j0"]
    assert [e.id for e in journal.of_owner("a", 2)] == ["j3", "j2"]
    assert journal.of_owner("nobody", 5) == []
