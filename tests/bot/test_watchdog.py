"""The bot with its device work in a child process (manager.isolate): a step that never returns is
stopped by the watchdog, its requester is told why in one private line, and the bot answers again.

The fault is real: the child's step hook (tests/service/hooks.py) sleeps forever inside step 3."""

from __future__ import annotations

import dataclasses

from bot.app import IrisBot
from iris.service.process import ProcessManager
from models.toy import world
from tests.bot.conftest import png, title


async def test_a_hung_step_is_stopped_its_requester_told_and_the_bot_answers_again(w):
    cfg = w.config()
    cfg = dataclasses.replace(
        cfg, manager=dataclasses.replace(cfg.manager, job_deadline_s=2.0, watchdog_grace_s=0.5)
    )
    manager = ProcessManager(cfg, setup="tests.service.hooks:faults")
    bot = IrisBot(cfg, manager=manager, guild_ready_timeout=0.1)
    async with w.fake.run_bot(bot, timeout=60):
        assert bot.manager is manager and manager.pid is not None
        first = manager.pid
        prompt = "hang, a red circle"
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt=prompt)
        await w.fake.wait_for(lambda: title(rec.original) == "Couldn't finish", timeout=30)
        private = await w.fake.wait_for(lambda: rec.followups[-1] if rec.followups else None)
        assert private.ephemeral and "Traceback" not in private.content
        assert "the device stopped responding during step 3" in private.content
        assert "the worker restarted" in private.content
        assert manager.restarts == 1 and manager.pid != first

        image = world.make_image("blue", "square", seed=3)
        ok = await w.fake.invoke_slash(
            "classify",
            user=w.bob,
            channel=w.channel,
            image=("shape.png", png(image), "image/png"),
            labels="red circle, blue square, green triangle",
        )
        reply = await ok.wait_original()
        assert reply.embeds[0]["description"].splitlines()[0].endswith("blue square")
        (entry,) = bot.manager.journal.of_owner(str(w.alice.id), 5)
        assert entry.state == "failed" and "step 3" in entry.error
