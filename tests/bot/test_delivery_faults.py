"""Faults around a delivery: a connection that drops (no answer at all, as a proxy or a network fault
gives) costs a progress edit at most, and the final picture still lands exactly once; nothing is left
running after a job's follower ends; a shutdown during the resume pass, a deleted channel and a picture
deleted twice each end in a clear state and a clear sentence."""

from __future__ import annotations

import asyncio

from bot.commands.imagine._restart import _resume
from iris.journal import JobState
from models.toy import world
from tests.bot.conftest import StepGate, final_of, has_button, is_final, png, title
from tests.bot.test_delivery import job_id, pictures, until_step_6

ORIGINAL = r"/messages/@original$"


async def test_a_dropped_progress_edit_still_lets_the_picture_land(w):
    async with w.bot() as bot:
        gate = StepGate(2)
        bot.manager.step_hook = gate
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a red circle")
        await w.fake.wait_for(lambda: "step 2/8" in title(rec.original), timeout=30)
        jid = job_id(rec.original)
        w.fake.drop_connections("PATCH", ORIGINAL)  # the next progress edit gets no answer
        gate.allow()
        final = await final_of(w.fake, rec, timeout=30)
        assert has_button(final, "Re-roll") and not has_button(final, "Cancel")
        await w.fake.wait_for(lambda: bot.manager.journal.get(jid).state == "delivered")
    assert len(pictures(w.fake, jid)) == 1


async def test_a_dropped_final_edit_is_sent_again(w):
    async with w.bot() as bot:
        rec, gate = await until_step_6(w, bot, "a blue square")
        jid = job_id(rec.original)
        await asyncio.sleep(1.1)  # past the edit budget: the next PATCH is the final one
        w.fake.drop_connections("PATCH", ORIGINAL)
        gate.allow()
        final = await final_of(w.fake, rec, timeout=30)
        assert "blue square" in title(final)
        await w.fake.wait_for(lambda: bot.manager.journal.get(jid).state == "delivered")
    assert len(pictures(w.fake, jid)) == 1 and w.fake.dm_messages(w.alice) == []


async def test_when_every_edit_and_channel_post_drops_the_picture_goes_by_dm(w):
    async with w.bot() as bot:
        rec, gate = await until_step_6(w, bot, "a green circle")
        jid = job_id(rec.original)
        w.fake.drop_connections("PATCH", ORIGINAL, count=10_000)
        w.fake.drop_connections("POST", rf"^/channels/{w.channel.id}/messages$", count=10_000)
        gate.allow()
        dm = await w.fake.wait_for(lambda: next(iter(w.fake.dm_messages(w.alice)), None), timeout=60)
        assert is_final(dm) and "could not be reached" in dm.content
        await w.fake.wait_for(lambda: bot.manager.journal.get(jid).state == "delivered")


async def test_no_progress_task_outlives_its_follower(w):
    async with w.bot() as bot:
        gate = StepGate(2)
        bot.manager.step_hook = gate
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a red circle")
        await w.fake.wait_for(lambda: "step 2/8" in title(rec.original), timeout=30)
        cog = bot.get_cog("Imagine")
        for task in list(cog.tasks):  # the follower ends abruptly (a kill, an unload)
            task.cancel()
        await w.fake.wait_for(lambda: not cog.tasks)
        await asyncio.sleep(0.1)
        progress = [t for t in asyncio.all_tasks() if t.get_name() == "iris-progress" and not t.done()]
        gate.allow()
        assert progress == []


async def test_a_shutdown_while_resuming_keeps_the_job_for_the_next_start(w):
    async with w.bot() as bot:
        gate = StepGate(1)
        bot.manager.step_hook = gate
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a red circle")
        await w.fake.wait_for(lambda: gate.done >= 1, timeout=30)
        jid = job_id(rec.original)
        entry = bot.manager.journal.get(jid)
        closing = asyncio.create_task(bot.manager.close())  # SIGTERM: the manager stops taking jobs
        await w.fake.wait_for(lambda: not bot.manager._accepting)
        await _resume(bot.get_cog("Imagine"), entry)  # the resume pass reaches this job now
        assert bot.manager.journal.get(jid).state in (JobState.QUEUED, JobState.RUNNING)
        gate.allow()
        await closing


async def test_a_second_delete_of_the_same_picture_says_it_is_already_deleted(w):
    async with w.bot():
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a red circle")
        final = await final_of(w.fake, rec)
        first = await w.fake.click(final, "Delete", user=w.alice)  # two clicks before either is handled
        second = await w.fake.click(final, "Delete", user=w.mod)
        await w.fake.wait_for(lambda: final.deleted and first.acknowledged and second.followups)
        reply = second.followups[-1]
        assert reply.ephemeral and "already deleted" in reply.content and "error id" not in reply.content


async def test_a_picture_whose_channel_was_deleted_goes_by_dm_saying_so(w):
    async with w.bot() as bot:
        rec, gate = await until_step_6(w, bot, "a yellow square")
        jid = job_id(rec.original)
        for method, route in (("PATCH", ORIGINAL), ("POST", r"^/channels/\d+/messages$")):
            w.fake.inject_429(method, route, count=10_000, retry_after=0.05)
        gate.allow()
        await w.fake.wait_for(lambda: bot.manager.journal.get(jid).state == "generated", timeout=30)
        for task in list(bot.get_cog("Imagine").tasks):  # killed before the picture landed anywhere
            task.cancel()
    w.fake.end_429s()
    w.guild.channels.remove(w.channel)  # the channel is deleted while the bot is down
    del w.fake.state.channels[w.channel.id]
    async with w.bot() as bot:
        dm = await w.fake.wait_for(lambda: next(iter(w.fake.dm_messages(w.alice)), None), timeout=30)
        assert is_final(dm) and "channel was deleted" in dm.content and "refused" not in dm.content
        await w.fake.wait_for(lambda: bot.manager.journal.get(jid).state == "delivered")


async def test_an_init_image_is_downloaded_after_deferring_and_capped(w):
    async with w.bot() as bot:
        small = png(world.make_image("red", "circle", 1))
        rec = await w.fake.invoke_slash(
            "imagine", user=w.alice, channel=w.channel, prompt="a red circle", init_image=("i.png", small)
        )
        # The CDN now holds more than the declared size (and the limit): the read must stop there.
        attachment = max(w.fake.state.attachments.values(), key=lambda a: a.id)
        attachment.data = small + bytes(600_000)
        reply = await w.fake.wait_for(lambda: rec.followups[-1] if rec.followups else None, timeout=30)
        assert reply.ephemeral and "too large" in reply.content
        assert bot.manager.status().queue_length == 0 and bot.manager.status().running is None
    kinds = [r.path for r in w.fake.requests if r.path.endswith("/callback") or r.path.startswith("/cdn/")]
    assert kinds[0].endswith("/callback") and kinds[1].startswith("/cdn/")  # deferred before downloading
