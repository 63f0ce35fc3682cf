"""After a restart: every unfinished job resumes in its old message, with its seed, whatever the others do."""

from __future__ import annotations

import asyncio

from tests.bot.conftest import StepGate, final_of, has_button, is_final, title
from tests.bot.test_delivery import bot_role, job_id, pictures
from tests.fake_discord.models import ATTACH_FILES, SEND_MESSAGES


async def close_pausing(w, bot, gate: StepGate) -> None:
    """Close the bot while a step is held: the running job is stopped within that step, as on a restart."""
    closing = asyncio.create_task(bot.close())
    await w.fake.wait_for(lambda: bot.manager._current is None or bot.manager._current.cancel.is_set())
    gate.allow()
    await closing


async def test_resume_one_refusing_channel_never_blocks_the_others(w):
    other = w.fake.add_channel(w.guild, "other")
    servers = {str(w.guild.id): {"max_queued_per_user": 4}}  # above the global cap of 2
    async with w.bot(guilds=servers) as bot:
        gate = StepGate(2)
        bot.manager.step_hook = gate
        first = await w.fake.invoke_slash("imagine", user=w.alice, channel=other, prompt="a red circle")
        await w.fake.wait_for(lambda: gate.done >= 2)
        queued = []
        for prompt in ("a blue square", "a green circle", "a yellow square", "a red triangle"):
            queued.append(
                await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt=prompt)
            )
        await w.fake.wait_for(lambda: all(title(r.original) == "Queued" for r in queued), timeout=30)
        first_id = job_id(first.original)
        seed = bot.manager.journal.get(first_id).seed
        assert seed is not None
        await close_pausing(w, bot, gate)
    assert all(title(r.original).startswith("Paused") for r in [first, *queued])
    w.fake.set_overwrite(other, bot_role(w), 0, SEND_MESSAGES | ATTACH_FILES)  # "other" refuses messages now
    async with w.bot(guilds=servers) as bot:
        for rec in queued:  # each in its old message: no Cancel button, no "Paused" left behind
            final = await final_of(w.fake, rec, timeout=60)
            assert not has_button(final, "Cancel") and has_button(final, "Re-roll")
        dm = await w.fake.wait_for(lambda: next(iter(w.fake.dm_messages(w.alice)), None), timeout=30)
        assert is_final(dm) and "red circle" in title(dm)
        fields = {f["name"]: f["value"] for f in dm.embeds[0]["fields"]}
        assert fields["Seed"] == str(seed)  # the resumed job kept the seed it started with
        assert not title(first.original).startswith(
            "Paused"
        )  # told it resumed, though its picture went by DM
    for rec in [first, *queued]:
        assert len(pictures(w.fake, job_id(rec.original))) == 1
