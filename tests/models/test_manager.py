"""The inference manager on the toy models: real worker thread, real generations, real SQLite journal.

Synchronisation is by events (the step hook, job events), not by sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from iris.config import parse_config
from iris.errors import (
    InternalError,
    JobCancelled,
    JobTimedOut,
    OutOfMemory,
    QueueFull,
    ServiceClosed,
    UserLimitReached,
)
from iris.journal import JobState, JournalLocked
from iris.request import ImagineRequest
from iris.service.events import Cancelled, Done, Failed, Progress, Queued, Started
from models.engine import Engine
from models.manager import InferenceManager
from models.toy import world

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shared_engine():
    """One toy engine (models loaded once) for every manager in this module."""
    engine = Engine(_config(Path("unused")))
    _ = engine.clip, engine.vqgan
    return engine


def _config(tmp_path: Path, **manager):
    data = yaml.safe_load((ROOT / "config.toy.yaml").read_text())
    data["manager"] = {"journal_path": str(tmp_path / "jobs.sqlite3"), "close_grace_s": 5.0, **manager}
    data["imagine"]["preview_every"] = 2
    return parse_config(data)


def _manager(tmp_path, engine, **manager) -> InferenceManager:
    cfg = _config(tmp_path, **manager)
    eng = Engine(cfg)
    eng._clip, eng._vqgan = engine._clip, engine._vqgan  # share the loaded models, keep this config
    return InferenceManager(cfg, eng)


def req(prompt="a red circle", steps=3, **kw) -> ImagineRequest:
    return ImagineRequest(prompt, seed=kw.pop("seed", 1), steps=steps, width=32, height=32, cutouts=2, **kw)


class Gate:
    """A step hook that can hold the worker inside a step until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.steps = 0

    def __call__(self, gen) -> None:
        self.steps += 1
        self.entered.set()
        self.release.wait(timeout=30)

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 30)


async def collect(handle):
    return [e async for e in handle.events()]


async def test_generations_complete_fifo(tmp_path, shared_engine):
    async with _manager(tmp_path, shared_engine) as m:
        handles = [m.imagine(req(steps=2, seed=i), owner=f"u{i}") for i in range(3)]
        order: list[str] = []

        async def run(h):
            await h.result()
            order.append(h.id)

        await asyncio.gather(*(run(h) for h in handles))
        assert order == [h.id for h in handles]
        events = [h.last_event for h in handles]
        assert all(isinstance(e, Done) for e in events)


async def test_classify_interleaves_with_a_long_generation(tmp_path, shared_engine):
    async with _manager(tmp_path, shared_engine) as m:
        steps = []
        m.step_hook = lambda gen: steps.append(gen.steps_done)
        long = m.imagine(req(steps=300), owner="a")
        async for ev in long.events():
            if isinstance(ev, Progress) and ev.step >= 2:
                break
        before = len(steps)
        image = world.make_image("green", "triangle", seed=5)
        preds = await m.classify(image, list(world.CLASSES), top_k=3)
        after = len(steps)
        assert preds[0].label == "green triangle"
        assert after - before <= 1, f"classify waited {after - before} steps"
        assert not isinstance(long.last_event, Done | Failed | Cancelled)
        assert long.cancel()
        with pytest.raises(JobCancelled):
            await long.result()


async def test_concurrent_classifies_are_batched_and_exact(tmp_path, shared_engine):
    samples = list(world.samples(8, seed=77))
    labels = list(world.CLASSES)
    clip = shared_engine.clip
    alone = [clip.classify([s.image], labels, "openai", top_k=12)[0] for s in samples]
    async with _manager(tmp_path, shared_engine) as m:
        gate = Gate()
        m.step_hook = gate
        blocker = m.imagine(req(steps=2), owner="x")
        await gate.wait_entered()  # the worker is inside a step: classifies pile up
        passes = clip.image_forward_passes
        tasks = [asyncio.create_task(m.classify(s.image, labels, top_k=12)) for s in samples]
        await asyncio.sleep(0)  # let every task submit (scheduling only, not synchronisation)
        while len(m._short) < len(samples):
            await asyncio.sleep(0)
        gate.release.set()
        results = await asyncio.gather(*tasks)
        await blocker.result()
    assert clip.image_forward_passes - passes < len(samples)
    for got, want in zip(results, alone, strict=True):
        assert [p.label for p in got] == [p.label for p in want]
        np.testing.assert_allclose([p.probability for p in got], [p.probability for p in want], atol=1e-5)


async def test_embed_text_and_images(tmp_path, shared_engine):
    async with _manager(tmp_path, shared_engine) as m:
        q = await m.embed_text("a blue square")
        pair = [world.make_image("blue", "square", 3), world.make_image("red", "circle", 4)]
        ims = await m.embed_images(pair)
    assert q.shape == (128,) and ims.shape == (2, 128)
    assert float(ims[0] @ q) > float(ims[1] @ q)


async def test_cancel_queued_and_running(tmp_path, shared_engine):
    async with _manager(tmp_path, shared_engine) as m:
        gate = Gate()
        m.step_hook = gate
        running = m.imagine(req(steps=400), owner="a")
        queued = m.imagine(req(steps=2), owner="b")
        await gate.wait_entered()
        assert queued.cancel()
        assert isinstance((await collect(queued))[-1], Cancelled)
        assert m.status().queue_length == 0
        assert running.cancel()
        steps_at_cancel = gate.steps
        gate.release.set()
        events = await collect(running)
        assert isinstance(events[-1], Cancelled)
        assert gate.steps - steps_at_cancel <= 1
        assert not running.cancel()  # already over
        m.step_hook = None
        ok = m.imagine(req(steps=1), owner="a")
        assert isinstance(await ok.result(), Done)  # the worker is free again


async def test_deadline_stops_the_job_and_the_worker_goes_on(tmp_path, shared_engine):
    async with _manager(tmp_path, shared_engine, job_deadline_s=0.3) as m:
        slow = threading.Event()
        m.step_hook = lambda gen: slow.wait(0.1)  # each step takes ≥ 0.1 s
        h = m.imagine(req(steps=400), owner="a")
        with pytest.raises(JobTimedOut, match=r"0\.3 s"):
            await h.result()
        assert m.journal.get(h.id).state == "failed"
        m.step_hook = None
        assert isinstance(await m.imagine(req(steps=1), owner="a").result(), Done)


async def test_a_failing_job_fails_alone(tmp_path, shared_engine):
    async with _manager(tmp_path, shared_engine) as m:

        def hook(gen):
            if "boom" in gen.request.prompt:
                raise ValueError("synthetic bug")

        m.step_hook = hook
        bad = m.imagine(req("a boom circle", steps=3), owner="a")
        good = m.imagine(req(steps=2), owner="b")
        with pytest.raises(InternalError, match="error id"):
            await bad.result()
        assert isinstance(await good.result(), Done)


async def test_queue_full_and_user_caps(tmp_path, shared_engine):
    async with _manager(tmp_path, shared_engine, max_queue=2, max_queued_per_user=1) as m:
        gate = Gate()
        m.step_hook = gate
        handles = [m.imagine(req(steps=1), owner="alice")]
        await gate.wait_entered()
        handles.append(m.imagine(req(steps=1), owner="alice"))  # 1 running + 1 queued: alice's limit
        with pytest.raises(UserLimitReached, match="limit is 2"):
            m.imagine(req(steps=1), owner="alice")
        handles.append(m.imagine(req(steps=1), owner="bob"))
        with pytest.raises(QueueFull) as full:
            m.imagine(req(steps=1), owner="carol")
        assert full.value.queue_length == 2 and "2 jobs waiting" in full.value.message
        status = m.status()
        assert status.queue_length == 2 and status.running.owner == "alice"
        assert [q.position for q in status.queued] == [1, 2]
        gate.release.set()
        for h in handles:
            await h.result()


async def test_queue_positions_and_eta_move(tmp_path, shared_engine):
    async with _manager(tmp_path, shared_engine) as m:
        first = m.imagine(req(steps=4), owner="a")
        second = m.imagine(req(steps=4), owner="b")
        ev2 = await collect(second)
        await first.result()
    positions = [e.position for e in ev2 if isinstance(e, Queued)]
    # 2 if the first job had not started yet when the second was queued, else 1; never going up
    assert positions[0] in (1, 2) and 1 in positions and positions == sorted(positions, reverse=True)
    etas = [e.eta_s for e in ev2 if isinstance(e, Queued) and e.eta_s is not None]
    assert etas, "an ETA appears once a step time is measured"
    assert isinstance(ev2[-1], Done)
    progress = [e for e in ev2 if isinstance(e, Progress)]
    assert [p.step for p in progress] == [1, 2, 3, 4]
    assert progress[1].preview_png and progress[1].preview_png.startswith(b"\x89PNG")  # cadence 2
    assert progress[0].preview_png is None


async def test_out_of_memory_retries_with_fewer_cutouts(tmp_path, shared_engine):
    async with _manager(tmp_path, shared_engine) as m:

        def hook(gen):
            if gen.request.cutouts > 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        m.step_hook = hook
        h = m.imagine(req(steps=2), owner="a")
        events = await collect(h)
    done = events[-1]
    assert isinstance(done, Done) and done.reduced == "cutouts 2 → 1"
    started = [e for e in events if isinstance(e, Started)]
    assert started[-1].reduced == "cutouts 2 → 1" and started[0].seed == started[-1].seed


async def test_out_of_memory_everywhere_fails_clearly(tmp_path, shared_engine):
    async with _manager(tmp_path, shared_engine) as m:

        def hook(gen):
            raise torch.OutOfMemoryError("CUDA out of memory")

        m.step_hook = hook
        big = ImagineRequest("a red circle", seed=1, steps=2, width=64, height=64, cutouts=4)
        h = m.imagine(big, owner="a")
        events = await collect(h)
        assert isinstance(events[-1], Failed) and isinstance(events[-1].error, OutOfMemory)
        assert "48×48" in events[-1].error.message
        m.step_hook = None
        assert isinstance(await m.imagine(req(steps=1), owner="a").result(), Done)


async def test_close_with_jobs_in_flight_and_journal_round_trip(tmp_path, shared_engine):
    init = world.make_image("red", "square", 3)
    import io

    buf = io.BytesIO()
    init.save(buf, format="PNG")
    m = _manager(tmp_path, shared_engine, close_grace_s=0.0)
    await m.start()
    gate = Gate()
    m.step_hook = gate
    running = m.imagine(req(steps=50), owner="a", meta={"channel": "123", "message": "456"})
    queued = m.imagine(req("a blue square", steps=2, init_image=buf.getvalue()), owner="b")
    await gate.wait_entered()
    closing = asyncio.create_task(m.close())
    await asyncio.sleep(0)
    gate.release.set()
    await closing
    for h in (running, queued):
        ev = h.last_event
        assert isinstance(ev, Cancelled) and ev.reason == "shutdown"

    again = _manager(tmp_path, shared_engine)
    async with again:
        entries = again.unfinished()
        assert [e.id for e in entries] == [running.id, queued.id]
        assert entries[0].meta == {"channel": "123", "message": "456"}
        assert entries[1].request.init_image == buf.getvalue()
        assert entries[1].request.prompt == "a blue square"
        h = again.resubmit(entries[1])
        assert h.id == queued.id
        done = await h.result()
        again.discard(entries[0])
        assert again.unfinished() == []
        assert again.journal.get(queued.id).state == JobState.GENERATED
        assert again.journal.get(running.id).state == "cancelled"
    assert isinstance(done, Done)


async def test_refuses_after_close(tmp_path, shared_engine):
    m = _manager(tmp_path, shared_engine)
    await m.start()
    await m.close()
    from iris.errors import ServiceClosed

    with pytest.raises(ServiceClosed):
        m.imagine(req(), owner="a")
    with pytest.raises(ServiceClosed):
        await m.embed_text("x")


async def test_a_generated_picture_is_journaled_and_redelivered_after_a_restart(tmp_path, shared_engine):
    async with _manager(tmp_path, shared_engine) as m:
        h = m.imagine(req(steps=2, seed=None), owner="a", meta={"channel": "7"})
        done = await h.result()
        entry = m.journal.get(h.id)
        assert entry.state == JobState.GENERATED  # made, not yet delivered
        assert entry.seed == done.seed and entry.step == 2 and entry.clip_score == done.clip_score
        assert entry.result_png == done.png()
        assert m.undelivered() == []  # this run delivers from the Done event; the snapshot is the last run's
    # "kill -9" before the bot confirmed delivery: the next start offers it again, once
    async with _manager(tmp_path, shared_engine) as again:
        [pending] = again.undelivered()
        assert pending.id == h.id and pending.result_png == done.png() and pending.meta == {"channel": "7"}
        assert again.mark_delivered(h.id) is True
        assert again.mark_delivered(h.id) is False  # idempotent
        assert again.undelivered() == []
        assert again.journal.get(h.id).state == JobState.DELIVERED
        assert again.mark_delivered("no-such-job") is False
    async with _manager(tmp_path, shared_engine) as third:
        assert third.undelivered() == []


async def test_job_states_are_the_enum(tmp_path, shared_engine):
    async with _manager(tmp_path, shared_engine) as m:
        gate = Gate()
        m.step_hook = gate
        running = m.imagine(req(steps=2), owner="a")
        queued = m.imagine(req(steps=1), owner="b")
        await gate.wait_entered()
        st = m.status()
        assert st.running.state is JobState.RUNNING and st.queued[0].state is JobState.QUEUED
        assert m.journal.get(queued.id).state is JobState.QUEUED
        gate.release.set()
        await running.result()
        await queued.result()


async def test_an_error_making_the_final_picture_fails_the_job_at_once(tmp_path, shared_engine):
    async with _manager(tmp_path, shared_engine, job_deadline_s=600) as m:
        steps = []

        def hook(gen):
            steps.append(gen.steps_done)

            def broken(stopped=False):
                raise torch.OutOfMemoryError("CUDA out of memory while decoding")

            gen.result = broken

        m.step_hook = hook
        h = m.imagine(req(steps=2), owner="a")
        events = await asyncio.wait_for(collect(h), 20)
        assert isinstance(events[-1], Failed) and isinstance(events[-1].error, OutOfMemory)
        assert "final picture" in events[-1].error.message
        assert steps == [0, 1]  # no step after the last one
        assert m.journal.get(h.id).state == JobState.FAILED
        m.step_hook = lambda gen: setattr(gen, "result", lambda stopped=False: 1 / 0)
        h = m.imagine(req(steps=1), owner="a")
        with pytest.raises(InternalError, match="error id"):
            await asyncio.wait_for(h.result(), 20)


async def test_a_broken_preview_still_reports_its_step(tmp_path, shared_engine, caplog):
    async with _manager(tmp_path, shared_engine) as m:

        def hook(gen):
            def broken():
                raise RuntimeError("preview exploded")

            gen.preview = broken

        m.step_hook = hook
        h = m.imagine(req(steps=4), owner="a")
        events = await asyncio.wait_for(collect(h), 20)
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.step for p in progress] == [1, 2, 3, 4]  # step 2 (on the preview cadence) is there
    assert all(p.preview_png is None for p in progress)
    assert isinstance(events[-1], Done)
    assert any("preview of job" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_a_failing_journal_write_at_the_end_neither_loses_the_result_nor_spins(
    tmp_path, shared_engine, caplog
):
    async with _manager(tmp_path, shared_engine) as m:
        real_update = m.journal.update

        def disk_full(job_id, **changes):
            if changes.get("state") in (JobState.GENERATED, JobState.FAILED):
                raise sqlite3.OperationalError("database or disk is full")
            real_update(job_id, **changes)

        m.journal.update = disk_full
        caplog.clear()
        h = m.imagine(req(steps=2), owner="a")
        done = await asyncio.wait_for(h.result(), 20)  # the caller still hears the end
        assert isinstance(done, Done)
        assert m._current is None
        m.step_hook = lambda gen: 1 / 0  # a failing job whose FAILED write fails too
        bad = m.imagine(req(steps=2), owner="a")
        with pytest.raises(InternalError):
            await asyncio.wait_for(bad.result(), 20)
        m.step_hook = None
        m.journal.update = real_update
        assert isinstance(await asyncio.wait_for(m.imagine(req(steps=1), owner="a").result(), 20), Done)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) <= 3, f"{len(errors)} error records: the worker spun"


async def test_out_of_memory_retry_runs_after_the_failed_step_is_released(tmp_path, shared_engine):
    class Held:
        """An object only the failing step's frame refers to."""

    async with _manager(tmp_path, shared_engine) as m:
        held: list[weakref.ref] = []
        first_gen: list[weakref.ref] = []

        def hook(gen):
            if not held:
                in_frame = Held()
                held.append(weakref.ref(in_frame))
                first_gen.append(weakref.ref(gen))
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        seen_at_retry = []
        real_new = m.engine.new_generation

        def new_generation(request):
            if held:  # the retry: is the failed attempt gone?
                seen_at_retry.append((request.cutouts, held[0]() is None, first_gen[0]() is None))
            return real_new(request)

        m.engine.new_generation = new_generation
        m.step_hook = hook
        events = await asyncio.wait_for(collect(m.imagine(req(steps=2), owner="a")), 20)
    assert isinstance(events[-1], Done) and events[-1].reduced == "cutouts 2 → 1"
    assert seen_at_retry == [(1, True, True)]  # fewer cutouts; the failed step's frame and generation freed


async def test_a_second_manager_on_the_same_journal_refuses_to_start(tmp_path, shared_engine):
    async with _manager(tmp_path, shared_engine) as first:
        h = first.imagine(req(steps=1), owner="a")
        second = _manager(tmp_path, shared_engine)
        with pytest.raises(JournalLocked, match=r"jobs\.sqlite3"):
            await second.start()
        with pytest.raises(ServiceClosed):
            second.imagine(req(steps=1), owner="b")
        await second.close()  # harmless after a refused start
        await h.result()
    async with _manager(tmp_path, shared_engine) as third:  # released on close
        assert third.journal.get(h.id).state == JobState.GENERATED


async def _stop_mid_run(m: InferenceManager, gate: Gate) -> None:
    """Shut down while the worker is inside a step: what is queued or running stays unfinished."""
    await gate.wait_entered()
    closing = asyncio.create_task(m.close())
    await asyncio.sleep(0)
    gate.release.set()
    await closing


async def test_a_resumed_job_keeps_the_seed_it_started_with(tmp_path, shared_engine):
    m = _manager(tmp_path, shared_engine, close_grace_s=0.0)
    await m.start()
    gate = Gate()
    m.step_hook = gate
    h = m.imagine(req(steps=3, seed=None), owner="a")  # the engine draws the seed
    await _stop_mid_run(m, gate)
    [started] = [e for e in await collect(h) if isinstance(e, Started)]
    async with _manager(tmp_path, shared_engine) as again:
        [entry] = again.unfinished()
        assert entry.seed == started.seed and entry.request.seed is None
        resumed = again.resubmit(entry)
        events = await collect(resumed)
    assert [e.seed for e in events if isinstance(e, Started)] == [started.seed]
    assert events[-1].seed == started.seed


async def test_resubmit_ignores_the_queue_bound_and_user_caps(tmp_path, shared_engine):
    m = _manager(tmp_path, shared_engine, close_grace_s=0.0)
    await m.start()
    gate = Gate()
    m.step_hook = gate
    ids = [m.imagine(req(steps=2, seed=i), owner="alice").id for i in range(3)]  # 1 running + 2 queued
    await _stop_mid_run(m, gate)
    async with _manager(tmp_path, shared_engine, max_queue=1, max_queued_per_user=0) as again:
        entries = again.unfinished()
        assert [e.id for e in entries] == ids
        handles = [again.resubmit(e) for e in entries]  # admitted before the restart: all come back
        with pytest.raises((QueueFull, UserLimitReached)):  # a new job still meets the bounds
            again.imagine(req(steps=1), owner="alice")
        st = again.status()
        assert all(q.state is JobState.QUEUED for q in st.queued)
        assert [q.position for q in st.queued] == list(range(1, len(st.queued) + 1))
        events = [await collect(h) for h in handles]
        for evs in events:
            assert isinstance(evs[-1], Done)
        last_queued = [e.position for e in events[2] if isinstance(e, Queued)]
        assert last_queued[-1] == 1 and last_queued == sorted(last_queued, reverse=True)  # it moved up
        assert [again.journal.get(i).state for i in ids] == [JobState.GENERATED] * 3


async def test_retention_at_start_then_at_most_hourly(tmp_path, shared_engine):
    day = 86400.0
    async with _manager(tmp_path, shared_engine, retention_days=0) as m:  # 0: keep forever
        old = await m.imagine(req(steps=1), owner="a").result()
        old_id = m.journal.in_states(JobState.GENERATED)[0].id
        assert m.mark_delivered(old_id) and old.seed == 1
        m.clock = lambda: time.time() + 1000 * day
        await m.embed_text("x")  # a worker pass: retention is off, nothing goes
        assert m.journal.get(old_id) is not None

    now = [time.time() + 31 * day]
    m = _manager(tmp_path, shared_engine, retention_days=30)
    m.clock = lambda: now[0]
    async with m:
        assert m.journal.get(old_id) is None  # pruned at start
        h = m.imagine(req(steps=1), owner="a")
        await h.result()
        m.mark_delivered(h.id)
        # the new job is made old, but the last pass (at start) was less than an hour ago...
        m.journal._db.execute("UPDATE jobs SET updated = updated - 62 * 86400")
        now[0] += 1800
        await m.embed_text("x")
        await m.embed_text("y")  # the pass after "x" has run
        assert m.journal.get(h.id) is not None
        now[0] += 1801  # ...an hour later the next worker pass deletes it
        await m.embed_text("x")
        await m.embed_text("y")  # the pass runs after the short job: wait for the next one
        assert m.journal.get(h.id) is None


async def test_mark_delivered_works_after_close(tmp_path, shared_engine):
    """A delivery still waiting out a rate limit lands after the manager closed: it must still count."""
    async with _manager(tmp_path, shared_engine) as m:
        h = m.imagine(req(steps=1), owner="a")
        await h.result()
    assert m.mark_delivered(h.id) is True
    assert m.mark_delivered(h.id) is False
    async with _manager(tmp_path, shared_engine) as again:
        assert again.undelivered() == []  # not posted twice
        assert again.journal.get(h.id).state == JobState.DELIVERED
