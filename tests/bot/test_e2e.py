"""The bot end to end: the real discord.py client against the fake Discord, the real toy models.

Nothing of discord.py or the models is mocked. Long generations are held by a step gate (the manager's
step hook), so the tests decide when each step may run instead of sleeping.
"""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from models.toy import world
from tests.bot.conftest import StepGate, bomb, final_of, has_button, is_final, png, posted_final, title


# -- /classify ---------------------------------------------------------------------------------------------
async def test_classify_gives_the_right_top_label(w):
    async with w.bot() as bot:
        assert {c["name"] for c in w.fake.commands[w.guild.id]} >= {
            "classify",
            "imagine",
            "status",
            "Classify image",
        }
        image = world.make_image("blue", "square", seed=3)
        rec = await w.fake.invoke_slash(
            "classify",
            user=w.alice,
            channel=w.channel,
            image=("shape.png", png(image), "image/png"),
            labels="red circle, blue square, green triangle",
        )
        reply = await rec.wait_original()
        first = reply.embeds[0]["description"].splitlines()[0]
        assert first.endswith("blue square") and not reply.ephemeral
        assert bot.manager.status().queue_length == 0


@pytest.mark.parametrize(
    "name,data,says",
    [
        ("broken.jpg", b"\xff\xd8\xff\xe0" + b"\0" * 200, "damaged"),
        ("page.png", b"<!doctype html><html><body>hi</body></html>", "not a PNG"),
        ("bomb.png", bomb(), "20000"),
        ("huge.png", b"\x89PNG\r\n\x1a\n" + bytes(500_000), "too large"),
    ],
)
async def test_classify_bad_files_get_a_private_message_and_the_bot_goes_on(w, name, data, says):
    async with w.bot():
        rec = await w.fake.invoke_slash(
            "classify", user=w.alice, channel=w.channel, image=(name, data, "image/png")
        )
        msg = await w.fake.wait_for(lambda: rec.followups[-1] if rec.followups else None)
        assert msg.ephemeral and says in msg.content and "Traceback" not in msg.content
        assert [m for m in w.fake.channel_messages(w.channel) if not m.ephemeral] == []
        ok = await w.fake.invoke_slash(
            "classify",
            user=w.alice,
            channel=w.channel,
            image=("ok.png", png(world.make_image("red", "circle", 1)), "image/png"),
        )
        assert "red circle" in (await ok.wait_original()).embeds[0]["description"].splitlines()[0]


async def test_classify_labels_are_checked_before_any_work(w):
    async with w.bot():
        rec = await w.fake.invoke_slash(
            "classify",
            user=w.alice,
            channel=w.channel,
            image=("a.png", png(world.make_image("red", "circle", 1)), "image/png"),
            labels=", ".join(f"label {i}" for i in range(51)),
        )
        await rec.wait_response()
        reply = rec.original or rec.followups[-1]
        assert reply.ephemeral and "limit is 50" in reply.content


async def test_classify_image_context_menu(w):
    async with w.bot():
        posted = await w.fake.post_message(
            w.channel,
            w.bob,
            attachments=[("x.png", png(world.make_image("yellow", "triangle", 8)), "image/png")],
        )
        rec = await w.fake.invoke_context_menu("Classify image", posted, user=w.alice)
        reply = await rec.wait_original()
        assert reply.embeds[0]["description"].splitlines()[0].endswith("yellow triangle")


# -- /imagine ----------------------------------------------------------------------------------------------
async def test_imagine_queue_progress_final_and_edit_budget(w):
    async with w.bot() as bot:
        gate = StepGate()
        bot.manager.step_hook = gate
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a red circle")
        await w.fake.wait_for(lambda: rec.original and title(rec.original).startswith(("Queued", "Starting")))
        gate.allow(2)
        await w.fake.wait_for(lambda: "step 2/8" in title(rec.original))
        assert rec.original.attachments[0].filename == "preview.png"
        gate.allow(2)
        await w.fake.wait_for(lambda: "step 4/8" in title(rec.original))
        assert has_button(rec.original, "Cancel")
        gate.allow()
        final = await final_of(w.fake, rec)
        fields = {f["name"]: f["value"] for f in final.embeds[0]["fields"]}
        assert {"Seed", "Steps", "Clip score"} <= set(fields) and fields["Steps"] == "8"
        labels = {c.get("label") for c in final.walk_components()}
        assert {"Re-roll", "Variations", "Delete"} <= labels and "Cancel" not in labels
        image = Image.open(io.BytesIO(final.attachments[0].data))
        assert image.size == (64, 64) and world.dominant_colour(image) == "red"
    edits = [
        r.time for r in w.fake.requests if r.method == "PATCH" and "@original" in r.path and r.status == 200
    ]
    assert len(edits) >= 4
    window, budget = 1.0, 4
    for i, t in enumerate(edits):  # never more edits in any window than the budget
        assert sum(1 for u in edits[i:] if u - t < window * 0.95) <= budget


async def test_cancel_is_for_the_requester_only(w):
    async with w.bot() as bot:
        gate = StepGate(1)
        bot.manager.step_hook = gate
        rec = await w.fake.invoke_slash(
            "imagine", user=w.alice, channel=w.channel, prompt="a blue square", steps=400
        )
        message = await w.fake.wait_for(lambda: rec.original if has_button(rec.original, "Cancel") else None)
        job_id = message.find_component("Cancel")["custom_id"].rsplit(":", 1)[1]
        refused = await w.fake.click(message, "Cancel", user=w.bob)
        await refused.wait_response()
        assert refused.ephemeral and "Only the person" in refused.original.content
        await w.fake.wait_for(lambda: gate.done >= 1)
        assert bot.manager.status().running is not None
        mine = await w.fake.click(message, "Cancel", user=w.alice)
        await mine.wait_response()
        gate.allow()
        await w.fake.wait_for(lambda: title(rec.original) == "Cancelled")
        assert bot.manager.journal.get(job_id).state == "cancelled"


async def test_reroll_makes_a_new_job_and_buttons_survive_a_restart(w):
    async with w.bot():
        rec = await w.fake.invoke_slash(
            "imagine", user=w.alice, channel=w.channel, prompt="a green circle", seed=5
        )
        final = await final_of(w.fake, rec)
        seed = final.embeds[0]["fields"][0]["value"]
        again = await w.fake.click(final, "Re-roll", user=w.bob)
        second = await final_of(w.fake, again)
        assert second.id != final.id and second.embeds[0]["fields"][0]["value"] != seed
    async with w.bot():  # a new process: nothing in memory, same journal, same messages
        third = await w.fake.click(final, "Re-roll", user=w.alice)
        assert is_final(await final_of(w.fake, third))
        vary = await w.fake.click(final, "Variations", user=w.alice)
        assert is_final(await final_of(w.fake, vary))
        refused = await w.fake.click(final, "Delete", user=w.bob)
        await refused.wait_response()
        assert "Only the person" in refused.original.content and not final.deleted
        by_mod = await w.fake.click(final, "Delete", user=w.mod)
        await w.fake.wait_for(lambda: final.deleted)
        assert by_mod.acknowledged


async def test_classify_answers_before_the_first_generation_ends(w):
    async with w.bot() as bot:
        gate = StepGate(1)
        bot.manager.step_hook = gate
        first = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a red circle")
        second = await w.fake.invoke_slash("imagine", user=w.bob, channel=w.channel, prompt="a blue circle")
        await w.fake.wait_for(
            lambda: (
                title(second.original) == "Queued"
                and any(f["value"] == "#1" for f in second.original.embeds[0]["fields"])
            )
        )  # position 2 while the first job was still starting, then 1
        rec = await w.fake.invoke_slash(
            "classify",
            user=w.mod,
            channel=w.channel,
            image=("g.png", png(world.make_image("green", "square", 2)), "image/png"),
        )
        reply = await rec.wait_original()
        assert reply.embeds[0]["description"].splitlines()[0].endswith("green square")
        assert not is_final(first.original) and gate.done <= 2
        gate.allow()
        await final_of(w.fake, first)
        await final_of(w.fake, second)


async def test_a_429_storm_on_edits_is_ridden_out(w):
    async with w.bot():
        w.fake.inject_429("PATCH", r"/messages/@original", count=6, retry_after=0.05)
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a yellow circle")
        final = await final_of(w.fake, rec)
        assert final.embeds[0]["fields"]
    assert w.fake.count_requests("PATCH", r"@original", status=429) == 6


async def test_gateway_drop_mid_generation(w):
    async with w.bot() as bot:
        gate = StepGate(2)
        bot.manager.step_hook = gate
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a red square")
        await w.fake.wait_for(lambda: gate.done >= 2)
        await w.fake.drop_connection()
        gate.allow()
        assert is_final(await final_of(w.fake, rec))
        await w.fake.wait_for(lambda: w.fake.gateway.resumes >= 1)
        ok = await w.fake.invoke_slash("status", user=w.alice, channel=w.channel)  # still listening
        assert (await ok.wait_original()).ephemeral


async def test_result_reaches_the_channel_after_the_token_expires(w):
    async with w.bot() as bot:
        gate = StepGate(2)
        bot.manager.step_hook = gate
        await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a blue triangle")
        await w.fake.wait_for(lambda: gate.done >= 2)
        w.fake.clock.advance(16 * 60)
        gate.allow()
        final = await w.fake.wait_for(lambda: posted_final(w), timeout=30)
        assert final.embeds and re.search(r"blue triangle", final.embeds[0].get("title", ""))


async def test_banned_prompt_and_channel_rules(w):
    other = w.fake.add_channel(w.guild, "chat")
    async with w.bot(
        banned_prompts=[r"\bgore\b"], guilds={str(w.guild.id): {"imagine_channels": [str(w.channel.id)]}}
    ):
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="some GORE please")
        await rec.wait_response()
        assert rec.ephemeral and "can't draw that" in rec.original.content
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=other, prompt="a red circle")
        await rec.wait_response()
        assert rec.ephemeral and f"<#{w.channel.id}>" in rec.original.content
        long = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="x" * 10_000)
        await long.wait_response()
        assert long.ephemeral and "10,000 characters" in long.original.content


async def test_status_lists_my_jobs(w):
    async with w.bot() as bot:
        gate = StepGate(1)
        bot.manager.step_hook = gate
        await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a red circle")
        await w.fake.wait_for(lambda: gate.done >= 1)
        rec = await w.fake.invoke_slash("status", user=w.alice, channel=w.channel)
        reply = await rec.wait_original()
        fields = {f["name"]: f["value"] for f in reply.embeds[0]["fields"]}
        assert reply.ephemeral and "running" in fields["Your jobs"] and fields["Device"] == "cpu"
        gate.allow()


async def test_a_restart_pauses_then_resumes_the_generation(w):
    async with w.bot() as bot:
        gate = StepGate(2)
        bot.manager.step_hook = gate
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a green square")
        await w.fake.wait_for(lambda: gate.done >= 2)
        gate.allow()  # let the closing step finish
    assert title(rec.original).startswith("Paused")  # the last word was sent before the bot went away
    async with w.bot():
        resumed = await final_of(w.fake, rec)  # the old message shows the picture: no "Paused" left
        assert "green square" in title(resumed) and not has_button(resumed, "Cancel")


async def test_threads_forum_posts_and_a_thread_per_job(w):
    thread = w.fake.add_channel(w.guild, "shapes-thread", type="thread", parent=w.channel)
    forum = w.fake.add_channel(w.guild, "gallery", type="forum")
    async with w.bot(thread_per_job=True):
        post, _ = await w.fake.add_forum_post(forum, "my shapes", w.bob)
        for where in (thread, post):  # the answer lands where the command was used
            rec = await w.fake.invoke_slash(
                "classify",
                user=w.alice,
                channel=where,
                image=("s.png", png(world.make_image("red", "square", 4)), "image/png"),
            )
            reply = await rec.wait_original()
            assert reply.channel is where and "red square" in reply.embeds[0]["description"].splitlines()[0]
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a yellow square")
        await w.fake.wait_for(lambda: title(rec.original).startswith("Working on it"))

        def in_a_thread():
            for ch in list(w.fake.state.channels.values()):
                if getattr(ch, "parent", None) is w.channel and ch is not thread:
                    final = next((m for m in w.fake.channel_messages(ch) if is_final(m)), None)
                    if final:
                        return final
            return None

        final = await w.fake.wait_for(in_a_thread, timeout=30)
        assert "yellow square" in title(final)


async def test_per_server_caps_and_default_labels(w):
    overrides = {str(w.guild.id): {"max_queued_per_user": 0, "default_labels": ["cat", "blue square"]}}
    async with w.bot(guilds=overrides) as bot:
        gate = StepGate(1)
        bot.manager.step_hook = gate
        await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a red circle")
        await w.fake.wait_for(lambda: gate.done >= 1)
        second = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a red circle")
        msg = await w.fake.wait_for(lambda: second.followups[-1] if second.followups else None)
        assert msg.ephemeral and "limit is 1" in msg.content
        gate.allow()
        rec = await w.fake.invoke_slash(
            "classify",
            user=w.bob,
            channel=w.channel,
            image=("b.png", png(world.make_image("blue", "square", 6)), "image/png"),
        )
        lines = (await rec.wait_original()).embeds[0]["description"].splitlines()
        assert len(lines) == 2 and lines[0].endswith("blue square") and lines[1].endswith("cat")
