"""What /classify takes as an image and as labels: one rule for each, shared with the rest of Iris."""

from __future__ import annotations

import pytest

from iris.images import looks_like_image
from models.toy import world
from tests.bot.conftest import png


@pytest.mark.parametrize(
    "filename,content_type,is_image",
    [
        ("a.png", "image/png", True),
        ("photo.PNG", None, True),  # some uploads come without a content type
        ("blob", "image/webp; charset=binary", True),
        ("clip.mp4", "video/mp4", False),  # a video has a width too, yet is no image
        ("notes.txt", "text/plain", False),
        (None, None, False),
    ],
)
def test_one_rule_says_what_looks_like_an_image(filename, content_type, is_image):
    assert looks_like_image(filename, content_type) is is_image


async def test_the_classify_menu_takes_an_image_without_a_content_type(w):
    async with w.bot():
        posted = await w.fake.post_message(
            w.channel, w.bob, attachments=[("x.png", png(world.make_image("yellow", "triangle", 8)))]
        )
        rec = await w.fake.invoke_context_menu("Classify image", posted, user=w.alice)
        reply = await rec.wait_original()
        assert reply.embeds and reply.embeds[0]["description"].splitlines()[0].endswith("yellow triangle")


async def test_no_labels_is_answered_without_talking_about_command_line_flags(w):
    async with w.bot():
        image = ("a.png", png(world.sample(1).image), "image/png")
        rec = await w.fake.invoke_slash(
            "classify", user=w.alice, channel=w.channel, image=image, labels=", ,"
        )
        reply = await rec.wait_original()
        assert rec.ephemeral and "at least one label" in reply.content and "--labels" not in reply.content
