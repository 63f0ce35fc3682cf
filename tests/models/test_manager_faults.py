"""The manager under faults a user never causes: a step raising a BaseException, a worker thread that dies,
journal writes that fail on every user path. Each job still ends, the caller hears why, close() returns.

The journal's failures are injected by replacing one method (SQLite cannot be made to fill a disk here).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from iris.errors import IrisError, JobCancelled, ServiceClosed
from iris.journal import JobState
from models.engine import Engine
from tests.models.test_manager import Gate, _config, _manager, req


@pytest.fixture(scope="module")
def shared_engine():
    """One toy engine (models loaded once) for every manager in this module."""
    engine = Engine(_config(Path("unused")))
    _ = engine.clip, engine.vqgan
    return engine


class Boom(BaseException):
    """Not an Exception: as SystemExit or a library's own BaseException would be."""


def disk_full(*args, **kwargs):
    raise sqlite3.OperationalError("database or disk is full")


async def test_a_step_raising_a_baseexception_fails_that_job_only(tmp_path, shared_engine):
    m = _manager(tmp_path, shared_engine)
    await m.start()
    try:
        calls = []

        def hook(gen) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise Boom()

        m.step_hook = hook
        first = m.imagine(req(steps=2), owner="a")
        with pytest.raises(IrisError, match="error id"):
            await asyncio.wait_for(first.result(), 10)
        second = m.imagine(req(steps=2), owner="a")  # the worker lives on
        await asyncio.wait_for(second.result(), 30)
        assert m.journal.get(first.id).state == JobState.FAILED
    finally:
        await asyncio.wait_for(m.close(), 10)  # never hangs, whatever the worker went through


async def test_a_dead_worker_ends_every_job_and_close_returns(tmp_path, shared_engine):
    m = _manager(tmp_path, shared_engine)
    await m.start()
    gate = Gate()
    m.step_hook = gate
    running = m.imagine(req(steps=5), owner="a")
    queued = m.imagine(req(steps=2), owner="b")
    await gate.wait_entered()

    def clock() -> float:  # raised by the worker's own loop, outside any job: the thread ends
        raise Boom()

    m.clock = clock
    m._next_prune = 0.0
    gate.release.set()
    for handle in (running, queued):
        with pytest.raises(IrisError):
            await asyncio.wait_for(handle.result(), 10)
    with pytest.raises(ServiceClosed):
        m.imagine(req(steps=2), owner="c")  # nothing is taken that no worker would run
    await asyncio.wait_for(m.close(), 10)


async def test_cancelling_a_queued_job_when_the_journal_fails_still_ends_it(tmp_path, shared_engine):
    async with _manager(tmp_path, shared_engine) as m:
        gate = Gate()
        m.step_hook = gate
        running = m.imagine(req(steps=400), owner="a")
        queued = m.imagine(req(steps=2), owner="b")
        await gate.wait_entered()
        real = m.journal.update
        m.journal.update = disk_full
        try:
            assert queued.cancel()
            with pytest.raises(JobCancelled):
                await asyncio.wait_for(queued.result(), 5)
            assert m.status().queue_length == 0
        finally:
            m.journal.update = real
            running.cancel()
            gate.release.set()


async def test_a_job_the_journal_cannot_record_is_refused_cleanly(tmp_path, shared_engine):
    async with _manager(tmp_path, shared_engine) as m:
        real = m.journal.add
        m.journal.add = disk_full
        with pytest.raises(IrisError, match="try again later"):
            m.imagine(req(steps=2), owner="a")
        assert m.status().queue_length == 0
        m.journal.add = real
        await asyncio.wait_for(m.imagine(req(steps=2), owner="a").result(), 30)


async def test_a_failed_delivered_mark_is_tried_again_at_close(tmp_path, shared_engine):
    m = _manager(tmp_path, shared_engine)
    async with m:
        handle = m.imagine(req(steps=2), owner="a")
        await handle.result()
        real = m.journal.move
        m.journal.move = disk_full
        assert m.mark_delivered(handle.id) is False  # logged, not raised: the follower goes on
        m.journal.move = real
    async with m:  # the mark landed at close(): the next start does not post the picture again
        assert m.journal.get(handle.id).state == JobState.DELIVERED
        assert m.undelivered() == []


async def test_a_failed_discard_does_not_stop_the_resume_pass(tmp_path, shared_engine):
    m = _manager(tmp_path, shared_engine)
    async with m:
        gate = Gate()
        m.step_hook = gate
        held = m.imagine(req(steps=5), owner="a")
        await gate.wait_entered()
        closing = asyncio.create_task(m.close(grace_s=0.0))
        gate.release.set()
        await closing
        assert held.last_event is not None
    async with m:
        (entry,) = m.unfinished()
        m.journal.update = disk_full
        m.discard(entry)  # logged; the next start offers it again
        assert m.unfinished() == []


async def test_embedding_many_images_honours_the_clip_batch_size(tmp_path, shared_engine):
    m = _manager(tmp_path, shared_engine, short_batch_size=64)
    m.config = dataclasses.replace(m.config, clip=dataclasses.replace(m.config.clip, batch_size=4))
    async with m:
        clip = m.engine.clip
        sizes: list[int] = []
        real = clip.model.encode_image
        clip.model.encode_image = lambda batch: (sizes.append(batch.shape[0]), real(batch))[1]
        try:
            await m.embed_images([Image.new("RGB", (32, 32), (i, 0, 0)) for i in range(20)])
        finally:
            clip.model.encode_image = real
        assert sum(sizes) == 20 and max(sizes) <= 4
