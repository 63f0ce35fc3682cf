"""/find end to end: real discord.py, the fake Discord, the toy CLIP, the SQLite index on disk."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
import re
import sqlite3
from contextlib import asynccontextmanager

import numpy as np
from PIL import Image

from bot.app import IrisBot
from bot.find._render import BACKGROUND
from models.toy import world
from tests.bot.conftest import png
from tests.conftest import engine_for
from tests.fake_discord.models import READ_MESSAGE_HISTORY, VIEW_CHANNEL


@asynccontextmanager
async def find_bot(w, *, max_bytes: int | None = None, **overrides):
    """A bot that may download from the fake's CDN and media proxy (one origin: http://127.0.0.1:PORT), and
    waits for whole scans before answering (tests of partial answers set find_answer_after_s)."""
    cfg = w.config(**{"find_allowed_hosts": [w.fake.base_url], "find_answer_after_s": 120.0, **overrides})
    if max_bytes is not None:
        cfg = dataclasses.replace(cfg, images=dataclasses.replace(cfg.images, max_bytes=max_bytes))
    bot = IrisBot(cfg, engine_for(cfg, w.shared), guild_ready_timeout=0.1)
    async with w.fake.run_bot(bot):
        yield bot


def reds(n: int, skip: int = 0) -> list:
    """The toy world's first red circles (made one by one: rendering samples costs time)."""
    found = (s for s in (world.sample(i) for i in itertools.count()) if s.label == "red circle")
    return list(itertools.islice(found, skip, skip + n))


def numbers(reply) -> list[str]:
    """The jump links' message ids, in rank order."""
    return re.findall(r"/(\d+)\)", reply.embeds[0]["description"]) if reply.embeds else []


async def post_samples(w, channel, samples, authors):
    posted = {}
    for i, s in enumerate(samples):
        m = await w.fake.post_message(
            channel, authors[i % len(authors)], attachments=[(f"{i}.png", png(s.image), "image/png")]
        )
        posted[str(m.id)] = s
    return posted


async def run_find(w, channel, user, **options):
    rec = await w.fake.invoke_slash("find", user=user, channel=channel, **options)
    return await w.fake.wait_for(
        lambda: (
            rec.original
            if (rec.original and rec.original.embeds)
            or (rec.original and rec.original.content.startswith("No "))
            else None
        ),
        timeout=120,
    )


async def test_300_images_over_3_channels_find_blue_squares(w):
    channels = [w.channel, w.fake.add_channel(w.guild, "memes"), w.fake.add_channel(w.guild, "misc")]
    samples = list(world.samples(300, seed=606))
    posted = {}
    for n, channel in enumerate(channels):
        posted.update(
            await post_samples(w, channel, samples[n * 100 : (n + 1) * 100], [w.alice, w.bob, w.mod])
        )
    async with find_bot(w):
        reply = await run_find(w, w.channel, w.alice, query="a blue square", scope="server", k=9)
        more = await w.fake.click(reply, "Next page", user=w.alice)
        page2 = await w.fake.wait_for(
            lambda: more.original if more.original and more.original.embeds else None
        )
    ids = numbers(reply) + numbers(page2)[:1]
    labels = [posted[i].label for i in ids]
    assert labels[0] == "blue square", labels
    assert sum(lb == "blue square" for lb in labels[:10]) >= 8, labels
    grid = Image.open(io.BytesIO(reply.attachments[0].data))
    assert grid.size == (3 * 128, 3 * 128)


async def test_privacy_channels_threads_and_overwrites(w):
    everyone, bot_role = w.guild.roles[0], w.guild.roles[1]
    staff = w.fake.add_role(w.guild, "staff")
    boss = w.fake.add_member(w.guild, "boss", roles=[staff])
    can = VIEW_CHANNEL | READ_MESSAGE_HISTORY
    secret = w.fake.add_channel(
        w.guild, "staff-room", overwrites={everyone: (0, VIEW_CHANNEL), staff: (can, 0), bot_role: (can, 0)}
    )
    thread = w.fake.add_channel(w.guild, "staff-thread", type="thread", parent=secret)
    no_history = w.fake.add_channel(
        w.guild,
        "announcements",
        overwrites={everyone: (0, READ_MESSAGE_HISTORY), staff: (can, 0), bot_role: (can, 0)},
    )
    red = reds(12)
    for place, chunk in ((secret, red[:4]), (thread, red[4:8]), (no_history, red[8:])):
        await post_samples(w, place, chunk, [boss])
    await post_samples(w, w.channel, list(world.samples(6, seed=8)), [w.alice])
    hidden = {str(m.id) for ch in (secret, thread, no_history) for m in w.fake.channel_messages(ch)}
    async with find_bot(w):
        seen_by_boss = await run_find(w, w.channel, boss, query="a red circle", scope="server", k=9)
        assert set(numbers(seen_by_boss)) & hidden  # indexed, and shown to those who may read them
        seen_by_alice = await run_find(w, w.channel, w.alice, query="a red circle", scope="server", k=9)
        assert numbers(seen_by_alice) and not set(numbers(seen_by_alice)) & hidden
        in_thread = await run_find(w, thread, w.alice, query="a red circle", k=9)
        assert not set(numbers(in_thread)) & hidden


async def test_delete_edit_and_incremental_rescan(w):
    samples = list(world.samples(12, seed=9))
    posted = await post_samples(w, w.channel, samples, [w.alice])
    async with find_bot(w):
        first = await run_find(w, w.channel, w.alice, query="a green circle", k=9)
        history = w.fake.count_requests("GET", r"/channels/\d+/messages$")
        victim_id = numbers(first)[0]
        victim = next(m for m in w.fake.channel_messages(w.channel) if str(m.id) == victim_id)
        await w.fake.delete_message(victim)
        new = await w.fake.post_message(
            w.channel,
            w.bob,
            attachments=[("n.png", png(world.make_image("green", "circle", 1234)), "image/png")],
        )
        await w.fake.wait_for(lambda: any(numbers_of_index(w, new.id)))
        second = await run_find(w, w.channel, w.alice, query="a green circle", k=9)
        assert victim_id not in numbers(second) and str(new.id) in numbers(second)
        assert (
            w.fake.count_requests("GET", r"/channels/\d+/messages$") - history <= 1
        )  # only "anything newer?"
    assert posted


def numbers_of_index(w, message_id):
    db = sqlite3.connect(w.tmp / "index.sqlite3")
    try:
        return [r for r in db.execute("SELECT key FROM items WHERE key LIKE ?", (f"{message_id}/%",))]
    finally:
        db.close()


async def test_an_edit_reindexes_the_message(w):
    red, blue = world.make_image("red", "circle", 5), world.make_image("blue", "square", 6)
    others = [s for s in world.samples(24, seed=21) if s.colour != "blue"][:8]
    await post_samples(w, w.channel, others, [w.alice])
    # A link to a picture elsewhere: Discord embeds it, and its media proxy serves a copy.
    message = await w.fake.post_message(
        w.channel, w.alice, embeds=[w.fake.image_embed("https://pics.example/red.png", png(red), "image/png")]
    )
    async with find_bot(w) as bot:
        await run_find(w, w.channel, w.alice, query="a red circle", k=3)
        index = bot.get_cog("Find").index
        scope = f"discord:{w.guild.id}:{w.channel.id}"
        before = index.items(scope)[f"{message.id}/e0"][0]
        blue_embed = w.fake.image_embed("https://pics.example/blue.png", png(blue), "image/png")
        await w.fake.edit_message(message, embeds=[blue_embed])
        await w.fake.wait_for(lambda: index.items(scope).get(f"{message.id}/e0", (before,))[0] != before)
        reply = await run_find(w, w.channel, w.alice, query="a blue square", k=3)
        assert numbers(reply)[0] == str(message.id)


async def test_a_killed_scan_resumes_without_duplicates(w):
    samples = list(world.samples(250, seed=31))
    await post_samples(w, w.channel, samples, [w.alice, w.bob])
    async with find_bot(w) as bot:
        find = bot.get_cog("Find")
        scope = f"discord:{w.guild.id}:{w.channel.id}"
        task = asyncio.create_task(find.discord_index.scan(bot.get_channel(w.channel.id)))
        await w.fake.wait_for(lambda: find.index.count(scope) >= 100 or task.done(), timeout=60)
        task.cancel()  # the crash: the scan dies between (or inside) pages
        await asyncio.gather(task, return_exceptions=True)
        kept = find.index.count(scope)
        assert find.index.scan_state(scope).newest is not None
        report = await find.discord_index.scan(bot.get_channel(w.channel.id))
        assert report.indexed == 250 - kept  # nothing indexed twice
        assert find.index.count(scope) == 250 and find.index.scan_state(scope).complete


def _bad_corpus() -> list[tuple[str, bytes, str]]:
    from tests.bot.conftest import bomb

    def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format=fmt, **kw)
        return buf.getvalue()

    red = world.make_image("red", "circle", 3)
    jpeg = encoded(red, "JPEG")
    frames = [world.make_image("blue", "square", 4), world.make_image("green", "circle", 5)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    sixteen = Image.fromarray(np.asarray(red.convert("L"), dtype=np.uint16) * 257)  # mode I;16
    return [
        ("truncated.jpg", jpeg[: len(jpeg) // 3], "image/jpeg"),
        ("empty.png", b"", "image/png"),
        ("page.png", b"<!doctype html><title>not an image</title>", "image/png"),
        ("bomb.png", bomb(), "image/png"),
        ("cmyk.jpg", encoded(red.convert("CMYK"), "JPEG"), "image/jpeg"),
        ("deep.png", encoded(sixteen, "PNG"), "image/png"),
        ("anim.gif", gif.getvalue(), "image/gif"),
        ("pic.webp", encoded(red, "WEBP"), "image/webp"),
    ]


async def test_bad_attachments_are_skipped_and_counted(w):
    for name, data, ctype in _bad_corpus():
        await w.fake.post_message(w.channel, w.alice, attachments=[(name, data, ctype)])
    async with find_bot(w) as bot:
        find = bot.get_cog("Find")
        report = await find.discord_index.scan(bot.get_channel(w.channel.id))
        assert report.bad == 4 and report.indexed == 4, report
        reply = await run_find(w, w.channel, w.alice, query="a blue square", k=4)  # the GIF's first frame
        gif_message = next(
            m
            for m in w.fake.channel_messages(w.channel)
            if m.attachments and m.attachments[0].filename == "anim.gif"
        )
        assert numbers(reply)[0] == str(gif_message.id)


async def test_progress_image_query_and_more_like(w):
    samples = list(world.samples(150, seed=41))
    posted = await post_samples(w, w.channel, samples, [w.alice, w.bob])
    async with find_bot(w):
        rec = await w.fake.invoke_slash("find", user=w.alice, channel=w.channel, query="a yellow triangle")
        progress = await w.fake.wait_for(
            lambda: rec.original if rec.original and rec.original.content.startswith("Indexing") else None, 60
        )
        assert "images from" in progress.content
        first = await w.fake.wait_for(lambda: rec.original if rec.original.embeds else None, 60)
        # an image as the query: a fresh yellow triangle finds yellow triangles
        probe = png(world.make_image("yellow", "triangle", 99))
        by_image = await run_find(w, w.channel, w.alice, image=("q.png", probe, "image/png"))
        labels = [posted[i].label for i in numbers(by_image)]
        assert labels[0] == "yellow triangle" and sum(lb == "yellow triangle" for lb in labels) >= 6, labels
        like = await w.fake.click(first, "More like #1", user=w.alice)
        similar = await w.fake.wait_for(
            lambda: like.original if like.original and like.original.embeds else None
        )
        like_labels = [posted[i].label for i in numbers(similar)]
        assert numbers(first)[0] not in numbers(similar)  # the example itself is left out
        assert sum(lb == posted[numbers(first)[0]].label for lb in like_labels) >= 6, like_labels


async def test_excluded_channels_are_never_scanned_or_shown(w):
    hidden = w.fake.add_channel(w.guild, "private-art")
    by_config = w.fake.add_channel(w.guild, "secret-art")
    for place in (hidden, by_config, w.channel):
        await post_samples(w, place, list(world.samples(6, seed=51)), [w.alice])
    admin_role = w.fake.add_role(w.guild, "admins", permissions=1 << 5)  # manage server
    admin = w.fake.add_member(w.guild, "ada", roles=[admin_role])
    async with find_bot(w, guilds={str(w.guild.id): {"find_excluded": [str(by_config.id)]}}):
        rec = await w.fake.invoke_slash("find-exclude", user=admin, channel=w.channel, target=hidden)
        await rec.wait_followups(1)
        assert "kept out" in rec.followups[-1].content
        history_before = {
            ch.id: w.fake.count_requests("GET", rf"/channels/{ch.id}/messages$") for ch in (hidden, by_config)
        }
        reply = await run_find(w, w.channel, w.alice, query="a red circle", scope="server", k=9)
        shown = set(numbers(reply))
        for ch in (hidden, by_config):
            assert not shown & {str(m.id) for m in w.fake.channel_messages(ch)}
            assert w.fake.count_requests("GET", rf"/channels/{ch.id}/messages$") == history_before[ch.id]


async def test_a_model_change_reembeds_lazily_from_fresh_links(w):
    await post_samples(w, w.channel, list(world.samples(10, seed=61)), [w.alice])
    scope = f"discord:{w.guild.id}:{w.channel.id}"
    async with find_bot(w) as bot:
        find = bot.get_cog("Find")
        assert (await find.discord_index.scan(bot.get_channel(w.channel.id))).indexed == 10
        model_id = await bot.manager.model_id()
    db = sqlite3.connect(w.tmp / "index.sqlite3")
    with db:
        db.execute("UPDATE vectors SET model_id = 'an-older-clip'")  # as if made by another model
    db.close()
    w.fake.clock.advance(3 * 24 * 3600)  # every link the first bot saw has expired since
    async with find_bot(w) as bot:
        find = bot.get_cog("Find")
        reply = await run_find(w, w.channel, w.alice, query="a red circle", k=9)
        assert len(numbers(reply)) == 9
        assert find.index.missing_for_model(scope, model_id) == [] and find.index.count(scope) == 10
    # The messages were fetched again for links signed now: no expired link was ever tried.
    assert w.fake.count_requests("GET", r"^/(cdn|media)/", status=404) == 0


async def test_answers_come_from_thumbnails_after_links_expire(w):
    await post_samples(w, w.channel, list(world.samples(12, seed=62)), [w.alice])
    async with find_bot(w) as bot:
        await run_find(w, w.channel, w.alice, query="a red circle", k=9)  # indexes the channel
        w.fake.clock.advance(2 * 24 * 3600)
        downloads = w.fake.count_requests("GET", r"^/(cdn|media|external)/")
        reply = await run_find(w, w.channel, w.alice, query="a green circle", k=9)
        assert w.fake.count_requests("GET", r"^/(cdn|media|external)/") == downloads  # none at query time
        sheet = Image.open(io.BytesIO(reply.attachments[0].data)).convert("RGB")
        for i in range(9):  # every cell holds a picture, not the grey of a failed download
            x, y = (i % 3) * 128 + 64, (i // 3) * 128 + 64
            assert sheet.getpixel((x, y)) != BACKGROUND, i
        find = bot.get_cog("Find")
        scope = f"discord:{w.guild.id}:{w.channel.id}"
        for key in find.index.items(scope):
            thumb = find.index.thumbnail(scope, key)
            assert thumb is not None and max(Image.open(io.BytesIO(thumb)).size) <= 256


async def test_more_like_on_an_old_answer_after_a_model_change_and_expired_links(w):
    posted = await post_samples(w, w.channel, list(world.samples(30, seed=63)), [w.alice])
    async with find_bot(w):
        old = await run_find(w, w.channel, w.alice, query="a yellow triangle", k=9)
    db = sqlite3.connect(w.tmp / "index.sqlite3")
    with db:
        db.execute("UPDATE vectors SET model_id = 'an-older-clip'")
    db.close()
    w.fake.clock.advance(3 * 24 * 3600)
    async with find_bot(w):  # a restart with a new model: the old answer's buttons still work
        like = await w.fake.click(old, "More like #1", user=w.alice)
        similar = await w.fake.wait_for(
            lambda: like.original if like.original and like.original.embeds else None, 60
        )
    first = posted[numbers(old)[0]].label
    labels = [posted[i].label for i in numbers(similar)]
    assert similar.ephemeral and sum(lb == first for lb in labels) >= 3, labels
    assert w.fake.count_requests("GET", r"^/(cdn|media)/", status=404) == 0


async def test_items_indexed_without_thumbnails_get_them_from_fresh_links(w):
    await post_samples(w, w.channel, list(world.samples(9, seed=64)), [w.alice])
    async with find_bot(w) as bot:
        await bot.get_cog("Find").discord_index.scan(bot.get_channel(w.channel.id))
    db = sqlite3.connect(w.tmp / "index.sqlite3")
    with db:
        db.execute("DELETE FROM thumbs")  # as an index made before thumbnails were kept
    db.close()
    w.fake.clock.advance(2 * 24 * 3600)  # and the links it saw have expired
    before = w.fake.count_requests("GET", r"^/(cdn|media)/", status=200)
    async with find_bot(w):
        reply = await run_find(w, w.channel, w.alice, query="a red circle", k=9)
        sheet = Image.open(io.BytesIO(reply.attachments[0].data)).convert("RGB")
        assert all(sheet.getpixel(((i % 3) * 128 + 64, (i // 3) * 128 + 64)) != BACKGROUND for i in range(9))
        downloads = w.fake.count_requests("GET", r"^/(cdn|media)/", status=200)
        assert downloads - before == 9 and w.fake.count_requests("GET", r"^/(cdn|media)/", status=404) == 0
        await run_find(w, w.channel, w.alice, query="a blue square", k=9)
        assert w.fake.count_requests("GET", r"^/(cdn|media)/", status=200) == downloads  # kept this time
