"""/history and /show through the fake Discord: a person's own jobs, privately; a past picture posted
again with its buttons, by its owner, or by anyone who can still see it posted."""

from __future__ import annotations

import re

from tests.bot.conftest import StepGate, final_of, has_button, is_final


async def make_picture(w, member, prompt):
    rec = await w.fake.invoke_slash("imagine", user=member, channel=w.channel, prompt=prompt, steps=2)
    final = await final_of(w.fake, rec)
    job_id = re.search(r"iris-([0-9a-f]+)\.png", final.attachments[0].filename)[1]
    return final, job_id


async def reply_to(w, name, member, channel=None, **options):
    rec = await w.fake.invoke_slash(name, user=member, channel=channel or w.channel, **options)
    await rec.wait_response()
    return await rec.wait_original()


async def test_history_lists_only_the_callers_jobs_privately(w):
    async with w.bot() as bot:
        alices, alice_job = await make_picture(w, w.alice, "a red circle")
        _, bob_job = await make_picture(w, w.bob, "a blue square")
        await w.fake.wait_for(lambda: bot.manager.journal.get(alice_job).state == "delivered")
        reply = await reply_to(w, "history", w.alice)
        assert reply.ephemeral and w.fake.viewers(reply) == {w.alice.id}
        text = reply.embeds[0]["description"]
        assert (
            alice_job in text and "a red circle" in text and bob_job not in text and "blue square" not in text
        )
        seed = bot.manager.journal.get(alice_job).seed
        assert f"seed {seed}" in text and "delivered" in text
        assert f"/channels/{w.guild.id}/{w.channel.id}/{alices.id}" in text  # the picture's message
        empty = await reply_to(w, "history", w.mod)
        assert empty.ephemeral and "no pictures yet" in empty.embeds[0]["description"]


async def test_show_reposts_a_picture_with_its_buttons_and_guards_others(w):
    async with w.bot():
        posted, job = await make_picture(w, w.alice, "a green triangle")
        mine = await reply_to(w, "show", w.alice, job=job)
        assert (
            is_final(mine) and not mine.ephemeral and mine.attachments[0].data == posted.attachments[0].data
        )
        assert all(has_button(mine, b) for b in ("Re-roll", "Variations", "Delete"))
        # Still posted where bob can read it: public already, so bob may show it too.
        theirs = await reply_to(w, "show", w.bob, job=job)
        assert is_final(theirs) and not theirs.ephemeral
        await w.fake.delete_message(posted)
        await w.fake.delete_message(mine)
        await w.fake.delete_message(theirs)
        refused = await reply_to(w, "show", w.bob, job=job)  # gone from the channel: the owner's again
        assert (
            refused.ephemeral and w.fake.viewers(refused) == {w.bob.id} and "isn't yours" in refused.content
        )
        assert is_final(await reply_to(w, "show", w.alice, job=job))


async def test_show_in_a_channel_the_caller_cannot_read_is_refused(w):
    hidden = w.fake.add_channel(w.guild, "hidden")
    w.fake.set_overwrite(hidden, w.guild.everyone, deny=1 << 10)  # VIEW_CHANNEL
    w.fake.set_overwrite(hidden, w.alice, allow=1 << 10)
    async with w.bot():
        rec = await w.fake.invoke_slash(
            "imagine", user=w.alice, channel=hidden, prompt="a red square", steps=2
        )
        final = await final_of(w.fake, rec)
        job = re.search(r"iris-([0-9a-f]+)\.png", final.attachments[0].filename)[1]
        refused = await reply_to(w, "show", w.bob, job=job)
        assert refused.ephemeral and "isn't yours" in refused.content


async def test_show_of_an_unknown_or_unfinished_job_says_so_privately(w):
    async with w.bot() as bot:
        for job in ("0123456789ab", "not a job id!"):
            reply = await reply_to(w, "show", w.alice, job=job)
            assert reply.ephemeral and "There is no job" in reply.content and "Traceback" not in reply.content
        bot.manager.step_hook = StepGate()  # holds the generation before its first step
        await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a red circle")
        entries = await w.fake.wait_for(lambda: bot.manager.journal.of_owner(str(w.alice.id), 1))
        reply = await reply_to(w, "show", w.alice, job=entries[0].id)
        assert reply.ephemeral and "has no picture to show" in reply.content
        bot.manager.step_hook.allow()
        shown = [m for m in w.fake.channel_messages(w.channel) if not m.ephemeral and is_final(m)]
        assert shown == []


async def test_show_of_a_four_up_job_keeps_its_grid_buttons(w):
    async with w.bot():
        rec = await w.fake.invoke_slash(
            "imagine", user=w.alice, channel=w.channel, prompt="a red circle", steps=1, count=4
        )
        final = await final_of(w.fake, rec, timeout=60)
        job = final.find_component("U1")["custom_id"].rsplit(":", 1)[1]
        again = await reply_to(w, "show", w.alice, job=job)
        labels = [c.get("label") for c in again.walk_components() if c.get("type") == 2]
        assert labels == ["U1", "U2", "U3", "U4", "V1", "V2", "V3", "V4"]
        assert again.attachments[0].data == final.attachments[0].data
