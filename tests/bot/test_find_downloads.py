"""/find's downloads: whole files in pieces, a running size cap, and only Discord's own media hosts."""

from __future__ import annotations

import asyncio
import io
import socket

import pytest
from aiohttp import web
from PIL import Image

from bot.find._download import Downloader, ImageRef
from iris.config import Config
from iris.errors import BadImage
from iris.images import ImageLimits
from models.toy import world
from tests.bot.conftest import png
from tests.bot.test_find import find_bot, numbers, run_find
from tests.photos import MB, ODD, PhotoSpec


def _scope(w, channel=None) -> str:
    return f"discord:{w.guild.id}:{(channel or w.channel).id}"


async def test_a_big_photo_arriving_in_pieces_is_indexed_whole(w, photos):
    spec = ODD["exif_rotated"]  # 2048 × 1536 JPEG, about 1 MB, shown rotated
    message = await w.fake.post_message(w.channel, w.alice, attachments=[photos.attachment(spec)])
    assert w.fake.cdn.chunk_bytes < len(photos.get(spec)) // 10  # served in many small, delayed pieces
    async with find_bot(w, max_bytes=8 * MB) as bot:
        find = bot.get_cog("Find")
        report = await find.discord_index.scan(bot.get_channel(w.channel.id))
        assert (report.indexed, report.bad) == (1, 0), report.problems
        key = f"{message.id}/{message.attachments[0].id}"
        thumb = Image.open(io.BytesIO(find.index.thumbnail(_scope(w), key)))
        assert thumb.format == "WEBP" and thumb.size == (192, 256)  # portrait: EXIF orientation applied
        assert len(find.index.thumbnail(_scope(w), key)) < 12_000  # a few KB


async def test_a_download_stops_at_the_cap(w, photos):
    big = photos.get(PhotoSpec(7, 1600, 1200, 700_000))  # over the 400 kB cap, size unknown (an embed)
    embed = w.fake.image_embed("https://pics.example/huge.jpg", big)
    await w.fake.post_message(w.channel, w.alice, embeds=[embed])
    async with find_bot(w) as bot:
        report = await bot.get_cog("Find").discord_index.scan(bot.get_channel(w.channel.id))
    assert report.bad == 1 and "too large" in report.problems[0], report.problems
    await w.fake.wait_for(lambda: w.fake.cdn.cut_short >= 1)  # it stopped reading, past the cap


async def test_nothing_outside_discord_is_contacted(w, outside):
    red, blue = png(world.make_image("red", "circle", 1)), png(world.make_image("blue", "square", 2))
    direct = outside.put("/cat.png", red, "image/png")
    redirected = outside.put("/dog.png", red, "image/png")
    embeds = [
        # A link preview without Discord's proxy: the original URL is never used.
        {"type": "image", "url": direct, "thumbnail": {"url": direct}},
        # Discord's proxy answers with a redirect to the outside host: not followed.
        w.fake.image_embed(outside.url("/dog.png"), red, "image/png", proxy_redirect_to=redirected),
        # A "proxy" that is not on the allow-list.
        {"type": "rich", "image": {"url": direct, "proxy_url": direct}},
    ]
    for embed in embeds:
        await w.fake.post_message(w.channel, w.alice, embeds=[embed])
    good = await w.fake.post_message(
        w.channel, w.alice, embeds=[w.fake.image_embed("https://pics.example/sq.png", blue, "image/png")]
    )
    async with find_bot(w) as bot:
        find = bot.get_cog("Find")
        report = await find.discord_index.scan(bot.get_channel(w.channel.id))
        reply = await run_find(w, w.channel, w.alice, query="a blue square", k=3)
    assert outside.hits == []
    assert report.indexed == 1 and numbers(reply) == [str(good.id)]


async def test_production_downloads_are_https_from_discord_only():
    downloader = Downloader(Config().discord.find_allowed_hosts, ImageLimits(), 1, 1.0, 5.0)
    assert downloader.allows("https://cdn.discordapp.com/attachments/1/2/a.png?ex=1")
    assert downloader.allows("https://media.discordapp.net/attachments/1/2/a.png?width=400")
    assert downloader.allows("https://images-ext-1.discordapp.net/external/x/https/example.com/a.png")
    for url in (
        "http://cdn.discordapp.com/attachments/1/2/a.png",  # not https
        "https://cdn.discordapp.com:8443/a.png",
        "https://169.254.169.254/latest/meta-data",
        "https://cdn.discordapp.com.evil.example/a.png",
        "https://discordapp.net.evil.example/a.png",
        "https://127.0.0.1/a.png",
        "file:///etc/passwd",
    ):
        assert not downloader.allows(url), url
        try:
            await downloader.download(ImageRef("1/2", url, None, None))
        except BadImage as e:
            assert "not on Discord's media hosts" in e.message
        else:
            raise AssertionError(url)
    tests = Downloader(["http://127.0.0.1:8080"], ImageLimits(), 1, 1.0, 5.0)
    assert tests.allows("http://127.0.0.1:8080/cdn/x.png") and not tests.allows("http://127.0.0.1:8081/x.png")
    await downloader.close()


async def test_a_declared_length_over_the_cap_is_refused_before_reading():
    release = asyncio.Event()

    async def huge(request):  # declares 10 MB, sends 1 KB, then stalls
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.content_length = 10_000_000
        await response.prepare(request)
        await response.write(b"\xff\xd8\xff" + b"\0" * 1021)
        await release.wait()
        return response

    app = web.Application()
    app.router.add_get("/big.jpg", huge)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    downloader = Downloader([f"http://127.0.0.1:{port}"], ImageLimits(max_bytes=400_000), 1, 1.0, 20.0)
    try:
        with pytest.raises(BadImage) as refused:
            await asyncio.wait_for(
                downloader.download(ImageRef("1/2", f"http://127.0.0.1:{port}/big.jpg", None, None)), 10
            )
        assert "9.5 MiB" in refused.value.message  # the declared length, not what had arrived
    finally:
        release.set()
        await downloader.close()
        await runner.cleanup()
