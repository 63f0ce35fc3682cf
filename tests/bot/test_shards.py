"""Gateway sharding: `discord.shard_count` / `discord.shard_ids` against the fake Discord, whose gateway
routes each server to shard `(guild_id >> 22) % shard_count` as Discord does."""

from __future__ import annotations

import dataclasses

import discord
import pytest
import yaml
from discord.ext import commands

from bot import run
from bot.app import IrisBot
from iris import heartbeat
from iris.cli import main
from tests.bot.conftest import World
from tests.conftest import engine_for
from tests.fake_discord.models import Guild


@dataclasses.dataclass
class Servers:
    """Servers spread over the shards, each with a channel and a member, and bots that serve them."""

    world: World  # its guild, channel and alice are servers[0]'s
    guilds: list[Guild]

    def config(self, name: str, **discord_overrides):
        """A bot process's config: its own data directory, every server a dev server."""
        tmp = self.world.tmp / name
        tmp.mkdir(exist_ok=True)
        world = dataclasses.replace(self.world, tmp=tmp)
        return world.config(dev_guilds=[str(g.id) for g in self.guilds], **discord_overrides)

    def bot(self, name: str, **discord_overrides) -> IrisBot:
        cfg = self.config(name, **discord_overrides)
        bot = IrisBot(cfg, engine_for(cfg, self.world.shared), guild_ready_timeout=0.1)
        received: list[int] = []  # the interactions Discord sent this bot

        async def on_interaction(interaction: discord.Interaction) -> None:
            received.append(interaction.id)

        bot.add_listener(on_interaction)
        bot.received = received  # type: ignore[attr-defined]
        return bot

    async def help_everywhere(self) -> dict[int, int]:
        """/help in every server; each server's interaction id, once every one is answered."""
        fake, asked = self.world.fake, {}
        for guild in self.guilds:
            member = next(m for m in guild.members.values() if not m.user.bot)
            channel = guild.channels[0]
            record = await fake.invoke_slash("help", user=member, channel=channel)
            asked[guild.id] = record.id
        for record_id in asked.values():
            await fake.state.interactions[record_id].wait_original()
        return asked


def make_servers(w: World, shard_count: int, per_shard: int = 2) -> Servers:
    guilds = [w.guild]  # the fixture's server is on whichever shard its id says
    for i in range(shard_count * per_shard):
        guild = w.fake.add_guild(f"server {i}", shard=(i % shard_count, shard_count))
        w.fake.add_channel(guild, "general")
        w.fake.add_member(guild, f"member {i}")
        guilds.append(guild)
    return Servers(w, guilds)


def shard_of(guild_id: int, shard_count: int) -> int:
    return (guild_id >> 22) % shard_count


async def test_two_processes_each_answer_only_the_servers_of_their_shard(w):
    w.fake.gateway.max_concurrency = 2  # shards 0 and 1 may IDENTIFY at once
    w.fake.gateway.pace_identifies = True
    servers = make_servers(w, 2)
    one = servers.bot("one", shard_count=2, shard_ids=[0])
    two = servers.bot("two", shard_count=2, shard_ids=[1])
    async with w.fake.run_bot(one), w.fake.run_bot(two):
        assert isinstance(one, commands.AutoShardedBot) and one.shard_count == 2
        for bot, shard in ((one, 0), (two, 1)):
            mine = {g.id for g in servers.guilds if shard_of(g.id, 2) == shard}
            assert {g.id for g in bot.guilds} == mine  # only its shard's servers reached it
            assert all(bot.runs_guild(g) == (g in mine) for g in (g.id for g in servers.guilds))
        asked = await servers.help_everywhere()
    for guild_id, interaction_id in asked.items():
        owner, other = (one, two) if shard_of(guild_id, 2) == 0 else (two, one)
        assert interaction_id in owner.received and interaction_id not in other.received
        # answered exactly once: a second bot answering too would have made a second callback
        assert w.fake.count_requests("POST", rf"^/interactions/{interaction_id}/") == 1
        assert w.fake.state.interactions[interaction_id].original is not None
    assert sorted(one.received + two.received) == sorted(asked.values())  # both together: everything
    assert sorted(w.fake.gateway.identified) == [(0, 2), (1, 2)] and w.fake.gateway.too_early == 0


async def test_one_process_runs_three_shards_and_answers_every_server(w):
    w.fake.gateway.max_concurrency = 3  # one bucket per shard: no shard waits for another
    w.fake.gateway.pace_identifies = True
    servers = make_servers(w, 3)
    bot = servers.bot("all", shard_count=3)
    async with w.fake.run_bot(bot):
        assert sorted(bot.shards) == [0, 1, 2] and bot.gateway_connected()
        assert {g.id for g in bot.guilds} == {g.id for g in servers.guilds}
        asked = await servers.help_everywhere()
    assert sorted(bot.received) == sorted(asked.values())
    assert sorted(w.fake.gateway.identified) == [(0, 3), (1, 3), (2, 3)]
    assert w.fake.gateway.too_early == 0
    assert {shard_of(g, 3) for g in asked} == {0, 1, 2}  # the servers did spread over the shards


async def test_fewer_shards_than_discord_advises_is_logged(w, caplog):
    w.fake.gateway.shards, w.fake.gateway.max_concurrency = 4, 2
    servers = make_servers(w, 2, per_shard=1)
    with caplog.at_level("INFO", logger="bot.app"):
        async with w.fake.run_bot(servers.bot("few", shard_count=2)):
            pass
    said = [r.getMessage() for r in caplog.records if r.name == "bot.app"]
    assert "gateway: this process runs shards [0, 1] of 2" in said
    assert "gateway: Discord advises 4 shards for this bot; discord.shard_count is 2" in said


async def test_identifies_are_paced_by_max_concurrency(w):
    """Shards 0 and 2 share a rate-limit bucket when max_concurrency is 2: the fake answers an IDENTIFY
    that comes within 5 s of its bucket's last one with op 9, as Discord does."""
    w.fake.gateway.max_concurrency = 2
    w.fake.gateway.pace_identifies = True
    servers = make_servers(w, 3, per_shard=1)
    bot = servers.bot("paced", shard_count=3)
    async with w.fake.run_bot(bot, timeout=20):
        assert sorted(w.fake.gateway.identified) == [(0, 3), (1, 3), (2, 3)]
        assert w.fake.gateway.too_early == 0


async def test_two_processes_in_one_identify_bucket_both_connect(w):
    """With max_concurrency 1 the second process's IDENTIFY comes too early: Discord answers op 9 and
    the shard identifies again once its bucket's 5 s are over."""
    w.fake.gateway.pace_identifies = True
    servers = make_servers(w, 2, per_shard=1)
    one = servers.bot("one", shard_count=2, shard_ids=[0])
    two = servers.bot("two", shard_count=2, shard_ids=[1])
    async with w.fake.run_bot(one), w.fake.run_bot(two, timeout=20):
        assert one.gateway_connected() and two.gateway_connected()
        assert w.fake.gateway.too_early == 1 and sorted(w.fake.gateway.identified) == [(0, 2), (1, 2)]
        asked = await servers.help_everywhere()
    assert sorted(one.received + two.received) == sorted(asked.values())


async def test_the_default_is_one_connection_without_shards(w):
    async with w.bot() as bot:
        assert not isinstance(bot, commands.AutoShardedBot) and bot.shard_count is None
        assert w.fake.gateway.identified == [None] and bot.runs_guild(w.guild.id)
        reply = await (await w.fake.invoke_slash("help", user=w.alice, channel=w.channel)).wait_original()
        assert reply.ephemeral


async def test_the_heartbeat_says_disconnected_while_one_of_the_shards_is_down(w):
    w.fake.gateway.max_concurrency = 2
    servers = make_servers(w, 2, per_shard=1)
    bot = servers.bot("beat", shard_count=2)
    async with w.fake.run_bot(bot):
        path = bot.config.heartbeat_path
        await run.beat(bot)
        assert heartbeat.read(path).gateway
        shard = bot.get_shard(1)
        assert shard is not None
        await shard.disconnect()  # shard 0 is still up, and the bot still "ready"
        assert bot.is_ready()
        await run.beat(bot)
        assert not heartbeat.read(path).gateway


@pytest.mark.parametrize(
    ("discord_section", "message"),
    [
        ({"shard_count": 2, "shard_ids": [2]}, "discord.shard_ids: shard 2 does not exist"),
        ({"shard_ids": [0]}, "discord.shard_ids needs discord.shard_count"),
        ({"shard_count": 2, "shard_ids": [1, 1]}, "shard 1 is listed twice"),
    ],
)
def test_a_bad_shard_config_is_one_clear_line_at_start(tmp_path, capsys, discord_section, message):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"discord": discord_section}))
    code = main(["run", "--config", str(path)])
    _, err = capsys.readouterr()
    assert code != 0 and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


async def test_discord_requiring_sharding_is_one_clear_line(w):
    w.fake.gateway.shards, w.fake.gateway.sharding_required = 2, True
    w.fake.gateway.max_concurrency = 2
    with w.fake.patch_discord(), pytest.raises(run.StartupError) as refused:
        await run.run_bot(w.config(), w.fake.token)  # the toy models: loaded in a moment
    assert "close code 4011" in refused.value.message and "discord.shard_count" in refused.value.message
    async with w.bot(shard_count=2) as bot:  # with the shards Discord asks for, the same bot connects
        assert bot.gateway_connected() and sorted(bot.shards) == [0, 1]
