"""Four-up (`/imagine … count:4`) through the fake Discord with the real toy models: one job, one grid,
U1–U4 and V1–V4 buttons that work from the journal (after a restart too), and the Upscale button."""

from __future__ import annotations

import io

from PIL import Image, ImageChops

from iris.grid import cell
from tests.bot.conftest import StepGate, final_of, title


def buttons_of(message) -> list[str]:
    return [c["label"] for c in message.walk_components() if c.get("type") == 2]


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getbbox() is None


async def test_four_up_is_one_job_one_grid_with_u_and_v_buttons(w):
    overrides = {str(w.guild.id): {"max_queued_per_user": 0}}  # cap 1: one job queued or running
    async with w.bot(guilds=overrides) as bot:
        gate = StepGate(3)
        bot.manager.step_hook = gate
        rec = await w.fake.invoke_slash(
            "imagine", user=w.alice, channel=w.channel, prompt="a red circle", count=4, seed=7
        )
        await w.fake.wait_for(lambda: "step 2/32" in title(rec.original), timeout=30)  # the group's progress
        assert bot.manager.status().running.total == 32 and bot.manager.status().queue_length == 0
        gate.allow()
        final = await final_of(w.fake, rec, timeout=60)
        assert buttons_of(final) == ["U1", "U2", "U3", "U4", "V1", "V2", "V3", "V4"]
        grid = Image.open(io.BytesIO(final.attachments[0].data))
        assert grid.size == (128, 128)
        cells = [cell(grid, i, 4) for i in range(1, 5)]
        assert len({c.tobytes() for c in cells}) == 4  # four different pictures (different seeds)
        job_id = final.find_component("U1")["custom_id"].rsplit(":", 1)[1]
        assert bot.manager.journal.get(job_id).seed == 7
        finals = [m for m in w.fake.channel_messages(w.channel) if m.attachments]
        assert finals == [final]  # one message, not four

        u2 = await w.fake.click(final, "U2", user=w.bob)
        alone = (await u2.wait_followups(1, timeout=30))[-1]
        picture = Image.open(io.BytesIO(alone.attachments[0].data))
        assert same_pixels(picture, cells[1]) and picture.size == (64, 64)
        assert {f["name"]: f["value"] for f in alone.embeds[0]["fields"]}["Seed"] == "8"
        assert set(buttons_of(alone)) == {"Upscale", "V2"}
    async with w.bot(guilds=overrides) as bot:  # a restart: the buttons answer from the journal
        gate = StepGate(0)
        bot.manager.step_hook = gate
        v3 = await w.fake.click(final, "V3", user=w.alice)
        await w.fake.wait_for(lambda: bot.manager.status().running is not None, timeout=30)
        new_id = bot.manager.status().running.id
        entry = bot.manager.journal.get(new_id)
        assert new_id != job_id and entry.request.count == 4 and entry.request.seed is None
        init = Image.open(io.BytesIO(entry.request.init_image))
        assert same_pixels(init, cells[2])
        gate.allow()
        assert buttons_of(await final_of(w.fake, v3, timeout=60))[0] == "U1"


async def test_a_count_other_than_1_or_4_is_refused_privately(w):
    async with w.bot() as bot:
        request = bot.manager.engine.request("a red circle", count=4)
        assert request.count == 4
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="x", count=3)
        await rec.wait_response()
        assert rec.ephemeral


async def test_upscale_button_lanczos_fallback_is_labelled_and_doubles_the_side(w):
    async with w.bot():
        rec = await w.fake.invoke_slash("imagine", user=w.alice, channel=w.channel, prompt="a blue square")
        final = await final_of(w.fake, rec, timeout=60)
        assert "Upscale" in buttons_of(final)
        up = await w.fake.click(final, "Upscale", user=w.bob)
        msg = (await up.wait_followups(1, timeout=30))[-1]
        fields = {f["name"]: f["value"] for f in msg.embeds[0]["fields"]}
        assert fields["Method"] == "upscaled with Lanczos (no super-resolution model installed)"
        big = Image.open(io.BytesIO(msg.attachments[0].data))
        assert big.size == (128, 128) and msg.embeds[0]["title"] == "Upscaled to 128×128"


async def test_upscale_of_a_grid_picture_with_an_esrgan_network(w, tmp_path):
    import dataclasses

    import torch
    from spandrel.architectures.ESRGAN import ESRGAN

    from bot.app import IrisBot
    from tests.conftest import engine_for

    torch.manual_seed(0)
    weights = tmp_path / "tiny-esrgan-x2.pth"
    torch.save(ESRGAN(num_filters=8, num_blocks=1, scale=2).state_dict(), weights)  # random, tiny
    cfg = w.config()
    cfg = dataclasses.replace(cfg, imagine=dataclasses.replace(cfg.imagine, upscaler=str(weights)))
    bot = IrisBot(cfg, engine_for(cfg, w.shared), guild_ready_timeout=0.1)
    async with w.fake.run_bot(bot):
        rec = await w.fake.invoke_slash(
            "imagine", user=w.alice, channel=w.channel, prompt="a red circle", count=4, steps=2
        )
        final = await final_of(w.fake, rec, timeout=60)
        u4 = await w.fake.click(final, "U4", user=w.alice)
        alone = (await u4.wait_followups(1, timeout=30))[-1]
        up = await w.fake.click(alone, "Upscale", user=w.alice)
        msg = (await up.wait_followups(1, timeout=30))[-1]
        fields = {f["name"]: f["value"] for f in msg.embeds[0]["fields"]}
        assert "ESRGAN ×2" in fields["Method"] and "Lanczos" not in fields["Method"]
        assert Image.open(io.BytesIO(msg.attachments[0].data)).size == (128, 128)
