"""The distributed mode's client and worker: a real nats-server, real `iris worker` processes on the
toy models, NatsManager as the bot holds it."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from iris.config import parse_config
from iris.journal import JobState
from iris.request import ImagineRequest
from iris.service import open_manager
from iris.service.events import Done, Progress, Queued, Started
from iris.service.nats import NatsManager
from models.toy import world
from tests.service.nats_server import nats_server_fixture, toy_config, wait_until, workers_fixture  # noqa: F401


def req(prompt: str = "a red circle", steps: int = 6, **kw) -> ImagineRequest:
    return ImagineRequest(prompt, steps=steps, width=32, height=32, cutouts=4, **kw)


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
