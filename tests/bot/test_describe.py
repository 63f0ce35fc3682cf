"""/describe and the Describe message command through the fake Discord, with the real toy CLIP."""

from __future__ import annotations

from models.toy import world
from tests.bot.conftest import png


async def test_describe_answers_privately_with_phrases_and_a_prompt(w):
    async with w.bot():
        assert {"describe", "Describe"} <= {c["name"] for c in w.fake.commands[w.guild.id]}
        image = world.make_image("blue", "square", seed=21)
        rec = await w.fake.invoke_slash(
            "describe", user=w.alice, channel=w.channel, image=("s.png", png(image), "image/png"), top_k=3
        )
        msg = await w.fake.wait_for(lambda: rec.followups[-1] if rec.followups else None, timeout=30)
        assert msg.ephemeral and rec.ephemeral
        lines = msg.embeds[0]["description"].splitlines()
        assert len(lines) == 3 and "a blue square" in lines[0] and "%" in lines[0]
        prompt = msg.embeds[0]["fields"][0]["value"]
        assert prompt.startswith("`a blue square")
        assert [m for m in w.fake.channel_messages(w.channel) if not m.ephemeral] == []


async def test_describe_message_menu_and_a_message_without_an_image(w):
    async with w.bot():
        posted = await w.fake.post_message(
            w.channel,
            w.bob,
            attachments=[("x.png", png(world.make_image("red", "triangle", 5)), "image/png")],
        )
        rec = await w.fake.invoke_context_menu("Describe", posted, user=w.alice)
        msg = await w.fake.wait_for(lambda: rec.followups[-1] if rec.followups else None, timeout=30)
        assert msg.ephemeral and "a red triangle" in msg.embeds[0]["description"].splitlines()[0]
        text = await w.fake.post_message(w.channel, w.bob, "no picture here")
        none = await w.fake.invoke_context_menu("Describe", text, user=w.alice)
        await none.wait_response()
        assert none.ephemeral and "no image" in none.original.content
