"""/find's scans run in the background, apart from any interaction; a delete that races one always wins."""

from __future__ import annotations

import asyncio
import contextlib

from bot.find._tasks import Tasks
from models.toy import world
from tests.bot.conftest import png
from tests.bot.test_find import find_bot, numbers, post_samples, run_find


async def test_a_delete_during_a_slow_download_wins(w):
    await post_samples(w, w.channel, list(world.samples(8, seed=81)), [w.alice])
    data = png(world.make_image("green", "circle", 4321))
    victim = await w.fake.post_message(w.channel, w.bob, attachments=[("v.png", data, "image/png")])
    key = f"{victim.id}/{victim.attachments[0].id}"
    scope = f"discord:{w.guild.id}:{w.channel.id}"
    started, release = asyncio.Event(), asyncio.Event()
    serve = w.fake.cdn.send

    async def slow_send(request, body, *args, **kwargs):  # the CDN stalls on the victim's file
        if body == data:
            started.set()
            await release.wait()
        return await serve(request, body, *args, **kwargs)

    w.fake.cdn.send = slow_send
    async with find_bot(w) as bot:
        find = bot.get_cog("Find")
        scan = asyncio.create_task(find.discord_index.scan(bot.get_channel(w.channel.id)))
        await asyncio.wait_for(started.wait(), 30)
        await w.fake.delete_message(victim)  # while the scan is downloading it
        # The bot has seen the delete (a build that keeps no record of it goes on after 5 s, to show the
        # image coming back).
        with contextlib.suppress(TimeoutError):
            await w.fake.wait_for(lambda: key in find.index.known(scope, [key]), timeout=5)
        release.set()
        report = await scan
        assert report.indexed == 8 and key not in find.index.items(scope)
        reply = await run_find(w, w.channel, w.alice, query="a green circle", k=9)
        assert str(victim.id) not in numbers(reply)


async def test_a_server_scan_runs_in_the_background_and_refresh_shows_the_rest(w):
    rooms = [w.channel, w.fake.add_channel(w.guild, "memes"), w.fake.add_channel(w.guild, "misc")]
    for n, room in enumerate(rooms):
        await post_samples(w, room, list(world.samples(30, seed=90 + n)), [w.alice, w.bob])
    w.fake.cdn.delay_s = 0.02
    w.fake.cdn.chunk_bytes = 512  # a slow CDN: a scan takes seconds
    async with find_bot(w, find_answer_after_s=0.3) as bot:
        find = bot.get_cog("Find")
        rec = await w.fake.invoke_slash(
            "find", user=w.alice, channel=w.channel, query="a red circle", scope="server", k=9
        )
        first = await w.fake.wait_for(
            lambda: rec.original if rec.original and "Still indexing" in rec.original.content else None, 30
        )
        assert first.ephemeral and "channels left" in first.content
        assert any(c["label"] == "Refresh" for row in first.components for c in row["components"])
        assert find.discord_index.scans  # the scans go on after the answer
        await w.fake.wait_for(lambda: not find.discord_index.scans, timeout=120)
        assert find.index.count() == 90
        refresh = await w.fake.click(first, "Refresh", user=w.alice)
        await refresh.wait_response()
        done = await w.fake.wait_for(
            lambda: first if first.embeds and "Still indexing" not in (first.content or "") else None, 30
        )
        assert len(numbers(done)) == 9
        assert not any(c["label"] == "Refresh" for row in done.components for c in row["components"])


async def test_closing_the_bot_cancels_its_scans(w):
    await post_samples(w, w.channel, list(world.samples(40, seed=95)), [w.alice])
    w.fake.cdn.delay_s = 0.05
    w.fake.cdn.chunk_bytes = 256
    async with find_bot(w) as bot:
        index = bot.get_cog("Find").discord_index
        tasks = index.start_scans([bot.get_channel(w.channel.id)])
        await asyncio.sleep(0.2)
        assert not tasks[0].done()
    assert tasks[0].cancelled() and not index.scans and len(index.tasks) == 0


async def test_background_tasks_are_kept_logged_and_cancelled(caplog):
    tasks = Tasks()

    async def broken():
        raise ValueError("a bug")

    failing = tasks.spawn(broken(), "scan of discord:1:2")
    forever = tasks.spawn(asyncio.Event().wait(), "scan of discord:1:3")
    await asyncio.wait({failing})
    await asyncio.sleep(0)
    assert len(tasks) == 1  # kept until done; the failed one is gone, and logged with its traceback
    assert any(
        r.levelname == "ERROR" and "scan of discord:1:2 failed" in r.getMessage() for r in caplog.records
    )
    await tasks.close()
    assert forever.cancelled() and len(tasks) == 0
