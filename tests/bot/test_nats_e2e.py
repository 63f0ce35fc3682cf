"""The distributed mode end to end: this process runs the real bot (discord.py against the fake Discord)
with manager.backend: nats, two `iris worker` processes run the jobs, a real nats-server between them.
Workers are killed with SIGKILL and the broker is restarted while jobs run."""

from __future__ import annotations

import os
import signal
import time

from bot.app import IrisBot
from iris.config import parse_config
from iris.journal import JobState
from iris.service.events import Done, Queued, Started
from iris.service.nats import NatsManager
from tests.bot.conftest import is_final, title
from tests.service.nats_server import nats_server_fixture, toy_config, wait_until, workers_fixture  # noqa: F401

STEPS = 30


def bot_config(w, url):
    data = toy_config(w.tmp / "bot", url)
    data["discord"] = {"dev_guilds": [str(w.guild.id)], "edits_per_window": 4, "edit_window_s": 1.0}
    data["index"] = {"path": str(w.tmp / "index.sqlite3")}
    data["settings"] = {"path": str(w.tmp / "settings.sqlite3")}
    (w.tmp / "bot").mkdir(exist_ok=True)
    return data


def spy_on_handles(manager):
    """Every handle the bot gets, with every event it hears (in order)."""
    seen: dict[str, list] = {}
    imagine = manager.imagine

    def spying(*args, **kwargs):
        handle = imagine(*args, **kwargs)
        events = seen.setdefault(handle.id, [])
        publish = handle._publish

        def record(event):
            events.append(event)
            publish(event)

        handle._publish = record
        return handle

    manager.imagine = spying
    return seen


def finals_of(w, job_id):
    return [
        m
        for m in w.fake.all_messages()
        if is_final(m) and any(c.get("custom_id", "").endswith(job_id) for c in m.walk_components())
    ]


async def test_six_jobs_two_workers_a_kill_and_a_broker_restart(w, nats_server, workers):
    data = bot_config(w, nats_server.url)
    procs = [workers.start(data) for _ in range(2)]
    bot = IrisBot(parse_config(data), guild_ready_timeout=0.1)
    manager = bot.manager
    assert isinstance(manager, NatsManager)  # not the in-process engine
    seen = spy_on_handles(manager)
    async with w.fake.run_bot(bot):
        await wait_until(lambda: len(manager.mirror.workers()) == 2, what="two workers")
        users = [w.alice, w.bob, w.mod]
        recs = []
        for i in range(6):
            user = users[i % 3]
            rec = await w.fake.invoke_slash(
                "imagine", user=user, channel=w.channel, prompt=f"a red circle {i}", steps=STEPS
            )
            recs.append(rec)
        await wait_until(lambda: len(seen) == 6, what="six jobs queued")
        ids = list(seen)

        # A worker dies in the middle of a job: the other one makes it, with the same seed.
        def running_with_steps():
            return next(
                (r for r in manager.mirror.in_state(JobState.RUNNING) if r.entry.step >= 2 and r.worker), None
            )

        victim = await wait_until(running_with_steps, what="a job part done")
        pid = int(victim.worker.rsplit("-", 1)[1])
        assert pid in [p.pid for p in procs]
        os.kill(pid, signal.SIGKILL)
        first_seed = next(ev.seed for ev in seen[victim.id] if isinstance(ev, Started))
        t_kill = time.monotonic()
        await wait_until(
            lambda: (
                sum(isinstance(ev, Started) for ev in seen[victim.id]) >= 2
                or manager.mirror.records[victim.id].entry.state == JobState.GENERATED
            ),
            what="the job restarted on the other worker",
        )

        # The broker goes away for a moment with jobs still queued.
        queued_before = len(manager.mirror.in_state(JobState.QUEUED))
        nats_server.restart(down_s=1.0)

        await wait_until(
            lambda: all(any(isinstance(ev, Done) for ev in seen[j]) for j in ids), 120, "every job done"
        )
        for rec in recs:
            await w.fake.wait_for(lambda rec=rec: is_final(rec.original), 20)
        await wait_until(
            lambda: all(manager.mirror.records[j].entry.state == JobState.DELIVERED for j in ids),
            what="every job marked delivered",
        )

    redelivered_after = time.monotonic() - t_kill
    assert queued_before >= 1, "the broker restart came after the queue had drained"
    for job_id in ids:
        events = seen[job_id]
        assert sum(isinstance(ev, Done) for ev in events) == 1
        assert len(finals_of(w, job_id)) == 1, job_id  # the picture is posted exactly once
        positions = [ev.position for ev in events if isinstance(ev, Queued)]
        assert positions == sorted(positions, reverse=True), positions  # only ever moving up
    firsts = [next((ev.position for ev in seen[j] if isinstance(ev, Queued)), 0) for j in ids]
    assert max(firsts) >= 3, firsts  # places are counted over both workers' queue: one global queue
    starts = [ev for ev in seen[victim.id] if isinstance(ev, Started)]
    done = next(ev for ev in seen[victim.id] if isinstance(ev, Done))
    assert len(starts) == 2 and {s.seed for s in starts} == {first_seed} and done.seed == first_seed
    assert redelivered_after < 60
    assert all(title(r.original) != "Couldn't finish" for r in recs)


async def test_a_bot_that_goes_away_leaves_its_jobs_to_the_next_one(w, nats_server, workers):
    data = bot_config(w, nats_server.url)
    workers.start(data)
    first_bot = IrisBot(parse_config(data), guild_ready_timeout=0.1)
    async with NatsManager(parse_config(data), adopt=False) as watcher:
        async with w.fake.run_bot(first_bot):
            await wait_until(lambda: watcher.mirror.workers(), what="a worker")
            seen = spy_on_handles(first_bot.manager)
            made = await w.fake.invoke_slash(
                "imagine", user=w.alice, channel=w.channel, prompt="a red circle", steps=STEPS
            )
            waiting = await w.fake.invoke_slash(
                "imagine", user=w.bob, channel=w.channel, prompt="a blue square", steps=300
            )
            await wait_until(lambda: len(seen) == 2, what="two jobs queued")
            made_id, waiting_id = list(seen)
            await wait_until(lambda: watcher.mirror.records[made_id].entry.step >= 2, what="job 1 running")
        # The bot is gone; the worker goes on: the first picture is made with nobody to post it.
        await wait_until(lambda: watcher.mirror.records[made_id].entry.state == JobState.GENERATED)
        assert title(made.original) == "Paused: the bot is restarting" and not is_final(made.original)

        assert watcher.mirror.records[waiting_id].entry.state in (JobState.QUEUED, JobState.RUNNING)
        other = {**data, "data_dir": str(w.tmp / "other-bot")}  # another bot process, another id
        second_bot = IrisBot(parse_config(other), guild_ready_timeout=0.1)
        async with w.fake.run_bot(second_bot):
            await w.fake.wait_for(lambda: is_final(made.original), 30)
            await w.fake.wait_for(lambda: is_final(waiting.original), 30)
            await wait_until(
                lambda: (
                    {watcher.mirror.records[j].entry.state for j in (made_id, waiting_id)}
                    == {JobState.DELIVERED}
                ),
                what="both marked delivered",
            )
        assert len(finals_of(w, made_id)) == 1 and len(finals_of(w, waiting_id)) == 1
        assert {watcher.mirror.records[j].bot for j in (made_id, waiting_id)} == {second_bot.manager.id}
