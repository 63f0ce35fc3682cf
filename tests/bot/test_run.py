"""`iris sync` and `iris run`'s signal handling, against the fake Discord."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3

from bot import run
from bot.app import IrisBot
from tests.bot.conftest import StepGate, title
from tests.conftest import engine_for


async def test_sync_pushes_the_commands_and_logs_out(w):
    with w.fake.patch_discord():
        names = await run.sync_only(w.config(), w.fake.token, sync_global=False)
    assert {"classify", "imagine", "status"} <= set(names)
    synced = {c["name"] for c in w.fake.commands[w.guild.id]}
    assert {"classify", "imagine", "status", "Classify image"} <= synced
    seed = next(
        o
        for c in w.fake.commands[w.guild.id]
        if c["name"] == "imagine"
        for o in c["options"]
        if o["name"] == "seed"
    )
    assert seed["max_value"] == 2**53 - 1


async def test_sigterm_pauses_the_jobs_then_closes(w):
    cfg = w.config()
    bot = IrisBot(cfg, engine_for(cfg, w.shared), guild_ready_timeout=0.1)
    caught = []  # if serve() installed no handler, this one takes SIGTERM (instead of killing pytest)
    previous = signal.signal(signal.SIGTERM, lambda *args: caught.append(args))
    try:
        with w.fake.patch_discord():
            running = asyncio.create_task(run.serve(bot, w.fake.token))
            await w.fake.wait_for(lambda: bot.is_ready() or running.done())
            gate = StepGate(2)
            bot.manager.step_hook = gate
            rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a red circle")
            await w.fake.wait_for(lambda: gate.done >= 2)
            os.kill(os.getpid(), signal.SIGTERM)
            await w.fake.wait_for(
                lambda: bot.manager._current is None or bot.manager._current.cancel.is_set() or caught
            )
            gate.allow()
            await asyncio.wait_for(running, 15)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert caught == [] and bot.is_closed()
    assert title(rec.original).startswith("Paused")
    with sqlite3.connect(cfg.manager.journal_path) as db:  # kept for the next start
        assert db.execute("SELECT state FROM jobs").fetchall() == [("running",)]
