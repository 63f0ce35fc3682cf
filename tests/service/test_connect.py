"""The backend choice (open_manager) and the read-only journal the process backend's parent reads."""

from __future__ import annotations

import sqlite3

import pytest

from iris.config import parse_config
from iris.journal import JobState, Journal
from iris.request import ImagineRequest
from iris.service.process import ProcessManager
from models.connect import open_manager


def test_the_config_picks_the_backend(tmp_path, toy_engine):
    isolated = parse_config({"data_dir": str(tmp_path)})
    assert isolated.manager.backend == "local" and isolated.manager.isolate  # the defaults
    assert isinstance(open_manager(isolated), ProcessManager)
    from models.manager import InferenceManager

    threaded = parse_config({"data_dir": str(tmp_path), "manager": {"isolate": False}})
    assert type(open_manager(threaded)) is InferenceManager
    given = open_manager(isolated, toy_engine)  # an engine built here always runs here
    assert type(given) is InferenceManager and given.engine is toy_engine


def test_a_read_only_journal_reads_what_the_owner_writes_and_takes_no_lock(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    owner = Journal(path)
    reader = Journal(path, readonly=True)  # while the owner holds the lock
    try:
        owner.add("j1", "alice", ImagineRequest("a red circle", init_image=b"\x89PNG..."), {"c": "1"})
        owner.update("j1", state=JobState.RUNNING, step=3)
        entry = reader.get("j1")
        assert entry.state == JobState.RUNNING and entry.step == 3
        assert entry.request.init_image == b"\x89PNG..."
        assert [e.id for e in reader.of_owner("alice", 5)] == ["j1"]
        with pytest.raises(sqlite3.OperationalError):
            reader.update("j1", state=JobState.FAILED)
        assert owner.get("j1").state == JobState.RUNNING
    finally:
        reader.close()
        owner.close()
    Journal(path).close()  # the reader never held the lock: a new owner opens it
