"""Every picture reaches its person, exactly once; every error stays private; no @mention pings anyone.

The real bot and discord.py against the fake Discord, which refuses what Discord refuses (permissions,
closed DMs, bounds) and counts a retry sooner than a 429's retry_after as a failure.
"""

from __future__ import annotations

import pytest

from iris.journal import JobState
from models.toy import world
from tests.bot.conftest import StepGate, bomb, final_of, has_button, is_final, png, posted_final, title
from tests.fake_discord.models import (
    ATTACH_FILES,
    CREATE_PUBLIC_THREADS,
    MENTION_EVERYONE,
    SEND_MESSAGES,
)


def job_id(message) -> str:
    component = next(c for c in message.walk_components() if c.get("custom_id", "").startswith("iris:"))
    return component["custom_id"].rsplit(":", 1)[1]


def pictures(fake, jid: str) -> list:
    """Every live message, anywhere, that carries the finished picture of job `jid`."""
    return [
        m for m in fake.all_messages() if any(a.filename.startswith(f"iris-{jid}") for a in m.attachments)
    ]


def bot_role(w):
    return next(r for r in w.guild.roles if r.managed)


async def until_step_6(w, bot, prompt: str):
    """Start a job and hold it before its last steps, once the step-6 preview is on screen."""
    gate = StepGate(6)
    bot.manager.step_hook = gate
    rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt=prompt)
    await w.fake.wait_for(lambda: "step 6/8" in title(rec.original), timeout=30)
    return rec, gate


async def test_a_429_storm_on_the_final_edit_is_waited_out_until_it_lands(w):
    async with w.bot() as bot:
        rec, gate = await until_step_6(w, bot, "a red circle")
        jid = job_id(rec.original)
        w.fake.inject_429("PATCH", r"/messages/@original$", count=12, retry_after=0.05)
        gate.allow()
        final = await final_of(w.fake, rec, timeout=30)
        assert has_button(final, "Re-roll") and not has_button(final, "Cancel")
        await w.fake.wait_for(lambda: bot.manager.journal.get(jid).state == "delivered")
    assert w.fake.count_requests("PATCH", r"@original$", status=429) == 12
    assert posted_final(w) is None and len(pictures(w.fake, jid)) == 1  # one picture, in its own message


async def test_a_final_edit_that_keeps_failing_moves_to_the_channel(w):
    async with w.bot() as bot:
        rec, gate = await until_step_6(w, bot, "a blue square")
        jid = job_id(rec.original)
        w.fake.inject_429("PATCH", r"/messages/@original$", count=10_000, retry_after=0.05)
        gate.allow()
        final = await w.fake.wait_for(lambda: posted_final(w), timeout=30)
        w.fake.end_429s()
        assert "blue square" in title(final) and final in w.fake.seen_by(w.bob, w.channel)
        await w.fake.wait_for(lambda: bot.manager.journal.get(jid).state == "delivered")
    assert len(pictures(w.fake, jid)) == 1


async def test_no_send_permission_and_a_dead_token_send_the_picture_by_dm(w):
    w.fake.set_overwrite(w.channel, bot_role(w), 0, SEND_MESSAGES | ATTACH_FILES)
    async with w.bot() as bot:
        gate = StepGate(2)
        bot.manager.step_hook = gate
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a green circle")
        await w.fake.wait_for(lambda: gate.done >= 2)
        jid = job_id(rec.original)
        w.fake.clock.advance(16 * 60)  # the interaction token is dead
        gate.allow()
        dm = await w.fake.wait_for(lambda: next(iter(w.fake.dm_messages(w.alice)), None), timeout=30)
        assert is_final(dm) and "green circle" in title(dm)
        assert f"<#{w.channel.id}>" in dm.content and "missing a permission" in dm.content
        assert w.fake.viewers(dm) == {w.alice.id, w.fake.bot.id}
        await w.fake.wait_for(lambda: bot.manager.journal.get(jid).state == "delivered")
    assert len(pictures(w.fake, jid)) == 1


async def test_when_nothing_can_be_posted_the_job_stays_undelivered(w):
    w.fake.set_overwrite(w.channel, bot_role(w), 0, SEND_MESSAGES | ATTACH_FILES)
    w.fake.close_dms(w.alice)
    async with w.bot() as bot:
        gate = StepGate(2)
        bot.manager.step_hook = gate
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a red square")
        await w.fake.wait_for(lambda: gate.done >= 2)
        jid = job_id(rec.original)
        w.fake.clock.advance(16 * 60)
        gate.allow()
        await w.fake.wait_for(lambda: w.fake.count_requests("POST", r"^/channels/\d+/messages$", 403) >= 2)
        await w.fake.wait_for(lambda: not bot.get_cog("Imagine").tasks, timeout=30)
        dm = w.fake.state.dms.get(w.alice.id)  # the DM was tried last, and refused
        assert dm is not None and w.fake.count_requests("POST", rf"^/channels/{dm.id}/messages$", 403) >= 1
        assert bot.manager.journal.get(jid).state == "generated"  # a later start tries again
        ok = await w.fake.invoke_slash("status", user=w.alice, channel=w.channel)  # the bot goes on
        assert (await ok.wait_original()).ephemeral


async def test_a_kill_between_generation_and_delivery_redelivers_exactly_once(w):
    async with w.bot() as bot:
        rec, gate = await until_step_6(w, bot, "a yellow square")
        jid = job_id(rec.original)
        for method, route in (("PATCH", r"/messages/@original$"), ("POST", r"^/channels/\d+/messages$")):
            w.fake.inject_429(method, route, count=10_000, retry_after=0.05)
        gate.allow()
        await w.fake.wait_for(lambda: bot.manager.journal.get(jid).state == "generated", timeout=30)
        for task in list(bot.get_cog("Imagine").tasks):  # what kill -9 does to the delivery in flight
            task.cancel()
    w.fake.end_429s()
    assert pictures(w.fake, jid) == []
    async with w.bot() as bot:
        final = await final_of(w.fake, rec)  # the old message gets the picture
        assert "yellow square" in title(final) and has_button(final, "Re-roll")
        await w.fake.wait_for(lambda: bot.manager.journal.get(jid).state == "delivered")
    async with w.bot() as bot:  # a third start has nothing left to deliver
        await w.fake.wait_for(lambda: not bot.get_cog("Imagine").tasks)
    assert len(pictures(w.fake, jid)) == 1


async def test_thread_per_job_without_create_threads_queues_nothing(w):
    w.fake.set_overwrite(w.channel, bot_role(w), 0, CREATE_PUBLIC_THREADS)
    async with w.bot(thread_per_job=True) as bot:
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a red circle")
        reply = await w.fake.wait_for(lambda: rec.followups[-1] if rec.followups else None)
        assert reply.ephemeral and "thread" in reply.content and "Create Public Threads" in reply.content
        status = bot.manager.status()
        assert status.queue_length == 0 and status.running is None
        assert bot.manager.journal.in_states(*JobState) == []  # nothing was ever queued
        assert [m for m in w.fake.seen_by(w.bob, w.channel) if m.author is w.fake.bot] == []


@pytest.mark.parametrize(
    "prompt,name",
    [
        ("\u200b\u200f\u2066\u3164 \u200e", "imagine"),
        ("\u200b" * 95 + "  a  red\u200f circle", "a red circle"),
    ],
)
async def test_thread_names_never_look_blank(w, prompt, name):
    async with w.bot(thread_per_job=True):
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt=prompt)
        await w.fake.wait_for(lambda: title(rec.original).startswith("Working on it"))
        thread = await w.fake.wait_for(
            lambda: next((c for c in w.fake.state.channels.values() if c.parent is w.channel), None)
        )
        assert thread.name == name
        await w.fake.wait_for(lambda: any(is_final(m) for m in w.fake.channel_messages(thread)), timeout=30)


@pytest.mark.parametrize(
    "data,says,at_once",
    [
        (b"", "is empty", True),  # the declared size says so: answered before deferring
        (b"\x89PNG\r\n\x1a\n" + bytes(500_000), "too large", True),
        (b"<!doctype html><html></html>", "not", False),  # only the bytes tell: read after deferring
        (bomb(), "pixels", False),
    ],
)
async def test_a_bad_init_image_is_answered_privately(w, data, says, at_once):
    async with w.bot() as bot:
        rec = await w.fake.invoke_slash(
            "imagine", user=w.alice, channel=w.channel, prompt="a red circle", init_image=("i.png", data)
        )
        await rec.wait_response()
        if at_once:
            assert rec.callback_type == 4 and not rec.deferred  # never a public "thinking…"
            reply = rec.original
        else:  # the public "thinking…" is removed; the reason goes to the requester only
            reply = await w.fake.wait_for(lambda: rec.followups[-1] if rec.followups else None)
            await w.fake.wait_for(lambda: rec.original is None or rec.original.deleted)
        assert reply.ephemeral and says in reply.content and "Traceback" not in reply.content
        assert bot.manager.status().queue_length == 0 and bot.manager.status().running is None
        assert [m for m in w.fake.seen_by(w.bob, w.channel) if m.author is w.fake.bot] == []
    good = png(world.make_image("red", "circle", 1))
    async with w.bot():
        rec = await w.fake.invoke_slash(
            "imagine", user=w.alice, channel=w.channel, prompt="a red circle", init_image=("i.png", good)
        )
        assert is_final(await final_of(w.fake, rec))


async def test_mentions_in_prompts_ping_nobody(w):
    bot_role(w).permissions |= MENTION_EVERYONE  # so @everyone would ping, if allowed
    async with w.bot():
        bad = await w.fake.invoke_slash(
            "imagine", user=w.alice, channel=w.channel, prompt=f"<@{w.alice.id}> @everyone:500"
        )
        await bad.wait_response()
        assert bad.ephemeral and f"<@{w.alice.id}> @everyone" in bad.original.content  # echoed back
        good = await w.fake.invoke_slash(
            "imagine", user=w.alice, channel=w.channel, prompt=f"a red circle <@{w.bob.id}> @everyone"
        )
        await final_of(w.fake, good)
    sent = [m for m in w.fake.all_messages() if m.author is w.fake.bot]
    assert len(sent) >= 2 and {uid for m in sent for uid in w.fake.pinged(m)} == set()


async def test_a_job_that_fails_tells_its_reason_to_the_requester_only(w):
    async with w.bot() as bot:

        def broken_step(gen) -> None:  # a fault inside generation (as out of memory while decoding would be)
            if gen.steps_done == 3:
                raise RuntimeError("the device fell over")

        bot.manager.step_hook = broken_step
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a red circle")
        await w.fake.wait_for(lambda: title(rec.original) == "Couldn't finish", timeout=30)
        private = await w.fake.wait_for(lambda: rec.followups[-1] if rec.followups else None)
        assert private.ephemeral and "error id" in private.content and "red circle" in private.content
        public = [m for m in w.fake.seen_by(w.bob, w.channel) if m.author is w.fake.bot]
        assert public == [rec.original] and not has_button(rec.original, "Cancel")
        assert all("error" not in str(m.embeds).lower() and "error" not in m.content for m in public)
        assert "fell over" not in private.content  # the traceback stays in the log
