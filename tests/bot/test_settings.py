"""/settings through the fake Discord: people's defaults and server settings, private, applied at once,
kept across restarts, and refused to members without Manage Server."""

from __future__ import annotations

import dataclasses

import pytest

from bot.app import IrisBot
from models.toy import world
from tests.bot.conftest import StepGate, png
from tests.conftest import engine_for

MANAGE_GUILD = 1 << 5  # Discord's "Manage Server" permission bit


@pytest.fixture
def boss(w):
    return w.fake.add_member(
        w.guild, "boss", roles=[w.fake.add_role(w.guild, "admins", permissions=MANAGE_GUILD)]
    )


async def answer(w, name, user, **options):
    rec = await w.fake.invoke_slash(name, user=user, channel=w.channel, **options)
    reply = await rec.wait_original()
    return reply


def fields(message) -> dict[str, str]:
    return {f["name"]: f["value"] for f in message.embeds[0]["fields"]}


async def queued_steps(w, bot, member) -> int:
    entries = await w.fake.wait_for(lambda: bot.manager.journal.of_owner(str(member.id), 1))
    return entries[0].request.steps


async def test_a_users_default_steps_apply_to_their_next_imagine_only(w):
    async with w.bot() as bot:
        bot.manager.step_hook = StepGate()  # the jobs stay queued/running: only their requests matter
        reply = await answer(w, "settings me", w.alice, steps=3, aspect="landscape", profile="none")
        assert reply.ephemeral and w.fake.viewers(reply) == {w.alice.id}
        assert fields(reply)["Steps"] == "3" and fields(reply)["Recipe"] == "none"
        await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a red circle")
        assert await queued_steps(w, bot, w.alice) == 3
        entry = bot.manager.journal.of_owner(str(w.alice.id), 1)[0]
        assert (entry.request.width, entry.request.height) == (64, 48)  # landscape
        assert entry.request.profile == "none"
        await w.fake.invoke_slash("imagine", user=w.bob, channel=w.channel, prompt="a red circle")
        assert await queued_steps(w, bot, w.bob) == 8  # the config's, for someone who set nothing
        assert bot.manager.journal.of_owner(str(w.bob.id), 1)[0].request.profile == "iris"
        await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a blue square", steps=5)
        await w.fake.wait_for(lambda: bot.manager.journal.of_owner(str(w.alice.id), 1)[0].request.steps == 5)


async def test_a_users_default_steps_beyond_the_bots_limit_are_refused(w):
    async with w.bot():
        reply = await answer(w, "settings me", w.alice, steps=401)
        assert reply.ephemeral and "between 1 and 400" in reply.content


async def test_a_banned_pattern_refuses_the_next_prompt_at_once(w, boss):
    async with w.bot() as bot:
        reply = await answer(w, "settings server", boss, ban=r"\bfox(es)?\b")
        assert reply.ephemeral and w.fake.viewers(reply) == {boss.id}
        assert r"`\bfox(es)?\b`" in fields(reply)["Banned prompt patterns (set here)"]
        refused = await answer(w, "imagine", w.alice, prompt="two red FOXES")
        assert refused.ephemeral and "can't draw that" in refused.content
        assert bot.manager.journal.of_owner(str(w.alice.id), 5) == []
        bad = await answer(w, "settings server", boss, ban="(unclosed")
        assert bad.ephemeral and "not a valid regular expression" in bad.content
        long = await answer(w, "settings server", boss, ban="a" * 201)
        assert long.ephemeral and "200 characters" in long.content
        await answer(w, "settings server", boss, unban=r"\bfox(es)?\b")
        assert bot.guild_config(w.guild.id).banned_prompts == []


async def test_a_member_without_manage_server_is_refused(w, boss):
    async with w.bot() as bot:
        for options in ({"ban": "cat"}, {"queue_cap": 0}, {}):
            reply = await answer(w, "settings server", w.mod, **options)  # Manage Messages is not enough
            assert reply.ephemeral and "Manage Server" in reply.content and not reply.embeds
        assert bot.settings.guild(str(w.guild.id)) == {}
        assert bot.guild_config(w.guild.id).banned_prompts == []


async def test_settings_survive_a_restart(w, boss):
    async with w.bot():
        await answer(w, "settings me", w.alice, steps=2)
        await answer(
            w, "settings server", boss, ban="dragon", queue_cap=1, imagine_channels=f"<#{w.channel.id}>"
        )
    async with w.bot() as bot:
        gcfg = bot.guild_config(w.guild.id)
        assert gcfg.banned_prompts == ["dragon"] and gcfg.max_queued_per_user == 1
        assert gcfg.imagine_channels == [str(w.channel.id)]
        refused = await answer(w, "imagine", w.alice, prompt="a green dragon")
        assert refused.ephemeral and "can't draw that" in refused.content
        bot.manager.step_hook = StepGate()
        await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a green circle")
        assert await queued_steps(w, bot, w.alice) == 2


async def test_server_settings_add_to_the_configs_and_reset_to_it(w, boss):
    gid = str(w.guild.id)
    async with w.bot(banned_prompts=["everywhere"], guilds={gid: {"banned_prompts": ["here"]}}) as bot:
        assert bot.guild_config(w.guild.id).banned_prompts == ["everywhere", "here"]
        await answer(w, "settings server", boss, unban="here")
        assert bot.guild_config(w.guild.id).banned_prompts == ["everywhere"]
        refused = await answer(w, "settings server", boss, unban="everywhere")
        assert refused.ephemeral and "every server" in refused.content
        await answer(w, "settings server", boss, reset="banned_prompts")
        assert bot.guild_config(w.guild.id).banned_prompts == ["everywhere", "here"]


async def test_classify_uses_the_servers_labels_and_a_users_private_choice(w, boss):
    async with w.bot():
        await answer(w, "settings server", boss, default_labels="blue square, red circle")
        image = ("s.png", png(world.make_image("blue", "square", seed=3)), "image/png")
        public = await answer(w, "classify", w.bob, image=image)
        lines = public.embeds[0]["description"].splitlines()
        assert not public.ephemeral and len(lines) == 2 and lines[0].endswith("blue square")
        await answer(w, "settings me", w.alice, private_classify=True)
        mine = await answer(w, "classify", w.alice, image=image)
        assert mine.ephemeral and w.fake.viewers(mine) == {w.alice.id}
        assert mine.embeds[0]["description"].splitlines()[0].endswith("blue square")


async def test_find_exclusions_from_settings_reach_find(w, boss):
    other = w.fake.add_channel(w.guild, "secret")
    async with w.bot() as bot:
        await answer(w, "settings server", boss, find_exclude=other)
        assert bot.guild_config(w.guild.id).find_excluded == [str(other.id)]
        index = bot.get_cog("Find").discord_index
        channel = bot.get_channel(other.id)
        assert await index.excluded(w.guild.id, channel)
        await answer(w, "settings server", boss, find_include=other)
        assert bot.guild_config(w.guild.id).find_excluded == [] and not await index.excluded(
            w.guild.id, channel
        )


async def test_imagine_channels_set_here_apply_at_once_and_must_exist(w, boss):
    other = w.fake.add_channel(w.guild, "chat")
    async with w.bot():
        unknown = await answer(w, "settings server", boss, imagine_channels="123456789012345678")
        assert unknown.ephemeral and "no channel 123456789012345678" in unknown.content
        await answer(w, "settings server", boss, imagine_channels=f"<#{w.channel.id}>")
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=other, prompt="a red circle")
        refused = await rec.wait_original()
        assert refused.ephemeral and f"<#{w.channel.id}>" in refused.content
        await answer(w, "settings server", boss, imagine_channels="all")
        rec = await w.fake.invoke_slash(
            "imagine", user=w.alice, channel=other, prompt="a red circle", steps=1
        )
        assert not (await rec.wait_original()).ephemeral


async def test_a_default_above_a_lowered_limit_is_held_to_the_new_limit(w):
    async with w.bot():
        await answer(w, "settings me", w.alice, steps=300)
    cfg = w.config()
    lowered = dataclasses.replace(cfg, imagine=dataclasses.replace(cfg.imagine, max_steps=20))
    bot = IrisBot(lowered, engine_for(lowered, w.shared), guild_ready_timeout=0.1)
    async with w.fake.run_bot(bot):
        bot.manager.step_hook = StepGate()
        await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a red circle")
        assert await queued_steps(w, bot, w.alice) == 20  # not a refusal for a value typed long ago


async def test_the_default_size_is_the_one_where_the_models_run(w):
    """`auto` sizes depend on the device the models run on (a child process or a worker, not the bot):
    /imagine's aspects start from the size the manager says is in force, not the config's number."""
    async with w.bot() as bot:
        bot.manager.step_hook = StepGate()
        engine = bot.manager.engine  # in-process here: its resolved defaults are the device's
        engine.imagine = dataclasses.replace(engine.imagine, width=96, height=96)
        await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a red circle",
                                  aspect="portrait")  # fmt: skip
        entries = await w.fake.wait_for(lambda: bot.manager.journal.of_owner(str(w.alice.id), 1))
        assert (entries[0].request.width, entries[0].request.height) == (72, 96)
