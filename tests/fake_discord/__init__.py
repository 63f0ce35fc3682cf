"""A local fake Discord (REST API v10 + gateway) that the real, unmodified discord.py client talks to.

async with FakeDiscord() as fake:
    guild = fake.add_guild("Iris test")
    channel = fake.add_channel(guild, "general")
    alice = fake.add_member(guild, "alice")
    async with fake.run_bot(bot):
        interaction = await fake.invoke_slash("echo", user=alice, channel=channel, text="hi")
        reply = await interaction.wait_original()
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
