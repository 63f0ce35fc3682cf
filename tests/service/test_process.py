"""ProcessManager against real child processes (`python -m models.serve`) on the toy models: the Manager
API across the pipe, then the watchdog replacing a child that hangs or dies.

Each ProcessManager start costs a child's torch import (seconds), so the API tests share one child;
the fault tests each need their own. Faults are installed inside the child by tests/service/hooks.py,
keyed by words in the prompt ("hang", "slow", "die")."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import yaml
from PIL import Image

from iris.config import parse_config
from iris.errors import InternalError, JobTimedOut, QueueFull, ServiceClosed, UserLimitReached
from iris.journal import JobState, JournalLocked
from iris.request import ImagineRequest
from iris.service.events import Cancelled, Done, Failed, Progress, Queued, Started
from iris.service.process import ProcessManager, WorkerUnavailable
from iris.service.process._child import config_data
from tests.service import hooks

ROOT = Path(__file__).resolve().parents[2]
FAULTS = "tests.service.hooks:faults"


def _config(tmp: Path, **manager):
    data = yaml.safe_load((ROOT / "config.toy.yaml").read_text())
    data["manager"] = {
        "journal_path": str(tmp / "jobs.sqlite3"),
        "close_grace_s": 2.0,
        "watchdog_grace_s": 0.5,
        "max_queue": 4,
        **manager,
    }
    data["imagine"]["preview_every"] = 2
    data["data_dir"] = str(tmp)
    return parse_config(data)


def req(prompt="a red circle", steps=4, **kw) -> ImagineRequest:
    return ImagineRequest(prompt, seed=kw.pop("seed", 1), steps=steps, width=32, height=32, cutouts=2, **kw)


def picture(colour: str) -> Image.Image:
    im = Image.new("RGB", (64, 64), "white")
    im.paste(Image.new("RGB", (40, 40), colour), (12, 12))
    return im


async def events(handle, timeout=30.0) -> list:
    async def collect():
        return [ev async for ev in handle.events()]

    return await asyncio.wait_for(collect(), timeout)


async def until(handle, kind, timeout=30.0, **fields):
    """Read `handle`'s events up to the first `kind` whose attributes equal `fields`."""

    async def wait():
        async for ev in handle.events():
            if isinstance(ev, kind) and all(getattr(ev, k) == v for k, v in fields.items()):
                return ev
        raise AssertionError(f"the job ended with {ev!r} before a {kind.__name__} {fields}")

    return await asyncio.wait_for(wait(), timeout)


def gone(pid: int) -> bool:
    """Whether process `pid` has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


async def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not gone(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return gone(pid)


# -- the API across the pipe (one child for these) ----------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pm(tmp_path_factory):
    manager = ProcessManager(_config(tmp_path_factory.mktemp("pm")), setup=FAULTS)
    await manager.start()
    await manager.warm_up()
    yield manager
    await manager.close()


pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_short_jobs_give_what_the_engine_gives(pm, toy_engine):
    labels = ["red circle", "blue square", "green triangle"]
    preds = await pm.classify(picture("blue"), labels)
    assert [p.label for p in preds] == [p.label for p in toy_engine.classify([picture("blue")], labels)[0]]
    text = await pm.embed_text("a red circle")
    assert text.dtype == np.float32
    np.testing.assert_allclose(text, toy_engine.embed_text("a red circle"), atol=1e-5)
    images = await pm.embed_images([picture("red"), picture("green")])
    np.testing.assert_allclose(images, toy_engine.embed_images([picture("red"), picture("green")]), atol=1e-5)
    assert await pm.model_id() == toy_engine.clip.name
    assert pm.has_vqgan and pm.make_request("a fox").steps == toy_engine.request("a fox").steps


async def test_a_generation_streams_its_events_in_order_then_is_journaled(pm):
    handle = pm.imagine(req(steps=4), "alice", meta={"channel": "1"})
    evs = await events(handle)
    kinds = [type(e) for e in evs if not isinstance(e, Queued)]
    assert kinds == [Started, Progress, Progress, Progress, Progress, Done]
    assert [e.step for e in evs if isinstance(e, Progress)] == [1, 2, 3, 4]
    assert evs[-1].image.size == (32, 32) and evs[-1].seed == 1
    assert (await handle.result()) is evs[-1]
    entry = await asyncio.to_thread(pm.journal.get, handle.id)
    assert entry.state == JobState.GENERATED and entry.step == 4 and entry.meta == {"channel": "1"}
    assert pm.mark_delivered(handle.id) is True
    deadline = time.monotonic() + 5
    while pm.journal.get(handle.id).state != JobState.DELIVERED and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert pm.journal.get(handle.id).state == JobState.DELIVERED


async def test_cancel_stops_a_running_job_within_a_step(pm):
    handle = pm.imagine(req("a slow red circle", steps=40), "alice")
    await until(handle, Progress, step=1)
    assert pm.status().running.id == handle.id
    assert handle.cancel() is True
    last = (await events(handle))[-1]
    assert isinstance(last, Cancelled) and last.reason == "cancelled"
    entry = pm.journal.get(handle.id)
    assert entry.state == JobState.CANCELLED and entry.step < 5
    assert pm.status().running is None


async def test_queued_jobs_learn_their_positions_and_the_caps_hold(pm):
    first = pm.imagine(req("a slow red circle", steps=40), "alice")
    await until(first, Started)
    behind = [pm.imagine(req(steps=2), owner) for owner in ("bob", "carol", "dan")]
    for position, handle in enumerate(behind, 1):
        assert (await until(handle, Queued)).position == position
    st = pm.status()
    assert st.running.id == first.id and [j.id for j in st.queued] == [h.id for h in behind]
    assert [j.position for j in st.queued] == [1, 2, 3] and st.queue_length == 3
    assert st.device == "cpu"
    # the loaded models come with the child's heartbeats (a fraction of a second behind the job's start)
    for _ in range(100):
        if "vqgan" in pm.status().models:
            break
        await asyncio.sleep(0.05)
    assert "vqgan" in pm.status().models
    with pytest.raises(UserLimitReached):
        pm.imagine(req(), "alice", max_queued_per_user=0)  # alice has one running: the limit is 1
    pm.imagine(req(), "erin").cancel()  # the 4th queued is allowed; max_queue is 4
    more = pm.imagine(req(), "erin")
    with pytest.raises(QueueFull):
        pm.imagine(req(), "fay")
    for handle in [first, *behind, more]:
        handle.cancel()
    for handle in [first, *behind, more]:
        assert isinstance((await events(handle))[-1], Cancelled)
    assert pm.status().queue_length == 0 and pm.status().running is None


async def test_the_config_reaches_the_child_as_it_was_written(tmp_path):
    cfg = _config(tmp_path)
    assert parse_config(config_data(cfg)) == cfg
    auto = parse_config({"imagine": {"steps": "auto"}, "data_dir": str(tmp_path)})
    assert config_data(auto)["imagine"]["steps"] == "auto" and parse_config(config_data(auto)) == auto


# -- lifecycle ----------------------------------------------------------------------------------------


async def test_unfinished_jobs_are_offered_after_a_restart_and_resume(tmp_path):
    cfg = _config(tmp_path, close_grace_s=0.0)
    async with ProcessManager(cfg, setup=FAULTS) as first:
        with pytest.raises(JournalLocked):  # the child's one-line error, from the second child
            await ProcessManager(cfg).start()
        running = first.imagine(req("a slow red circle", steps=6, seed=None), "alice")
        started = await until(running, Started)
        queued = first.imagine(req(steps=3), "bob")
    assert isinstance((await events(running))[-1], Cancelled) and running.id != queued.id
    assert isinstance((await events(queued))[-1], Cancelled)
    with pytest.raises(ServiceClosed):
        first.imagine(req(), "alice")

    async with ProcessManager(cfg) as second:
        offered = {e.id: e for e in second.unfinished()}
        assert set(offered) == {running.id, queued.id}
        again = second.resubmit(offered[running.id])
        second.discard(offered[queued.id])
        done = (await events(again))[-1]
        assert isinstance(done, Done) and done.seed == started.seed  # the seed it was started with
        assert second.unfinished() == []
        await asyncio.sleep(0.2)
        assert second.journal.get(queued.id).state == JobState.CANCELLED
    # after close(), a late delivery is marked in the journal directly
    assert second.mark_delivered(again.id) is True
    async with ProcessManager(cfg) as third:
        assert third.journal.get(again.id).state == JobState.DELIVERED


# -- the watchdog ------------------------------------------------------------------------------------


async def test_a_step_that_never_returns_fails_its_job_and_the_queue_moves_on(tmp_path):
    cfg = _config(tmp_path, job_deadline_s=2.0)
    async with ProcessManager(cfg, setup=FAULTS) as pm:
        old = pm.pid
        hung = pm.imagine(req("hang, red circle", steps=6), "alice")
        after = pm.imagine(req("a blue square", steps=3), "bob")
        await until(hung, Started)
        t0 = time.monotonic()
        last = (await events(hung, timeout=20))[-1]
        waited = time.monotonic() - t0
        assert isinstance(last, Failed) and isinstance(last.error, JobTimedOut)
        assert "stopped responding during step 3" in last.error.message
        assert "restarted" in last.error.message
        assert 2.0 <= waited < 2.0 + 0.5 + 3.0  # the deadline, the grace, and the check's own cadence
        assert isinstance((await events(after))[-1], Done)  # on the new child, same id and handle
        assert pm.restarts == 1 and pm.pid != old and await wait_gone(old)
        entry = pm.journal.get(hung.id)
        assert entry.state == JobState.FAILED and "step 3" in entry.error
        assert pm.journal.get(after.id).state == JobState.GENERATED
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 3.0


async def test_short_jobs_waiting_on_a_hung_step_are_answered_by_the_new_child(tmp_path, monkeypatch):
    monkeypatch.setenv("IRIS_HANG_MARKER", str(tmp_path / "hung"))
    cfg = _config(tmp_path, job_deadline_s=60.0)
    async with ProcessManager(cfg, setup=FAULTS) as pm:
        await pm.warm_up()
        hung = pm.imagine(req("hang, red circle", steps=6), "alice")
        queued = pm.imagine(req("a blue square", steps=3), "bob")
        await hooks.hung(str(tmp_path / "hung"))
        t0 = time.monotonic()
        preds = await asyncio.wait_for(pm.classify(picture("red"), ["red circle", "blue square"]), 20)
        assert preds[0].label == "red circle"
        assert time.monotonic() - t0 < 20  # not the 60 s deadline: the short job's grace found the hang
        last = (await events(hung))[-1]
        assert isinstance(last, Failed) and "during step 3" in last.error.message
        assert isinstance((await events(queued))[-1], Done)
        assert pm.restarts == 1


async def test_a_short_job_that_hangs_every_child_fails_after_two(tmp_path):
    cfg = _config(tmp_path)
    async with ProcessManager(cfg, setup=FAULTS) as pm:
        await pm.warm_up()
        bad = asyncio.ensure_future(pm.embed_text("hang"))
        await asyncio.sleep(0.1)
        good = asyncio.ensure_future(pm.embed_text("a red circle"))
        with pytest.raises(JobTimedOut, match="twice"):
            await asyncio.wait_for(bad, 30)
        assert (await asyncio.wait_for(good, 30)).shape == (await pm.embed_text("a blue square")).shape
        assert pm.restarts == 2


async def test_a_child_killed_mid_job_is_replaced_and_the_queue_completes(tmp_path):
    async with ProcessManager(_config(tmp_path), setup=FAULTS) as pm:
        old = pm.pid
        victim = pm.imagine(req("a slow red circle", steps=20), "alice")
        queued = pm.imagine(req("a blue square", steps=3), "bob")
        await until(victim, Progress, step=1)
        os.kill(old, signal.SIGKILL)
        last = (await events(victim))[-1]
        assert isinstance(last, Failed) and isinstance(last.error, InternalError)
        assert "exit code -9" in last.error.message and "restarted" in last.error.message
        assert isinstance((await events(queued))[-1], Done)
        assert pm.pid != old and pm.restarts == 1
        assert pm.journal.get(victim.id).state == JobState.FAILED


async def test_a_child_that_dies_at_every_start_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("IRIS_TEST_MARKER", str(tmp_path / "started-once"))
    async with ProcessManager(_config(tmp_path), setup="tests.service.hooks:die_on_restart") as pm:
        dying = pm.imagine(req("die, red circle"), "alice")
        behind = pm.imagine(req("a blue square"), "bob")
        last = (await events(dying))[-1]
        assert isinstance(last, Failed) and "exit code 3" in last.error.message
        last = (await events(behind))[-1]
        assert isinstance(last, Failed) and isinstance(last.error, WorkerUnavailable)
        assert "died at start 2 times" in last.error.message
        with pytest.raises(WorkerUnavailable):
            await pm.classify(picture("red"), ["red"])
        with pytest.raises(WorkerUnavailable):
            pm.imagine(req(), "carol")
        assert pm.restarts == 1  # one replacement tried (twice), not a loop


async def test_a_child_that_dies_loading_the_models_twice_is_one_clear_error(tmp_path):
    pm = ProcessManager(_config(tmp_path), setup="tests.service.hooks:die_loading")
    try:
        with pytest.raises(WorkerUnavailable, match="failed 2 times in a row before it answered anything"):
            await asyncio.wait_for(pm.warm_up(), 60)  # as `iris run` does first: it starts the child
        assert pm.restarts == 2
    finally:
        await pm.close()


async def test_close_kills_a_hung_child_within_its_grace(tmp_path):
    async with ProcessManager(_config(tmp_path, job_deadline_s=600.0), setup=FAULTS) as pm:
        hung = pm.imagine(req("hang, red circle"), "alice")
        await until(hung, Progress, step=2)
        pid = pm.pid
        t0 = time.monotonic()
        await pm.close(grace_s=0.5)
        assert time.monotonic() - t0 < 0.5 + 1.0 + 1.0
        assert isinstance((await events(hung))[-1], Cancelled) and await wait_gone(pid)


async def test_the_child_exits_when_its_parent_is_killed(tmp_path):
    script = textwrap.dedent(f"""
        import asyncio, sys
        from iris.config import parse_config
        from iris.service.process import ProcessManager
        from tests.service.test_process import _config
        from pathlib import Path

        async def main():
            pm = ProcessManager(_config(Path({str(tmp_path)!r})))
            await pm.start()
            print(pm.pid, flush=True)
            await asyncio.sleep(600)

        asyncio.run(main())
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(parent.stdout.readline), 60)
        child = int(line)
        assert not gone(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert await wait_gone(child, timeout=5.0)
    finally:
        parent.kill()
        parent.wait()


async def test_a_signal_to_the_whole_group_leaves_the_shutdown_to_the_parent(pm):
    """Ctrl-C, `timeout` and service managers signal the process group: the child must not die of it
    (the watchdog would count a crash and restart it); the parent decides when it stops."""
    child = pm.pid
    restarts = pm.restarts
    for signum in (signal.SIGTERM, signal.SIGINT):
        os.kill(child, signum)
    await asyncio.sleep(0.5)
    assert await pm.model_id()
    assert pm.pid == child and pm.restarts == restarts
