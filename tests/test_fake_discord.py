"""The fake Discord in tests/fake_discord, driven by the real discord.py client over real sockets."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import discord
import numpy as np
import pytest
from discord.ext import commands
from PIL import Image, ImageFilter, ImageOps

from tests.fake_discord import GONE, Channel, FakeDiscord, Guild, Member, OutsideHost
from tests.photos import MB, ODD, Photos, PhotoSpec, cached_photos, corpus, render, variant


@dataclass
class Seen:
    """What the bot saw and what went wrong for it, written by its handlers."""

    messages: list[discord.Message] = field(default_factory=list)
    edits: list[str] = field(default_factory=list)  # content after each edit
    deleted: list[int] = field(default_factory=list)  # message ids, single and bulk deletes
    clicks: list[int] = field(default_factory=list)  # user ids
    errors: list[discord.HTTPException] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # holds /slow and /sleepy until the test says


class PressView(discord.ui.View):
    def __init__(self, seen: Seen) -> None:
        super().__init__(timeout=None)
        self.seen = seen

    @discord.ui.button(label="Press", custom_id="press:v1")
    async def press(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.seen.clicks.append(interaction.user.id)
        await interaction.response.edit_message(content=f"pressed by {interaction.user.name}", view=None)


def make_bot(guild_id: int, seen: Seen) -> commands.Bot:
    """A tiny bot whose commands exercise one Discord behaviour each."""
    intents = discord.Intents.default()
    intents.message_content = True
    bot = commands.Bot(command_prefix="!", intents=intents, help_command=None, guild_ready_timeout=0.1)
    tree = bot.tree

    @tree.command(description="Say it back, after thinking")
    async def echo(interaction: discord.Interaction, text: str) -> None:
        await interaction.response.defer()
        await interaction.followup.send(text)

    @tree.command(description="A button")
    async def press(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("press it", view=PressView(seen))

    @tree.command(description="Only for you")
    async def secret(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("only you", ephemeral=True)

    @tree.command(description="Reverse a file")
    async def flip(interaction: discord.Interaction, file: discord.Attachment) -> None:
        data = await file.read()
        try:
            await interaction.response.send_message(
                "flipped", file=discord.File(io.BytesIO(data[::-1]), "f.bin")
            )
        except discord.HTTPException as exc:
            seen.errors.append(exc)

    @tree.command(description="Post a draft, then edit it")
    async def draft(interaction: discord.Interaction, edits: int = 1) -> None:
        await interaction.response.defer(ephemeral=True)
        message = await interaction.channel.send("draft")
        for i in range(edits):
            await message.edit(content=f"final {i + 1}")
        await interaction.followup.send("done")

    @tree.command(description="Defer, then answer when the test says")
    async def slow(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await seen.gate.wait()
        try:
            await interaction.followup.send("late")
        except discord.HTTPException as exc:
            seen.errors.append(exc)

    @tree.command(description="Acknowledge only when the test says")
    async def sleepy(interaction: discord.Interaction) -> None:
        await seen.gate.wait()
        try:
            await interaction.response.send_message("too late")
        except discord.HTTPException as exc:
            seen.errors.append(exc)

    @tree.context_menu(name="Classify image")
    async def classify(interaction: discord.Interaction, message: discord.Message) -> None:
        names = ", ".join(a.filename for a in message.attachments)
        await interaction.response.send_message(f"{len(message.attachments)} image(s): {names}")

    @bot.event
    async def on_message(message: discord.Message) -> None:
        seen.messages.append(message)

    @bot.event
    async def on_raw_message_edit(payload: discord.RawMessageUpdateEvent) -> None:
        seen.edits.append(payload.message.content)

    @bot.event
    async def on_raw_message_delete(payload: discord.RawMessageDeleteEvent) -> None:
        seen.deleted.append(payload.message_id)

    @bot.event
    async def on_raw_bulk_message_delete(payload: discord.RawBulkMessageDeleteEvent) -> None:
        seen.deleted.extend(sorted(payload.message_ids))

    async def setup_hook() -> None:
        guild = discord.Object(guild_id)
        tree.copy_global_to(guild=guild)
        await tree.sync(guild=guild)

    bot.setup_hook = setup_hook  # type: ignore[method-assign]
    return bot


@dataclass
class World:
    fake: FakeDiscord
    guild: Guild
    channel: Channel
    alice: Member
    bot: commands.Bot
    seen: Seen


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with FakeDiscord() as fake:
        guild = fake.add_guild("Iris test")
        channel = fake.add_channel(guild, "general")
        alice = fake.add_member(guild, "alice")
        seen = Seen()
        bot = make_bot(guild.id, seen)
        async with fake.run_bot(bot):
            yield World(fake, guild, channel, alice, bot, seen)


async def test_slash_command_defers_then_its_followup_fills_the_reply(world: World):
    fake, channel, alice = world.fake, world.channel, world.alice
    synced = {c["name"]: c for c in fake.commands[world.guild.id]}
    assert {"echo", "press", "secret", "flip", "draft", "slow", "sleepy"} <= set(synced)
    assert synced["echo"]["options"][0]["name"] == "text" and synced["echo"]["options"][0]["type"] == 3
    with pytest.raises(LookupError, match="was synced"):
        await fake.invoke_slash("nope", user=alice, channel=channel)

    interaction = await fake.invoke_slash("echo", user=alice, channel=channel, text="hi")
    reply = await interaction.wait_original()

    assert interaction.deferred and not interaction.ephemeral
    assert reply.content == "hi" and reply.author is fake.bot and not reply.loading
    assert interaction.followups == [reply]  # the first followup after a defer fills the "thinking" message
    assert [m.content for m in fake.channel_messages(channel)] == ["hi"]
    assert fake.count_requests("POST", r"^/interactions/\d+/[^/]+/callback$", status=200) == 1


async def test_click_reaches_the_view_callback(world: World):
    fake, channel = world.fake, world.channel
    bob = fake.add_member(world.guild, "bob")
    interaction = await fake.invoke_slash("press", user=world.alice, channel=channel)
    message = await interaction.wait_original()
    assert message.find_component("Press")["custom_id"] == "press:v1"

    click = await fake.click(message, "Press", user=bob)
    await click.wait_response()

    assert world.seen.clicks == [bob.id]
    assert click.callback_type == 7  # UPDATE_MESSAGE
    assert message.content == "pressed by bob" and message.components == [] and message.edits == 1


async def test_ephemeral_reply_is_seen_by_its_user_only(world: World):
    fake, channel, alice = world.fake, world.channel, world.alice
    interaction = await fake.invoke_slash("secret", user=alice, channel=channel)
    reply = await interaction.wait_original()

    assert interaction.ephemeral and reply.ephemeral
    assert fake.channel_messages(channel) == []
    assert fake.channel_messages(channel, as_user=alice) == [reply]
    assert fake.channel_messages(channel, as_user=fake.add_member(world.guild, "bob")) == []
    assert not world.seen.messages  # no MESSAGE_CREATE for an ephemeral message


async def test_attachments_travel_both_ways_with_their_bytes(world: World):
    fake, channel = world.fake, world.channel
    payload = bytes(range(256)) * 3
    interaction = await fake.invoke_slash(
        "flip", user=world.alice, channel=channel, file=("in.bin", payload, "application/octet-stream")
    )
    reply = await interaction.wait_original()

    assert reply.content == "flipped"
    [attachment] = reply.attachments
    assert attachment.filename == "f.bin" and attachment.data == payload[::-1]
    assert fake.count_requests("GET", r"^/cdn/attachments/") == 1  # the bot read the upload from the CDN


async def test_upload_over_the_interaction_limit_is_refused(world: World):
    fake = world.fake
    fake.attachment_size_limit = 1024
    interaction = await fake.invoke_slash(
        "flip", user=world.alice, channel=world.channel, file=("a", b"x" * 2048)
    )

    error = await fake.wait_for(lambda: world.seen.errors and world.seen.errors[0])
    assert interaction.payload["attachment_size_limit"] == 1024
    assert error.status == 413 and error.code == 40005
    assert interaction.original is None


async def test_injected_429_on_an_edit_is_retried_and_the_edit_lands(world: World):
    fake, channel = world.fake, world.channel
    fake.inject_429("PATCH", r"^/channels/\d+/messages/\d+$", count=1, retry_after=0.2)
    interaction = await fake.invoke_slash("draft", user=world.alice, channel=channel)
    done = await interaction.wait_original()

    assert done.content == "done" and done.ephemeral
    [draft] = fake.channel_messages(channel)
    assert draft.content == "final 1" and draft.edits == 1
    assert fake.count_requests("PATCH", r"^/channels/\d+/messages/\d+$", status=429) == 1
    assert fake.count_requests("PATCH", r"^/channels/\d+/messages/\d+$", status=200) == 1


async def test_rate_limit_headers_make_the_client_pace_itself(world: World):
    fake, channel = world.fake, world.channel
    fake.limiter.limits["message_edit"] = (2, 0.5)  # 2 edits per 0.5 s per channel
    interaction = await fake.invoke_slash("draft", user=world.alice, channel=channel, edits=3)
    await interaction.wait_original()

    assert fake.channel_messages(channel)[0].content == "final 3"
    assert fake.count_requests("PATCH", r"^/channels/", status=200) == 3
    assert fake.count_requests("PATCH", r"^/channels/", status=429) == 0  # it waited instead


async def test_events_after_a_dropped_connection_arrive_after_resume(world: World):
    fake, channel, seen = world.fake, world.channel, world.seen
    await fake.post_message(channel, world.alice, "before")
    await fake.wait_for(lambda: seen.messages)

    await fake.drop_connection()
    await fake.post_message(channel, world.alice, "after")  # queued, then replayed on RESUME
    await fake.wait_for(lambda: len(seen.messages) == 2)

    assert [m.content for m in seen.messages] == ["before", "after"]
    assert fake.gateway.identifies == 1 and fake.gateway.resumes == 1
    assert fake.gateway.paths == ["/", "/resume"]  # it resumed at READY's resume_gateway_url


async def test_followup_after_15_minutes_fails_with_invalid_webhook_token(world: World):
    fake = world.fake
    interaction = await fake.invoke_slash("slow", user=world.alice, channel=world.channel)
    await interaction.wait_response()
    assert interaction.deferred and interaction.original.loading

    fake.clock.advance(15 * 60 + 1)
    world.seen.gate.set()
    error = await fake.wait_for(lambda: world.seen.errors and world.seen.errors[0])

    assert isinstance(error, discord.HTTPException) and error.status == 401 and error.code == 50027
    assert interaction.original.loading  # still "thinking": nothing was delivered


async def test_acknowledging_after_3_seconds_is_an_unknown_interaction(world: World):
    fake = world.fake
    interaction = await fake.invoke_slash("sleepy", user=world.alice, channel=world.channel)
    fake.clock.advance(3.5)
    world.seen.gate.set()
    error = await fake.wait_for(lambda: world.seen.errors and world.seen.errors[0])

    assert isinstance(error, discord.NotFound) and error.code == 10062
    assert not interaction.acknowledged


async def test_history_pages_newest_first(world: World):
    fake, channel = world.fake, world.channel
    for i in range(120):
        await fake.post_message(channel, world.alice, f"m{i}")
    first = fake.channel_messages(channel)[0]
    await fake.wait_for(lambda: len(world.seen.messages) == 120)
    bot_channel = world.bot.get_channel(channel.id)

    newest_first = [m.content async for m in bot_channel.history(limit=None)]
    after_first = [m.content async for m in bot_channel.history(limit=None, after=discord.Object(first.id))]

    assert newest_first == [f"m{i}" for i in reversed(range(120))]
    assert after_first == [f"m{i}" for i in range(1, 120)]
    assert fake.count_requests("GET", r"^/channels/\d+/messages$") == 4  # 100 + 20, twice


async def test_permissions_threads_and_forum_posts(world: World):
    fake, guild, bot = world.fake, world.guild, world.bot
    bot_role = guild.roles[1]
    readonly = fake.add_channel(
        guild, "rules", overwrites={bot_role: (0, discord.Permissions(send_messages=True))}
    )
    forum = fake.add_channel(guild, "ideas", type="forum")
    thread = fake.add_channel(guild, "chat", type="thread", parent=world.channel)
    await fake.wait_for(lambda: bot.get_channel(thread.id) and bot.get_channel(forum.id))

    with pytest.raises(discord.Forbidden) as refused:
        await bot.get_channel(readonly.id).send("hello")
    assert refused.value.code == 50013
    await bot.get_channel(thread.id).send("in a thread")
    post, starter = await fake.add_forum_post(forum, "An idea", world.alice, "what if")
    await fake.wait_for(lambda: any(m.id == starter.id for m in world.seen.messages))
    await bot.get_channel(post.id).send("nice idea")

    assert [m.content for m in fake.channel_messages(thread)] == ["in a thread"]
    assert [m.content for m in fake.channel_messages(post)] == ["what if", "nice idea"]
    assert (
        isinstance(bot.get_channel(post.id), discord.Thread)
        and bot.get_channel(post.id).parent_id == forum.id
    )


async def test_context_menu_on_a_message_with_an_image(world: World):
    fake = world.fake
    photo = await fake.post_message(
        world.channel, world.alice, "look", attachments=[("cat.png", b"\x89PNG fake", "image/png")]
    )
    interaction = await fake.invoke_context_menu("Classify image", photo, user=world.alice)
    reply = await interaction.wait_original()

    assert interaction.payload["data"]["type"] == 3 and interaction.payload["data"]["target_id"] == str(
        photo.id
    )
    assert reply.content == "1 image(s): cat.png"


async def test_what_people_edit_and_delete_reaches_the_bot(world: World):
    fake, channel, seen = world.fake, world.channel, world.seen
    first, second, third = [await fake.post_message(channel, world.alice, f"m{i}") for i in range(3)]

    await fake.edit_message(first, "m0, edited")
    await fake.delete_message(first)
    await fake.bulk_delete([second, third])
    await fake.wait_for(lambda: len(seen.deleted) == 3)

    assert seen.edits == ["m0, edited"]
    assert seen.deleted == [first.id, second.id, third.id]
    assert fake.channel_messages(channel) == []


async def test_an_edit_keeps_exactly_the_attachments_it_lists(world: World):
    fake = world.fake
    channel = world.bot.get_channel(world.channel.id)
    sent = await channel.send(
        "two files",
        files=[discord.File(io.BytesIO(b"one"), "1.txt"), discord.File(io.BytesIO(b"two"), "2.txt")],
    )

    await sent.edit(attachments=[sent.attachments[1], discord.File(io.BytesIO(b"three"), "3.txt")])

    [message] = fake.channel_messages(world.channel)
    assert [(a.filename, a.data) for a in message.attachments] == [("2.txt", b"two"), ("3.txt", b"three")]
    assert message.edits == 1 and message.content == "two files"


# -- what the real API refuses (bounds vendored in tests/fake_discord/limits.py) -------------------------
def _embed(**over):
    return {"title": "t", "description": "d", **over}


def _button(custom_id: str) -> dict:
    return {"type": 2, "style": 1, "label": "b", "custom_id": custom_id}


@pytest.mark.parametrize(
    "payload,where",
    [
        ({"content": "x" * 2001}, "content"),
        ({"embeds": [_embed() for _ in range(11)]}, "embeds"),
        ({"embeds": [_embed(title="x" * 257)]}, "embeds.0.title"),
        ({"embeds": [_embed(description="x" * 4097)]}, "embeds.0.description"),
        ({"embeds": [_embed(fields=[{"name": "n", "value": "v" * 1025}])]}, "embeds.0.fields.0.value"),
        ({"embeds": [_embed(fields=[{"name": "n", "value": "v"}] * 26)]}, "embeds.0.fields"),
        ({"embeds": [_embed(description="x" * 4000), _embed(description="y" * 2001)]}, "embeds"),
        (
            {"content": "c", "components": [{"type": 1, "components": [_button("b")]} for _ in range(6)]},
            "components",
        ),
        (
            {"content": "c", "components": [{"type": 1, "components": [_button(f"b{i}") for i in range(6)]}]},
            "components.0.components",
        ),
        (
            {"content": "c", "components": [{"type": 1, "components": [_button("x" * 101)]}]},
            "components.0.components.0.custom_id",
        ),
    ],
)
async def test_what_discord_refuses_is_refused_with_its_code(world: World, payload, where):
    route = discord.http.Route("POST", "/channels/{channel_id}/messages", channel_id=world.channel.id)
    with pytest.raises(discord.HTTPException) as caught:
        await world.bot.http.request(route, json=payload)
    assert caught.value.status == 400 and caught.value.code == 50035
    assert where in caught.value.text  # discord.py flattens the nested errors to "embeds.0.title: ..."
    assert world.fake.channel_messages(world.channel) == []


async def test_at_the_bounds_is_accepted(world: World):
    route = discord.http.Route("POST", "/channels/{channel_id}/messages", channel_id=world.channel.id)
    embeds = [_embed(title="x" * 256, description="y" * 4096, fields=[{"name": "n", "value": "v" * 1024}])]
    await world.bot.http.request(route, json={"content": "z" * 2000, "embeds": embeds})
    rows = [{"type": 1, "components": [_button(f"{r}-{i}") for i in range(5)]} for r in range(5)]
    await world.bot.http.request(route, json={"content": "c", "components": rows})
    assert len(world.fake.channel_messages(world.channel)) == 2


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
async def test_thread_names_out_of_bounds_are_refused(world: World, name):
    channel = world.bot.get_channel(world.channel.id)
    with pytest.raises(discord.HTTPException) as caught:
        await channel.create_thread(name=name, type=discord.ChannelType.public_thread)
    assert caught.value.code == 50035 and "name" in caught.value.text


async def test_integer_option_bounds_above_2_53_fail_the_sync(world: World):
    tree = world.bot.tree

    @tree.command(description="seeded")
    async def seeded(
        interaction: discord.Interaction, seed: discord.app_commands.Range[int, 0, 2**53]
    ) -> None:
        pass

    guild = discord.Object(world.guild.id)
    tree.copy_global_to(guild=guild)
    with pytest.raises(discord.HTTPException) as caught:
        await tree.sync(guild=guild)
    assert caught.value.code == 50035 and "max_value" in str(caught.value)
    assert "seeded" not in {c["name"] for c in world.fake.commands[world.guild.id]}


async def test_the_bots_channel_permissions_are_enforced(world: World):
    from tests.fake_discord.models import (
        ATTACH_FILES,
        CREATE_PUBLIC_THREADS,
        EMBED_LINKS,
        SEND_MESSAGES,
        SEND_MESSAGES_IN_THREADS,
        VIEW_CHANNEL,
    )

    fake, guild = world.fake, world.guild
    bot_role = next(r for r in guild.roles if r.managed)
    quiet = fake.add_channel(guild, "quiet", overwrites={bot_role: (0, SEND_MESSAGES | ATTACH_FILES)})
    hidden = fake.add_channel(guild, "hidden", overwrites={bot_role: (0, VIEW_CHANNEL)})
    nothreads = fake.add_channel(guild, "no-threads", overwrites={bot_role: (0, CREATE_PUBLIC_THREADS)})
    await fake.wait_for(lambda: world.bot.get_channel(nothreads.id))
    with pytest.raises(discord.Forbidden) as caught:
        await world.bot.get_channel(quiet.id).send("hi")
    assert caught.value.code == 50013
    with pytest.raises(discord.Forbidden) as caught:
        await world.bot.get_channel(hidden.id).send("hi")
    assert caught.value.code == 50001
    with pytest.raises(discord.Forbidden) as caught:
        await world.bot.get_channel(nothreads.id).create_thread(
            name="t", type=discord.ChannelType.public_thread
        )
    assert caught.value.code == 50013
    thread = fake.add_channel(guild, "t", type="thread", parent=nothreads)
    fake.set_overwrite(nothreads, bot_role, 0, CREATE_PUBLIC_THREADS | SEND_MESSAGES_IN_THREADS)
    await fake.wait_for(lambda: world.bot.get_channel(thread.id))
    with pytest.raises(discord.Forbidden) as caught:
        await world.bot.get_channel(thread.id).send("in the thread")
    assert caught.value.code == 50013
    fake.set_overwrite(world.channel, bot_role, 0, EMBED_LINKS)
    with pytest.raises(discord.Forbidden):
        await world.bot.get_channel(world.channel.id).send(embed=discord.Embed(title="e"))
    sent = await world.bot.get_channel(world.channel.id).send("text")
    fake.set_overwrite(world.channel, bot_role, 0, ATTACH_FILES)
    with pytest.raises(discord.Forbidden):
        await sent.edit(attachments=[discord.File(io.BytesIO(b"x"), "x.txt")])
    await sent.edit(content="edited")  # editing its own message needs no Send Messages
    assert fake.channel_messages(world.channel)[-1].content == "edited"


async def test_dms_and_closed_dms(world: World):
    fake, alice = world.fake, world.alice
    bob = fake.add_member(world.guild, "bob")
    user = await world.bot.fetch_user(alice.id)
    await user.send("hello alice", file=discord.File(io.BytesIO(b"png"), "a.png"))
    [dm] = fake.dm_messages(alice)
    assert dm.content == "hello alice" and dm.attachments[0].data == b"png"
    assert fake.viewers(dm) == {alice.id, fake.bot.id} and fake.dm_messages(bob) == []
    fake.close_dms(bob)
    with pytest.raises(discord.Forbidden) as caught:
        await (await world.bot.fetch_user(bob.id)).send("hi")
    assert caught.value.code == 50007


async def test_who_sees_and_who_is_pinged(world: World):
    from tests.fake_discord.models import MENTION_EVERYONE, VIEW_CHANNEL

    fake, guild, alice = world.fake, world.guild, world.alice
    bob = fake.add_member(guild, "bob")
    carol = fake.add_member(guild, "carol")
    fake.set_overwrite(world.channel, carol, 0, VIEW_CHANNEL)
    channel = world.bot.get_channel(world.channel.id)
    text = f"<@{bob.id}> <@{carol.id}> @everyone"
    loud = await channel.send(text)
    quiet = await channel.send(text, allowed_mentions=discord.AllowedMentions.none())
    loud_m, quiet_m = fake.channel_messages(world.channel)
    assert carol.id not in fake.viewers(loud_m) and {alice.id, bob.id} <= fake.viewers(loud_m)
    assert fake.pinged(loud_m) == {bob.id}  # carol cannot see it; @everyone needs Mention Everyone
    assert fake.pinged(quiet_m) == set()
    assert fake.seen_by(carol, world.channel) == [] and fake.seen_by(bob, world.channel) == [loud_m, quiet_m]
    bot_role = next(r for r in guild.roles if r.managed)
    bot_role.permissions |= MENTION_EVERYONE
    assert fake.pinged(loud_m) == {alice.id, bob.id} and fake.pinged(quiet_m) == set()
    assert loud.id == loud_m.id and quiet.id == quiet_m.id
    secret = await fake.invoke_slash("secret", user=alice, channel=world.channel)
    reply = await secret.wait_original()
    assert fake.viewers(reply) == {alice.id} and reply not in fake.seen_by(bob, world.channel)


async def test_retrying_before_retry_after_is_caught(world: World):
    fake = world.fake
    fake.inject_429("POST", r"^/channels/\d+/messages$", count=1, retry_after=0.5)
    session = world.bot.http._HTTPClient__session  # a client that ignores retry_after: raw aiohttp
    url = fake.api_url + f"/channels/{world.channel.id}/messages"
    headers = {"Authorization": f"Bot {fake.token}"}
    async with session.post(url, json={"content": "a"}, headers=headers) as first:
        assert first.status == 429
    async with session.post(url, json={"content": "b"}, headers=headers) as second:
        assert second.status == 200
    assert fake.errors and "retry_after was 0.500" in fake.errors[0]
    fake.errors.clear()


# -- the CDN, signed links, embeds from other hosts ---------------------------------------------------


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Photos:
    return cached_photos(tmp_path_factory)


@pytest.fixture
async def outside() -> AsyncIterator[OutsideHost]:
    async with OutsideHost() as host:
        yield host


async def _get(url: str, **kwargs: Any) -> tuple[int, dict[str, str], list[bytes]]:
    """Status, headers and the body as the pieces that arrived (aiohttp's iter_any: one per read)."""
    async with aiohttp.ClientSession() as session, session.get(url, **kwargs) as resp:
        return resp.status, dict(resp.headers), [piece async for piece in resp.content.iter_any()]


async def test_cdn_sends_a_multi_megabyte_photo_in_many_chunked_pieces(world: World, photos: Photos):
    fake, channel = world.fake, world.channel
    spec = PhotoSpec(7, 2048, 1536, 2 * MB)
    data = photos.get(spec)
    message = await fake.post_message(channel, world.alice, attachments=[photos.attachment(spec)])
    attachment = message.attachments[0]

    status, headers, pieces = await _get(attachment.url)

    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in headers
    assert b"".join(pieces) == data and len(data) > 1.5 * MB
    assert len(pieces) >= len(data) // fake.cdn.chunk_bytes // 2  # arrived in pieces, not in one go
    # So a client that reads "up to N bytes" once gets what has arrived so far: a fraction of the file.
    async with aiohttp.ClientSession() as session, session.get(attachment.url) as resp:
        first = await resp.content.read(len(data) + 1)
    assert 0 < len(first) < len(data)
    # discord.py's own Attachment.read reads to the end.
    seen = await world.bot.get_channel(channel.id).fetch_message(message.id)  # type: ignore[union-attr]
    assert await seen.attachments[0].read() == data


async def test_a_client_that_stops_reading_is_no_fault_of_the_cdn(world: World, photos: Photos):
    fake = world.fake
    spec = PhotoSpec(8, 1600, 1200, 600_000)
    message = await fake.post_message(world.channel, world.alice, attachments=[photos.attachment(spec)])

    async with aiohttp.ClientSession() as session:
        async with session.get(message.attachments[0].url) as resp:
            first = await resp.content.readany()
            resp.close()  # as a reader that hit its size cap does
        assert 0 < len(first) < spec.target_bytes  # type: ignore[operator]
        await fake.wait_for(lambda: fake.cdn.cut_short == 1)
    assert fake.errors == []


async def test_cdn_sends_content_length_by_default_or_for_a_file_that_asks(world: World, photos: Photos):
    fake = world.fake
    spec = PhotoSpec(8, 1600, 1200, 600_000)
    message = await fake.post_message(world.channel, world.alice, attachments=[photos.attachment(spec)] * 2)
    per_file, default = message.attachments
    per_file.content_length = True

    for attachment, with_length in ((per_file, True), (default, False), (default, True)):
        fake.cdn.content_length = with_length and attachment is default
        status, headers, pieces = await _get(attachment.url)
        assert status == 200 and b"".join(pieces) == attachment.data
        if with_length:
            assert headers["Content-Length"] == str(attachment.size) and "Transfer-Encoding" not in headers
        else:
            assert headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in headers


async def test_signed_links_expire_on_the_fake_clock_and_a_refetch_signs_them_again(world: World):
    fake, channel = world.fake, world.channel
    message = await fake.post_message(channel, world.alice, attachments=[("a.png", _png(), "image/png")])
    bot_channel = world.bot.get_channel(channel.id)
    old = (await bot_channel.fetch_message(message.id)).attachments[0]  # type: ignore[union-attr]
    query = parse_qs(urlsplit(old.url).query)
    issued, expires = int(query["is"][0], 16), int(query["ex"][0], 16)
    assert abs(issued - fake.clock.now()) < 5 and expires - issued == fake.cdn.lifetime_s
    assert len(query["hm"][0]) == 64 and old.url.endswith("&")
    assert urlsplit(old.proxy_url).path.startswith("/media/attachments/")
    assert urlsplit(old.proxy_url).query == urlsplit(old.url).query  # one signature for both hosts
    assert old.width == 8 and old.height == 4
    for url in (old.url, old.proxy_url):
        assert (await _get(url))[0] == 200
    forged = old.url.replace(query["hm"][0], "0" * 64)
    later = old.url.replace(query["ex"][0], f"{expires + 3600:x}")  # a longer life needs a new signature
    bare = old.url.split("?")[0]
    for url in (forged, later, bare):
        status, _, body = await _get(url)
        assert (status, b"".join(body).decode()) == (404, GONE)

    fake.clock.advance(fake.cdn.lifetime_s + 60)

    for url in (old.url, old.proxy_url):
        status, _, body = await _get(url)
        assert (status, b"".join(body).decode()) == (404, GONE)
    new = (await bot_channel.fetch_message(message.id)).attachments[0]  # type: ignore[union-attr]
    assert new.url != old.url
    route = discord.http.Route("POST", "/attachments/refresh-urls")
    answer = await world.bot.http.request(route, json={"attachment_urls": [old.url, old.proxy_url, bare]})
    refreshed = [r["refreshed"] for r in answer["refreshed_urls"]]
    assert [r["original"] for r in answer["refreshed_urls"]] == [old.url, old.proxy_url, bare]
    assert urlsplit(refreshed[1]).path == urlsplit(old.proxy_url).path
    for url in (new.url, new.proxy_url, *refreshed):
        status, _, body = await _get(url)
        assert status == 200 and b"".join(body) == message.attachments[0].data
    assert fake.count_requests("GET", r"^/(cdn|media)/attachments/", status=404) == 5


async def test_an_embed_from_another_host_is_served_by_the_proxy_only(world: World, outside: OutsideHost):
    fake, channel = world.fake, world.channel
    picture = _png()
    original = outside.put("/cat.png", picture, "image/png")
    moved = outside.url("/elsewhere.png")
    await fake.post_message(
        channel,
        world.alice,
        original,
        embeds=[
            fake.image_embed(original, picture, "image/png"),
            fake.image_embed(original, picture, "image/png", rich=True, proxy_redirect_to=moved),
        ],
    )
    message = await fake.wait_for(lambda: world.seen.messages and world.seen.messages[-1])
    link, rich = message.embeds

    assert link.type == "image" and link.thumbnail.url == original
    assert rich.type == "rich" and rich.image.url == original
    assert (link.thumbnail.width, link.thumbnail.height) == (8, 4)
    for proxied in (link.thumbnail.proxy_url, rich.image.proxy_url):
        assert urlsplit(proxied).netloc == urlsplit(fake.base_url).netloc != outside.host
    status, _, body = await _get(link.thumbnail.proxy_url)
    assert status == 200 and b"".join(body) == picture
    status, headers, _ = await _get(rich.image.proxy_url, allow_redirects=False)
    assert status == 302 and headers["Location"] == moved
    assert outside.hits == []  # the fake never fetches the original

    # The counter does count: a client that follows the redirect reaches the outside host.
    outside.redirect("/elsewhere.png", original)
    status, _, body = await _get(rich.image.proxy_url)
    assert status == 200 and b"".join(body) == picture
    assert [h.path for h in outside.hits] == ["/elsewhere.png", "/cat.png"]
    assert outside.address == "127.0.0.2" or outside.port != fake.port


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 4), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


async def test_photos_are_real_photos_at_real_sizes_and_in_odd_shapes(photos: Photos):
    cap = 500_000
    specs = corpus(3, seed=5, max_bytes=cap, over_cap=1)
    over, *ordinary = specs
    for spec in specs:
        data = photos.get(spec)
        image = Image.open(io.BytesIO(data))
        assert (image.format, image.size, image.mode) == ("JPEG", (spec.width, spec.height), "RGB")
        assert spec.target_bytes and abs(len(data) - spec.target_bytes) <= 0.15 * spec.target_bytes
        # A drawn scene, not noise: it has large-scale structure (noise averages out to flat grey at 1/16
        # scale), and the sky is smooth at the top left.
        assert np.asarray(image.convert("L").reduce(16), dtype=np.float32).std() > 25
        sky = np.asarray(image.crop((0, 0, 32, 32)).filter(ImageFilter.BoxBlur(4)), dtype=np.float32)
        assert sky.std(axis=(0, 1)).max() < 12
    assert len(photos.get(over)) > cap > max(len(photos.get(s)) for s in ordinary)
    assert photos.get(specs[1]) == render(specs[1])  # the same seed draws the same photo
    copy = variant(photos.get(specs[1]), 7)  # other bytes, same pixels: what benchmarks multiply
    assert copy != photos.get(specs[1])
    assert Image.open(io.BytesIO(copy)).tobytes() == Image.open(io.BytesIO(photos.get(specs[1]))).tobytes()

    def opened(name: str) -> Image.Image:
        return Image.open(io.BytesIO(photos.odd(name)))

    assert opened("portrait").height > opened("portrait").width
    assert opened("panorama").width >= 4 * opened("panorama").height
    alpha = opened("png_alpha")
    assert alpha.mode == "RGBA" and alpha.getextrema()[3] == (0, 255)
    assert opened("progressive").info.get("progressive") and opened("cmyk").mode == "CMYK"
    rotated = opened("exif_rotated")
    assert rotated.getexif()[0x0112] == 6
    assert ImageOps.exif_transpose(rotated).size == ODD["exif_rotated"].display_size == (1536, 2048)
    assert opened("strip").size == (16, 40_000)


# -- gateway sharding ------------------------------------------------------------------------------


def shard_client(shard_id: int, shard_count: int, seen: list[discord.Message]) -> discord.Client:
    """A client that runs one shard (discord.py's own single-shard mode) and records what it is sent."""
    intents = discord.Intents.default()
    intents.message_content = True
    client = discord.Client(
        intents=intents, shard_id=shard_id, shard_count=shard_count, guild_ready_timeout=0.1
    )

    @client.event
    async def on_message(message: discord.Message) -> None:
        seen.append(message)

    return client


async def test_a_servers_events_reach_only_its_shard_and_dms_shard_0():
    async with FakeDiscord() as fake:
        guilds = [fake.add_guild(f"server {i}", shard=(i % 2, 2)) for i in range(4)]
        assert [(g.id >> 22) % 2 for g in guilds] == [0, 1, 0, 1]
        assert guilds == sorted(guilds, key=lambda g: g.id)  # ids still grow
        channels = [fake.add_channel(g, "general") for g in guilds]
        people = [fake.add_member(g, f"person {i}") for i, g in enumerate(guilds)]
        seen: dict[int, list[discord.Message]] = {0: [], 1: []}
        clients = {k: shard_client(k, 2, seen[k]) for k in seen}
        async with fake.run_bot(clients[0]), fake.run_bot(clients[1]):
            for k, client in clients.items():  # READY and GUILD_CREATE: its servers only
                assert {g.id for g in client.guilds} == {g.id for g in guilds[k::2]}
            late = fake.add_guild("joined later", shard=(1, 2))  # GUILD_CREATE names its server in `id`
            for channel, person in zip(channels, people, strict=True):
                await fake.post_message(channel, person, f"in {channel.guild.name}")
            dm = fake.state.open_dm(people[1].user)
            await fake.post_message(dm, people[1], "a DM")
            for k in seen:  # a last message on each shard: everything sent before it has arrived
                await fake.post_message(channels[k], people[k], "last")
            await fake.wait_for(lambda: all(s and s[-1].content == "last" for s in seen.values()))
            assert clients[1].get_guild(late.id) is not None and clients[0].get_guild(late.id) is None
        assert [m.content for m in seen[0]] == ["in server 0", "in server 2", "a DM", "last"]
        assert [m.content for m in seen[1]] == ["in server 1", "in server 3", "last"]
        assert sorted(fake.gateway.identified) == [(0, 2), (1, 2)]


async def test_an_invalid_shard_is_closed_with_4010():
    async with FakeDiscord() as fake:
        fake.add_guild("server")
        with pytest.raises(discord.ConnectionClosed) as closed:
            async with fake.run_bot(shard_client(2, 2, [])):
                pass
        assert closed.value.code == 4010 and fake.gateway.identifies == 0


async def test_too_few_shards_are_closed_with_4011_when_discord_requires_sharding():
    async with FakeDiscord(shards=2, sharding_required=True, max_concurrency=16) as fake:
        guild = fake.add_guild("server")
        auth, url = {"Authorization": f"Bot {fake.token}"}, fake.api_url + "/gateway/bot"
        async with aiohttp.ClientSession(headers=auth) as http, http.get(url) as got:
            advice = await got.json()
        assert advice["shards"] == 2 and advice["session_start_limit"]["max_concurrency"] == 16
        with pytest.raises(discord.ConnectionClosed) as closed:
            async with fake.run_bot(make_bot(guild.id, Seen())):  # one connection, no `shard`
                pass
        assert closed.value.code == 4011
        async with fake.run_bot(shard_client(1, 2, [])) as client:  # as many shards as advised: welcome
            assert client.is_ready() and fake.gateway.identified == [(1, 2)]
