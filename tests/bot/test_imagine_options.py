"""/imagine's recipe and image-prompt options reach the job as asked, and bad combinations are refused
privately before anything is queued."""

from __future__ import annotations

from models.toy import world
from tests.bot.conftest import StepGate, png


async def test_profile_and_image_prompt_reach_the_job(w):
    steer = png(world.make_image("blue", "square", 3))
    async with w.bot() as bot:
        bot.manager.step_hook = StepGate(0)  # hold the job: only what was queued matters here
        await w.fake.invoke_slash(
            "imagine",
            user=w.alice,
            channel=w.channel,
            prompt="a red circle",
            profile="none",
            image_prompt=("steer.png", steer),
            image_weight=-0.5,
        )
        entry = await w.fake.wait_for(lambda: _running_entry(bot), timeout=30)
        assert entry.request.profile == "none"
        assert entry.request.image_prompts == ((steer, -0.5),)
        bot.manager.step_hook.allow()


def _running_entry(bot):
    status = bot.manager.status()
    job = status.running or (status.queued[0] if status.queued else None)
    return bot.manager.journal.get(job.id) if job else None


async def test_an_image_weight_without_an_image_prompt_is_refused_privately(w):
    async with w.bot() as bot:
        rec = await w.fake.invoke_slash(
            "imagine", user=w.alice, channel=w.channel, prompt="a red circle", image_weight=2.0
        )
        await rec.wait_response()
        reply = rec.original
        assert rec.callback_type == 4 and reply.ephemeral and "image_prompt" in reply.content
        assert bot.manager.status().queue_length == 0 and bot.manager.status().running is None


async def test_an_image_prompt_that_is_not_an_image_is_refused_privately(w):
    async with w.bot() as bot:
        rec = await w.fake.invoke_slash(
            "imagine",
            user=w.alice,
            channel=w.channel,
            prompt="a red circle",
            image_prompt=("notes.txt", b"hello", "text/plain"),
        )
        await rec.wait_response()
        reply = rec.original
        assert rec.callback_type == 4 and reply.ephemeral and "not an image" in reply.content
        assert [m for m in w.fake.seen_by(w.bob, w.channel) if m.author is w.fake.bot] == []
        assert bot.manager.status().queue_length == 0 and bot.manager.status().running is None
