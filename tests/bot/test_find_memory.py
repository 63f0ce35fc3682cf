"""/find keeps memory and the event loop free: few decodes at once, images reduced while decoding, and
every SQLite, numpy and PIL call in a worker thread."""

from __future__ import annotations

import sys
import threading

from bot.find._scan import in_flight_bound
from iris.images import load_image
from tests.bot.test_find import find_bot, numbers, run_find
from tests.photos import MB, corpus


async def test_photos_are_decoded_few_at_a_time_and_small(w, photos, monkeypatch):
    specs = corpus(6, seed=3, max_bytes=MB)
    for spec in specs:
        await w.fake.post_message(w.channel, w.alice, attachments=[photos.attachment(spec)])
    decode = load_image
    lock, busy, most, sizes = threading.Lock(), [0], [0], []
    held, most_held = [0], [0]  # files from the start of their download to the end of their decode

    def spy(*args, **kwargs):  # the real decoder, watched: how many run at once, what comes out
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        try:
            image = decode(*args, **kwargs)
            sizes.append(image.size)
            return image
        finally:
            with lock:
                busy[0] -= 1
                held[0] -= 1

    async with find_bot(
        w, max_bytes=8 * MB, find_decode_concurrency=1, find_download_concurrency=1, find_downloads_per_s=100
    ) as bot:
        index = bot.get_cog("Find").discord_index
        # The module the loaded extension uses (each load imports it afresh).
        monkeypatch.setattr(sys.modules[type(index).__module__], "load_image", spy)
        download = index.downloader.download

        async def counted(ref):  # the real download, counted
            with lock:
                held[0] += 1
                most_held[0] = max(most_held[0], held[0])
            return await download(ref)

        index.downloader.download = counted
        report = await index.scan(bot.get_channel(w.channel.id))
    assert report.indexed == 6, report.problems
    assert most[0] == 1 and most_held[0] <= in_flight_bound(1, 1) < 6  # no pile of files to decode
    assert len(sizes) == 6 and all(min(s) == 224 and max(s) <= 4 * 224 for s in sizes), sizes


async def test_index_work_never_runs_on_the_event_loop(w, photos):
    for spec in corpus(3, seed=4, max_bytes=2 * MB):
        await w.fake.post_message(w.channel, w.alice, attachments=[photos.attachment(spec)])
    async with find_bot(w, max_bytes=8 * MB) as bot:
        find = bot.get_cog("Find")
        count = find.index.count  # for the test's own look, unwatched
        loop_thread = threading.current_thread()
        on_loop: list[str] = []
        for name in dir(find.index):
            method = getattr(find.index, name)
            if name.startswith("_") or not callable(method) or name == "close":
                continue

            def watched(*args, _method=method, _name=name, **kwargs):
                if threading.current_thread() is loop_thread:
                    on_loop.append(_name)
                return _method(*args, **kwargs)

            setattr(find.index, name, watched)  # the real method, watched
        reply = await run_find(w, w.channel, w.alice, query="a photo of mountains", k=3)
        more = await w.fake.click(reply, "More like #1", user=w.alice)
        await w.fake.wait_for(lambda: more.original if more.original and more.original.embeds else None)
        await w.fake.post_message(w.channel, w.bob, attachments=[photos.attachment(corpus(1, seed=5)[0])])
        await w.fake.wait_for(lambda: count() == 4, timeout=30)
    assert len(numbers(reply)) == 3
    assert on_loop == []
