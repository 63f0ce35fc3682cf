"""The things a fake guild holds, and their JSON as Discord's API v10 writes them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cdn import Cdn

DISCORD_EPOCH_MS = 1_420_070_400_000

# Permission bits (https://discord.com/developers/docs/topics/permissions).
ADMINISTRATOR = 1 << 3
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
USE_EXTERNAL_EMOJIS = 1 << 18
CONNECT = 1 << 20
SPEAK = 1 << 21
CHANGE_NICKNAME = 1 << 26
USE_APPLICATION_COMMANDS = 1 << 31
CREATE_PUBLIC_THREADS = 1 << 35
SEND_MESSAGES_IN_THREADS = 1 << 38
ALL_PERMISSIONS = (1 << 53) - 1
DEFAULT_PERMISSIONS = (
    VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | ADD_REACTIONS
    | USE_EXTERNAL_EMOJIS
    | CONNECT
    | SPEAK
    | CHANGE_NICKNAME
    | USE_APPLICATION_COMMANDS
    | CREATE_PUBLIC_THREADS
    | SEND_MESSAGES_IN_THREADS
)

# Channel types; the names are what `add_channel(type=...)` accepts ("dm" comes from open_dm).
CHANNEL_TYPES = {
    "dm": 1,
    "text": 0,
    "category": 4,
    "forum": 15,
    "thread": 11,
    "private_thread": 12,
    "forum_post": 11,
}
THREAD_TYPES = (10, 11, 12)

# Message flags.
EPHEMERAL = 1 << 6
LOADING = 1 << 7


def snowflake_time(snowflake: int) -> float:
    """Unix seconds encoded in a Discord id."""
    return ((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000


@dataclass(eq=False)
class User:
    id: int
    name: str
    bot: bool = False
    dms_open: bool = True  # False: "allow direct messages from server members" is off (403 / 50007)

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "global_name": self.name,
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }


@dataclass(eq=False)
class Role:
    id: int
    guild: Guild
    name: str
    permissions: int = 0
    position: int = 0
    managed: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "colors": {"primary_color": 0},
            "hoist": False,
            "managed": self.managed,
            "mentionable": False,
            "flags": 0,
        }


@dataclass(eq=False)
class Member:
    user: User
    guild: Guild
    roles: list[Role] = field(default_factory=list)  # without @everyone, which every member has
    joined_at: str = ""

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def name(self) -> str:
        return self.user.name

    def payload(self, *, with_user: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "roles": [str(r.id) for r in self.roles],
            "joined_at": self.joined_at,
            "nick": None,
            "avatar": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
        }
        if with_user:
            data["user"] = self.user.payload()
        return data


@dataclass(frozen=True)
class Overwrite:
    id: int
    type: int  # 0 a role, 1 a member
    allow: int = 0
    deny: int = 0

    def payload(self) -> dict[str, Any]:
        return {"id": str(self.id), "type": self.type, "allow": str(self.allow), "deny": str(self.deny)}


@dataclass(eq=False)
class Channel:
    id: int
    guild: Guild | None  # None for a DM channel
    name: str
    type: int
    position: int = 0
    parent: Channel | None = None
    overwrites: list[Overwrite] = field(default_factory=list)
    owner_id: int | None = None  # threads: who started it
    created_at: str = ""
    messages: list[Message] = field(default_factory=list)  # oldest first, deleted ones included
    recipient: User | None = None  # a DM channel's other user

    @property
    def is_thread(self) -> bool:
        return self.type in THREAD_TYPES

    @property
    def is_dm(self) -> bool:
        return self.type == CHANNEL_TYPES["dm"]

    def payload(self) -> dict[str, Any]:
        live = [m for m in self.messages if not m.deleted and m.visible_to is None]
        if self.guild is None:
            assert self.recipient is not None
            return {
                "id": str(self.id),
                "type": self.type,
                "last_message_id": str(live[-1].id) if live else None,
                "recipients": [self.recipient.payload()],
                "flags": 0,
            }
        data: dict[str, Any] = {
            "id": str(self.id),
            "guild_id": str(self.guild.id),
            "type": self.type,
            "name": self.name,
            "position": self.position,
            "parent_id": str(self.parent.id) if self.parent else None,
            "nsfw": False,
            "rate_limit_per_user": 0,
            "flags": 0,
        }
        data["last_message_id"] = str(live[-1].id) if live else None
        if self.is_thread:
            data.update(
                owner_id=str(self.owner_id or 0),
                message_count=len(live),
                total_message_sent=len(live),
                member_count=1,
                applied_tags=[],
                thread_metadata={
                    "archived": False,
                    "locked": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": self.created_at,
                    "create_timestamp": self.created_at,
                },
            )
            del data["position"]
        else:
            data["permission_overwrites"] = [o.payload() for o in self.overwrites]
            data["topic"] = None
            if self.type == CHANNEL_TYPES["forum"]:
                data.update(available_tags=[], default_reaction_emoji=None, default_sort_order=None)
        return data


@dataclass(eq=False)
class Guild:
    id: int
    name: str
    owner_id: int | None = None
    roles: list[Role] = field(default_factory=list)  # roles[0] is @everyone, whose id is the guild's
    channels: list[Channel] = field(default_factory=list)  # threads and forum posts included
    members: dict[int, Member] = field(default_factory=dict)

    @property
    def everyone(self) -> Role:
        return self.roles[0]

    def payload(self, joined_at: str) -> dict[str, Any]:
        """The full guild, as GUILD_CREATE carries it."""
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "owner_id": str(self.owner_id) if self.owner_id else None,
            "unavailable": False,
            "large": False,
            "member_count": len(self.members),
            "joined_at": joined_at,
            "features": [],
            "preferred_locale": "en-US",
            "premium_tier": 0,
            "system_channel_id": None,
            "roles": [r.payload() for r in self.roles],
            "emojis": [],
            "stickers": [],
            "channels": [c.payload() for c in self.channels if not c.is_thread],
            "threads": [c.payload() for c in self.channels if c.is_thread],
            "members": [m.payload() for m in self.members.values()],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }


@dataclass(eq=False)
class Attachment:
    id: int
    filename: str
    data: bytes
    content_type: str | None
    path: str  # /attachments/{channel id}/{id}/{filename}: the same below the CDN and the media proxy
    cdn: Cdn  # signs its links
    description: str | None = None
    dimensions: tuple[int, int] | None = None  # (width, height) for images, as Discord reports them
    content_length: bool | None = None  # send a Content-Length (else chunked)? None: the CDN's default

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def url(self) -> str:
        """A link signed now, valid for the CDN's link lifetime on the fake clock."""
        return self.cdn.url(self)

    @property
    def proxy_url(self) -> str:
        return self.cdn.proxy_url(self)

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.proxy_url,
        }
        if self.content_type:
            data["content_type"] = self.content_type
        if self.description:
            data["description"] = self.description
        if self.dimensions:
            data["width"], data["height"] = self.dimensions
        return data


@dataclass(eq=False)
class Message:
    id: int
    channel: Channel
    author: User
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    edits: int = 0  # how many times an edit changed it (filling a "thinking" message is not an edit)
    edited_at: str | None = None
    visible_to: int | None = None  # ephemeral: the one user who sees it
    webhook_id: int | None = None  # interaction responses are sent through the application's webhook
    interaction_metadata: dict[str, Any] | None = None
    reference: int | None = None  # the message this one replies to
    reactions: list[tuple[str, int]] = field(default_factory=list)  # (emoji, user id)
    deleted: bool = False
    allowed_mentions: dict[str, Any] | None = (
        None  # as the last create or edit sent it (None: Discord's default)
    )

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        """A deferred interaction's "Bot is thinking..." placeholder, not yet filled."""
        return bool(self.flags & LOADING)

    def walk_components(self) -> Iterator[dict[str, Any]]:
        """Every component, nested ones (action rows, containers, sections) included."""
        stack = list(reversed(self.components))
        while stack:
            component = stack.pop()
            yield component
            inner = list(component.get("components", []))
            if "accessory" in component:
                inner.append(component["accessory"])
            stack.extend(reversed(inner))

    def find_component(self, label_or_custom_id: str) -> dict[str, Any]:
        """The interactive component whose label equals, or whose custom_id starts with, the text."""
        for component in self.walk_components():
            if "custom_id" not in component:
                continue
            if component.get("label") == label_or_custom_id or component["custom_id"].startswith(
                label_or_custom_id
            ):
                return component
        found = [c.get("label") or c.get("custom_id") for c in self.walk_components() if "custom_id" in c]
        raise LookupError(f"no component {label_or_custom_id!r} on message {self.id}; it has {found}")

    def payload(self) -> dict[str, Any]:
        guild = self.channel.guild
        data: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel.id),
            **({"guild_id": str(guild.id)} if guild else {}),
            "author": self.author.payload(),
            "type": self.type,
            "content": self.content,
            "embeds": self.embeds,
            "attachments": [a.payload() for a in self.attachments],
            "components": self.components,
            "flags": self.flags,
            "timestamp": _iso_ms(snowflake_time(self.id)),
            "edited_timestamp": self.edited_at,
            "tts": False,
            "pinned": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "reactions": _reaction_payload(self.reactions),
        }
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
            data["application_id"] = str(self.webhook_id)
        if self.interaction_metadata is not None:
            data["interaction_metadata"] = self.interaction_metadata
        if self.reference is not None:
            data["message_reference"] = {
                "type": 0,
                "message_id": str(self.reference),
                "channel_id": str(self.channel.id),
                **({"guild_id": str(guild.id)} if guild else {}),
            }
        return data


def _iso_ms(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat()


def _reaction_payload(reactions: list[tuple[str, int]]) -> list[dict[str, Any]]:
    counts: dict[str, int] = {}
    for emoji, _user in reactions:
        counts[emoji] = counts.get(emoji, 0) + 1
    return [
        {
            "emoji": {"id": None, "name": e},
            "count": n,
            "me": False,
            "count_details": {"burst": 0, "normal": n},
        }
        for e, n in counts.items()
    ]
