"""The bot tests' world: a fake Discord server with members, and a factory for bots logged in to it."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from PIL import Image

from bot.app import IrisBot
from iris.config import parse_config
from tests.conftest import engine_for
from tests.fake_discord import FakeDiscord, OutsideHost
from tests.fake_discord.models import MANAGE_MESSAGES
from tests.photos import cached_photos

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class World:
    fake: FakeDiscord
    guild: object
    channel: object
    alice: object
    bob: object
    mod: object
    tmp: Path
    shared: object
    index_url: str | None = None  # set: the bots' /find index is on this PostgreSQL database

    def config(self, **discord_overrides):
        data = yaml.safe_load((ROOT / "config.toy.yaml").read_text())
        data["discord"] = {
            "dev_guilds": [str(self.guild.id)],
            "edits_per_window": 4,
            "edit_window_s": 1.0,
            **discord_overrides,
        }
        data["manager"] = {"journal_path": str(self.tmp / "jobs.sqlite3"), "close_grace_s": 0.0}
        data["imagine"].update(steps=8, preview_every=2)
        data["images"] = {"max_bytes": 400_000}
        data["index"] = {"path": str(self.tmp / "index.sqlite3"), "url": self.index_url}
        data["data_dir"] = str(self.tmp)  # the heartbeat and any other state stay in the test's folder
        data["settings"] = {"path": str(self.tmp / "settings.sqlite3")}
        return parse_config(data)

    @asynccontextmanager
    async def bot(self, **discord_overrides):
        cfg = self.config(**discord_overrides)
        bot = IrisBot(cfg, engine_for(cfg, self.shared), guild_ready_timeout=0.1)
        async with self.fake.run_bot(bot):
            yield bot


@pytest.fixture
async def w(tmp_path, toy_engine):
    async with FakeDiscord() as fake:
        guild = fake.add_guild("Shapes")
        channel = fake.add_channel(guild, "art")
        mod_role = fake.add_role(guild, "mods", permissions=MANAGE_MESSAGES)
        yield World(
            fake,
            guild,
            channel,
            fake.add_member(guild, "alice"),
            fake.add_member(guild, "bob"),
            fake.add_member(guild, "mia", roles=[mod_role]),
            tmp_path,
            toy_engine,
        )


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def bomb() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


class StepGate:
    """Holds the generation worker before each step until the test allows more steps."""

    def __init__(self, allowed: int = 0) -> None:
        self.allowed = allowed
        self.done = 0
        self._cv = threading.Condition()

    def __call__(self, gen) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self.done < self.allowed, timeout=60)
            self.done += 1

    def allow(self, n: int = 10_000) -> None:
        with self._cv:
            self.allowed = self.done + n
            self._cv.notify_all()


def title(message) -> str:
    return message.embeds[0].get("title", "") if message and message.embeds else ""


def has_button(message, label: str) -> bool:
    return bool(message) and any(c.get("label") == label for c in message.walk_components())


def is_final(message) -> bool:
    return bool(message and message.attachments and message.attachments[0].filename.startswith("iris-"))


def posted_final(w):
    """The first finished picture in the channel sent as a plain channel message (not through the token)."""
    return next((m for m in w.fake.channel_messages(w.channel) if is_final(m) and m.webhook_id is None), None)


async def final_of(fake, record, timeout=30.0):
    return await fake.wait_for(lambda: record.original if is_final(record.original) else None, timeout)


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """Realistic photos (tests/photos.py), each generated once per test run."""
    return cached_photos(tmp_path_factory)


@pytest.fixture
async def outside():
    """A host outside Discord that counts every request (`outside.hits`), for embeds that point at it."""
    async with OutsideHost() as host:
        yield host
