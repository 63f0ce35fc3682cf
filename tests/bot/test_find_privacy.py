"""/find answers are private to the asker; Share posts only what everyone in the channel can already see."""

from __future__ import annotations

import pytest

from models.toy import world
from tests.bot.test_find import find_bot, numbers, post_samples, reds, run_find
from tests.fake_discord.models import READ_MESSAGE_HISTORY, VIEW_CHANNEL


@pytest.fixture(autouse=True)
def _on_each_index_backend(w, index_url):
    """Every test here runs on the SQLite index and on PostgreSQL: the same permission filter."""
    w.index_url = index_url
    yield
    if index_url:  # the bot really indexed into PostgreSQL
        import psycopg

        with psycopg.connect(index_url) as db:
            assert db.execute("SELECT COUNT(*) FROM items").fetchone()[0] > 0


async def _staff_world(w):
    """A staff member, and a staff-only room full of red circles; #art has a few of its own."""
    everyone, bot_role = w.guild.roles[0], w.guild.roles[1]
    staff = w.fake.add_role(w.guild, "staff")
    boss = w.fake.add_member(w.guild, "boss", roles=[staff])
    can = VIEW_CHANNEL | READ_MESSAGE_HISTORY
    secret = w.fake.add_channel(
        w.guild, "staff-room", overwrites={everyone: (0, VIEW_CHANNEL), staff: (can, 0), bot_role: (can, 0)}
    )
    await post_samples(w, secret, reds(6), [boss])
    here = await post_samples(w, w.channel, reds(3, skip=6), [w.alice])
    await post_samples(w, w.channel, list(world.samples(6, seed=71)), [w.alice])
    hidden = {str(m.id) for m in w.fake.channel_messages(secret)}
    return boss, secret, set(here), hidden


def _bot_messages_seen_by(w, member, channel=None):
    """Iris's messages with results (embeds or files) that `member` sees in the channel."""
    return [
        m
        for m in w.fake.channel_messages(channel or w.channel, as_user=member)
        if m.author.id == w.fake.bot.id and (m.embeds or m.attachments)
    ]


async def test_answers_are_private_and_share_posts_only_this_channels_hits(w):
    boss, _secret, here, hidden = await _staff_world(w)
    async with find_bot(w):
        reply = await run_find(w, w.channel, boss, query="a red circle", scope="server", k=6)
        shown = set(numbers(reply))
        assert reply.ephemeral and shown & hidden and shown & here  # the staff room is in boss's answer
        assert not _bot_messages_seen_by(w, w.bob)  # ...which bob, in the same channel, never sees

        more = await w.fake.click(reply, "Next page", user=boss)
        page2 = await w.fake.wait_for(
            lambda: more.original if more.original and more.original.embeds else None
        )
        like = await w.fake.click(reply, "More like #1", user=boss)
        similar = await w.fake.wait_for(
            lambda: like.original if like.original and like.original.embeds else None
        )
        assert page2.ephemeral and similar.ephemeral
        assert not _bot_messages_seen_by(w, w.bob)

        share = await w.fake.click(reply, "Share", user=boss)
        shared = await w.fake.wait_for(
            lambda: share.original if share.original and share.original.embeds else None
        )
        assert not shared.ephemeral
        seen_by_bob = _bot_messages_seen_by(w, w.bob)
        assert [m.id for m in seen_by_bob] == [shared.id]
        public = set(numbers(shared))
        assert public == shown & here and not public & hidden  # only #art's own hits
        left_out = len(shown - here)
        assert f"{left_out} other results left out" in shared.content
        assert len(reply.attachments) == 1 and len(shared.attachments) == 1


async def test_only_the_asker_can_press_the_buttons(w):
    boss, _secret, _here, _hidden = await _staff_world(w)
    async with find_bot(w):
        reply = await run_find(w, w.channel, boss, query="a red circle", scope="server", k=6)
        for label in ("Share", "Next page", "More like #1"):
            press = await w.fake.click(reply, label, user=w.bob)  # a forged press on a message bob cannot see
            await press.wait_response()
            answer = await w.fake.wait_for(
                lambda press=press: (
                    (press.followups or [None])[-1]
                    or (press.original if press.original and not press.original.loading else None)
                )
            )
            assert answer.ephemeral and "Only the person who searched" in answer.content, label
            assert not answer.embeds
        assert not _bot_messages_seen_by(w, w.bob)


async def test_share_with_nothing_from_this_channel_posts_nothing(w):
    boss, _secret, _here, _hidden = await _staff_world(w)
    lobby = w.fake.add_channel(w.guild, "lobby")  # no pictures of its own
    async with find_bot(w):
        reply = await run_find(w, lobby, boss, query="a red circle", scope="server", k=3)
        assert numbers(reply)
        share = await w.fake.click(reply, "Share", user=boss)
        await share.wait_followups(1)
        assert share.followups[-1].ephemeral and "nothing to share" in share.followups[-1].content
        assert not _bot_messages_seen_by(w, w.bob, lobby)
