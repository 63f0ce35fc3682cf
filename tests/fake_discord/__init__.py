"""A local fake Discord (REST API v10 + gateway) that the real, unmodified discord.py client talks to.

async with FakeDiscord() as fake:
    guild = fake.add_guild("Iris test")
    channel = fake.add_channel(guild, "general")
    alice = fake.add_member(guild, "alice")
    async with fake.run_bot(bot):
        interaction = await fake.invoke_slash("echo", user=alice, channel=channel, text="hi")
        reply = await interaction.wait_original()

Attachments are served by a CDN that behaves like Discord's (see cdn.py): signed links that expire on the
fake clock (a message fetched again carries fresh ones), files sent chunked in small delayed pieces, and a
media proxy for embed images whose original URL is on another host (`fake.image_embed`, `OutsideHost`).
"""

from .cdn import GONE, Cdn
from .clock import FakeClock
from .interactions import InteractionRecord
from .models import Attachment, Channel, Guild, Member, Message, Role, User
from .outside import OutsideHost
from .server import DEFAULT_ATTACHMENT_SIZE_LIMIT, FakeDiscord, RequestRecord

__all__ = [
    "DEFAULT_ATTACHMENT_SIZE_LIMIT",
    "GONE",
    "Attachment",
    "Cdn",
    "Channel",
    "FakeClock",
    "FakeDiscord",
    "Guild",
    "InteractionRecord",
    "Member",
    "Message",
    "OutsideHost",
    "RequestRecord",
    "Role",
    "User",
]
