"""/help through the fake Discord: private, complete, and true to this server's limits."""

from __future__ import annotations


def help_text(message) -> str:
    embed = message.embeds[0]
    return "\n".join([embed.get("title", ""), *(f"{f['name']}\n{f['value']}" for f in embed["fields"])])


async def test_help_is_private_lists_every_command_and_this_servers_limits(w):
    gid = str(w.guild.id)
    async with w.bot(guilds={gid: {"max_queued_per_user": 7, "imagine_channels": [str(w.channel.id)]}}):
        rec = await w.fake.invoke_slash("help", user=w.alice, channel=w.channel)
        reply = await rec.wait_original()
        assert reply.ephemeral and w.fake.viewers(reply) == {w.alice.id}
        text = help_text(reply)
        for command in w.fake.commands[w.guild.id]:  # everything synced, message menus included
            assert command["name"] in text, command["name"]
        assert "each person 7 waiting" in text  # the server's override, not the config's 2
        assert f"<#{w.channel.id}>" in text and "at most 400" in text  # imagine channels, max steps
        assert '"a watercolor fox:1 | blurry:-0.5"' in text and "`-word` avoids" in text


async def test_help_shows_the_cap_a_server_set_with_settings(w):
    admin = w.fake.add_role(w.guild, "admins", permissions=1 << 5)  # MANAGE_GUILD
    boss = w.fake.add_member(w.guild, "boss", roles=[admin])
    async with w.bot():
        before = help_text(
            await (await w.fake.invoke_slash("help", user=w.alice, channel=w.channel)).wait_original()
        )
        assert "each person 2 waiting" in before and "every channel" in before
        await (
            await w.fake.invoke_slash("settings server", user=boss, channel=w.channel, queue_cap=0)
        ).wait_original()
        after = help_text(
            await (await w.fake.invoke_slash("help", user=w.alice, channel=w.channel)).wait_original()
        )
        assert "each person 0 waiting" in after
