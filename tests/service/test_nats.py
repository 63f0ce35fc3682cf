"""The distributed mode's client and worker: a real nats-server, real `iris worker` processes on the
toy models, NatsManager as the bot holds it."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from iris.config import parse_config
from iris.errors import BadRequest, InternalError, JobCancelled, UserLimitReached
from iris.journal import JobState
from iris.request import ImagineRequest
from iris.service.events import Done, Progress, Queued, Started
from iris.service.nats import NatsManager
from models.connect import open_manager
from models.toy import world
from tests.service.nats_server import nats_server_fixture, toy_config, wait_until, workers_fixture  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def req(prompt: str = "a red circle", steps: int = 6, **kw) -> ImagineRequest:
    return ImagineRequest(prompt, steps=steps, **{"width": 32, "height": 32, "cutouts": 4, **kw})


@pytest.fixture
def config(tmp_path, nats_server):
    return toy_config(tmp_path, nats_server.url)


async def test_classify_embed_and_imagine_run_on_a_worker(tmp_path, config, workers):
    workers.start(config)
    manager = open_manager(parse_config(config))
    assert isinstance(manager, NatsManager)  # the config's backend picks it; no torch engine here
    async with manager as m:
        await wait_until(lambda: m.mirror.workers(), what="a worker")
        samples = list(world.samples(6, seed=31))
        preds = [await m.classify(s.image, list(world.CLASSES), top_k=3) for s in samples]
        hits = sum(p[0].label == s.label for p, s in zip(preds, samples, strict=True))
        assert hits >= 5, [(p[0].label, s.label) for p, s in zip(preds, samples, strict=True)]
        vec = await m.embed_text("a blue square")
        assert vec.ndim == 1 and np.isclose(np.linalg.norm(vec), 1.0, atol=1e-3)

        handle = m.imagine(req(seed=7), owner="alice", meta={"channel": "1"})
        events = [ev async for ev in handle.events()]
        kinds = [type(ev) for ev in events]
        assert kinds[0] is Queued and Started in kinds and kinds[-1] is Done, kinds
        assert [ev.step for ev in events if isinstance(ev, Progress)] == list(range(1, 7))
        done = events[-1]
        assert isinstance(done, Done) and done.seed == 7 and done.image.size == (32, 32)
        await wait_until(lambda: m.mirror.records[handle.id].entry.state == JobState.GENERATED)
        entry = await asyncio.to_thread(m.journal.get, handle.id)  # as /show reads it: from a thread
        assert entry is not None and entry.result_png == done.png() and entry.seed == 7
        assert m.mark_delivered(handle.id)
        await wait_until(lambda: m.mirror.records[handle.id].entry.state == JobState.DELIVERED)
        assert [e.id for e in m.journal.of_owner("alice", 5)] == [handle.id]


async def test_short_jobs_go_to_the_least_busy_worker(config, workers):
    workers.start(config)
    workers.start(config)
    async with NatsManager(parse_config(config)) as m:
        await wait_until(lambda: len(m.mirror.workers()) == 2, what="two workers")
        long = m.imagine(req(steps=400), owner="alice")
        busy = await wait_until(
            lambda: next((k for k, v in m.mirror.workers().items() if v.get("running") == long.id), None),
            what="a worker running the generation",
        )
        image = world.make_image("blue", "square", seed=3)
        for _ in range(6):
            preds = await m.classify(image, list(world.CLASSES), top_k=1)
            assert preds[0].label == "blue square"
        assert m.answered_by[busy] == 0 and sum(m.answered_by.values()) == 6
        assert long.cancel()
        with pytest.raises(JobCancelled):
            await long.result()


async def test_caps_are_global_and_cancel_works_from_any_bot(tmp_path, nats_server, workers):
    caps = {"max_queued_per_user": 1, "max_running_per_user": 1}
    data = toy_config(tmp_path, nats_server.url, manager=caps)
    data["imagine"].update(width=64, height=64, cutouts=16)  # steps long enough to count them
    workers.start(data)
    one = parse_config({**data, "data_dir": str(tmp_path / "bot1")})
    two = parse_config({**data, "data_dir": str(tmp_path / "bot2")})
    async with NatsManager(one) as a, NatsManager(two) as b:
        await wait_until(lambda: a.mirror.workers(), what="a worker")
        first = a.imagine(req(steps=300, width=64, height=64, cutouts=16), owner="alice")
        second = a.imagine(req(steps=300, width=64, height=64, cutouts=16), owner="alice")
        with pytest.raises(UserLimitReached):  # in the same bot
            a.imagine(req(), owner="alice")
        await wait_until(lambda: {first.id, second.id} <= set(b.mirror.records), what="bot 2 to see them")
        with pytest.raises(UserLimitReached):  # and in the other one
            b.imagine(req(), owner="alice")
        assert b.status().queue_length >= 1

        steps: list[int] = []

        async def watch() -> None:
            async for ev in first.events():
                if isinstance(ev, Progress):
                    steps.append(ev.step)

        watching = asyncio.create_task(watch())
        await wait_until(lambda: len(steps) >= 3, what="the first job running")
        seen_at_cancel = steps[-1]
        assert b.cancel(first.id)  # pressed in the other bot
        with pytest.raises(JobCancelled):
            await first.result()
        await watching
        await wait_until(lambda: a.mirror.records[first.id].entry.state == JobState.CANCELLED)
        assert steps[-1] - seen_at_cancel <= 2, (seen_at_cancel, steps[-3:])  # stopped within a step
        assert b.cancel(second.id)  # queued or just started: it ends without making a picture
        with pytest.raises(JobCancelled):
            await second.result()
        bob = b.imagine(req(seed=3), owner="bob")  # a slot is free again everywhere
        assert (await bob.result()).seed == 3


async def test_sigterm_finishes_or_hands_back_the_job_and_exits_0(tmp_path, config, workers):
    patient = workers.start({**config, "manager": {**config["manager"], "close_grace_s": 30.0}})
    async with NatsManager(parse_config(config)) as m:
        await wait_until(lambda: m.mirror.workers(), what="a worker")
        first = m.imagine(req(steps=60, seed=1), owner="alice")
        second = m.imagine(req(steps=60, seed=2), owner="bob")
        await wait_until(lambda: m.mirror.records[first.id].entry.step >= 2, what="the first job running")
        patient.send_signal(signal.SIGTERM)
        assert (await first.result()).seed == 1  # it finishes its job...
        assert await asyncio.to_thread(patient.wait, 30) == 0
        assert m.mirror.records[second.id].entry.state == JobState.QUEUED  # ...and takes no other

        hasty = workers.start({**config, "manager": {**config["manager"], "close_grace_s": 0.0}})
        await wait_until(lambda: m.mirror.records[second.id].entry.step >= 2, what="the second job running")
        hasty.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(hasty.wait, 30) == 0
        record = m.mirror.records[second.id]
        assert record.entry.state in (JobState.QUEUED, JobState.RUNNING) and record.entry.seed == 2
        workers.start(config)  # the job was handed back: the next worker makes it
        done = await second.result()
        assert done.seed == 2 and done.steps == 60
        assert "handing job" in workers.log(1)


async def test_the_cli_classifies_and_imagines_on_the_workers(tmp_path, config, workers):
    workers.start(config)
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(config))
    world.make_image("green", "triangle", seed=4).save(tmp_path / "g.png")
    out = tmp_path / "red.png"
    # The CLI's nats mode is the bot's client: it must not load torch (checked in the child).
    code = (
        "import sys; from iris.cli import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules; sys.exit(rc)"
    )

    def iris(*argv: object) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-c", code, *map(str, argv), "--config", str(path), "--json"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)

    classified = await asyncio.to_thread(
        iris, "classify", str(tmp_path / "g.png"), "--labels", "red circle, green triangle, blue square"
    )
    assert classified.returncode == 0, classified.stderr
    assert json.loads(classified.stdout)[0]["labels"][0]["label"] == "green triangle"
    made = await asyncio.to_thread(
        iris, "imagine", "a red circle", "--steps", "6", "--seed", "5", "-o", f"{out}"
    )
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["seed"] == 5
    assert Image.open(out).size == (32, 32)


async def test_a_request_too_big_for_the_broker_is_refused_at_once(config):
    noise = np.random.default_rng(0).integers(0, 255, (700, 700, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")  # ~1.4 MiB: over the broker's 1 MiB messages
    async with NatsManager(parse_config(config)) as m:
        with pytest.raises(BadRequest, match="too large for the job queue"):
            m.imagine(req(init_image=buf.getvalue()), owner="alice")
        assert m.status().queue_length == 0 and not m.mirror.records


async def test_a_job_that_takes_down_every_worker_fails_instead_of_hanging(config, workers):
    from nats.js import api

    from iris.service.nats._broker import MAX_DELIVER

    async with NatsManager(parse_config(config)) as m:
        b = m.broker_()
        handle = m.imagine(req(seed=4), owner="alice")
        # Workers that die on it: each takes it and goes without an ack (a nak is the quick way to say so).
        cfg = api.ConsumerConfig(ack_wait=config["nats"]["ack_wait_s"], max_deliver=MAX_DELIVER)
        names = b.names
        pull = await b.js.pull_subscribe(names.jobs, durable=names.consumer, stream=names.stream, config=cfg)
        for _ in range(MAX_DELIVER - 1):
            (msg,) = await pull.fetch(1, timeout=10)
            assert msg.data.decode() == handle.id
            await msg.nak()
        await pull.unsubscribe()
        workers.start(config)  # the last delivery: the job is failed, not run
        with pytest.raises(InternalError, match="stopped 4 workers"):
            await handle.result()
        assert not any(isinstance(ev, Started) for ev in _drain(handle))
        assert m.mirror.records[handle.id].entry.state == JobState.FAILED


def _drain(handle) -> list:
    events = []
    while not handle._events.empty():
        events.append(handle._events.get_nowait())
    return events


async def test_a_short_job_goes_to_another_worker_when_its_worker_is_gone(config, workers):
    config = {**config, "nats": {**config["nats"], "heartbeat_s": 2.0}}  # a dead worker looks alive 6 s
    procs = [workers.start(config), workers.start(config)]
    async with NatsManager(parse_config(config)) as m:
        await wait_until(lambda: len(m.mirror.workers()) == 2, what="two workers")
        live = m.mirror.workers()
        first = min(live)  # the one asked first when both are idle
        victim = next(p for p in procs if first.endswith(f"-{p.pid}"))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert first in m.mirror.workers()  # its heartbeat has not lapsed yet: it is still asked
        preds = await m.classify(world.make_image("red", "square", seed=2), list(world.CLASSES), top_k=1)
        assert preds[0].label == "red square"
        assert m.answered_by[first] == 0 and sum(m.answered_by.values()) == 1


def test_a_worker_without_a_broker_is_one_clear_line_before_any_model_loads(tmp_path, capsys, monkeypatch):
    """`iris worker` with no NATS server at nats.url: it neither hangs nor loads the models first."""
    import socket

    from iris.cli import main
    from iris.service.nats import _broker

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(_broker, "FIRST_CONNECT_S", 2.0)
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(toy_config(tmp_path, f"nats://127.0.0.1:{port}")))
    opened = []
    monkeypatch.setattr("models.connect.open_manager", lambda *a: opened.append(a))
    code = main(["worker", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and opened == []
    assert err.startswith("iris: error:") and f"127.0.0.1:{port}" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
