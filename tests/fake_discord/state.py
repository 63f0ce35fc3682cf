"""What the fake Discord knows: guilds, channels, members, roles, messages, commands, and who may do what.

Every change goes through here so that it can be announced twice: to the bot, as a gateway event (`emit`),
and to the test, through the change signal that `wait_for` sleeps on.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .cdn import Cdn, image_size
from .clock import FakeClock
from .models import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    CHANNEL_TYPES,
    DEFAULT_PERMISSIONS,
    DISCORD_EPOCH_MS,
    MENTION_EVERYONE,
    VIEW_CHANNEL,
    Attachment,
    Channel,
    Guild,
    Member,
    Message,
    Overwrite,
    Role,
    User,
)

if TYPE_CHECKING:
    from .interactions import InteractionRecord

Emit = Callable[[str, dict[str, Any]], None]


def permission_value(value: Any) -> int:
    """An int, or anything with `.value` (discord.Permissions)."""
    return int(getattr(value, "value", value))


class FakeState:
    def __init__(self, clock: FakeClock, *, bot_name: str, bot_permissions: int) -> None:
        self.clock = clock
        self.bot_permissions = bot_permissions
        self._last_id = 0
        self._increment = itertools.count()
        self.application_id = self.snowflake()
        self.bot = User(self.application_id, bot_name, bot=True)  # a bot's user id is its application's id
        self.owner = User(self.snowflake(), "app-owner")
        self.users: dict[int, User] = {self.bot.id: self.bot, self.owner.id: self.owner}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.messages: dict[int, Message] = {}
        self.attachments: dict[int, Attachment] = {}
        self.cdn = Cdn(clock, self.attachments)
        self.interactions: dict[int, InteractionRecord] = {}
        self.by_token: dict[str, InteractionRecord] = {}
        self.commands: dict[int | None, list[dict[str, Any]]] = {}  # guild id (None: global) → synced tree
        self._command_ids: dict[tuple[int | None, int, str], int] = {}
        self.dms: dict[int, Channel] = {}  # user id → the bot's DM channel with them
        self.emit: Emit = lambda event, data: None  # replaced by the gateway
        self._waiters: set[asyncio.Future[None]] = set()

    # -- ids, time and the change signal -----------------------------------------------------------

    def snowflake(self, shard: tuple[int, int] | None = None) -> int:
        """A new id, greater than all before. `shard` (shard_id, num_shards): a server id routed to that
        shard, `(id >> 22) % num_shards == shard_id`, by moving its timestamp a few ms forward."""
        ms = int(self.clock.now() * 1000) - DISCORD_EPOCH_MS
        candidate = max((ms << 22) | (next(self._increment) & 0xFFF), self._last_id + 1)
        if shard is not None:
            shard_id, count = shard
            ahead = (shard_id - (candidate >> 22)) % count
            if ahead:
                candidate = ((candidate >> 22) + ahead) << 22
        self._last_id = candidate  # ids only grow, so they sort like Discord's
        return self._last_id

    def changed(self) -> None:
        """Wake everything in `wait_for` (like asyncio.Condition.notify_all, callable from sync code)."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, poll: float = 0.05) -> Any:
        """Return the predicate's first truthy value; it is checked at every change of the fake's state.

        It is also checked every `poll` seconds, so it may look at the bot's side too (what a command
        recorded), which the fake cannot see change.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = predicate()
            if value:
                return value
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"condition still false after {timeout} s")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait({waiter}, timeout=min(poll, left))
            finally:
                self._waiters.discard(waiter)

    # -- setup -------------------------------------------------------------------------------------

    def add_user(self, name: str, *, bot: bool = False) -> User:
        user = User(self.snowflake(), name, bot=bot)
        self.users[user.id] = user
        return user

    def add_guild(
        self, name: str, *, bot_permissions: Any = None, shard: tuple[int, int] | None = None
    ) -> Guild:
        guild = Guild(self.snowflake(shard), name)
        guild.roles.append(Role(guild.id, guild, "@everyone", DEFAULT_PERMISSIONS))
        self.guilds[guild.id] = guild
        perms = self.bot_permissions if bot_permissions is None else permission_value(bot_permissions)
        bot_role = Role(self.snowflake(), guild, self.bot.name, perms, position=1, managed=True)
        guild.roles.append(bot_role)
        guild.members[self.bot.id] = Member(self.bot, guild, [bot_role], self.clock.iso())
        self.emit("GUILD_CREATE", guild.payload(self.clock.iso()))
        self.changed()
        return guild

    def add_role(self, guild: Guild, name: str, permissions: Any = 0) -> Role:
        role = Role(self.snowflake(), guild, name, permission_value(permissions), position=len(guild.roles))
        guild.roles.append(role)
        self.emit("GUILD_ROLE_CREATE", {"guild_id": str(guild.id), "role": role.payload()})
        self.changed()
        return role

    def add_member(
        self, guild: Guild, name: str, roles: Iterable[Role] = (), permissions: Any = None
    ) -> Member:
        """`permissions`, if given, become a role of the member's own on top of `roles`."""
        member = Member(self.add_user(name), guild, list(roles), self.clock.iso())
        if permissions is not None:
            member.roles.append(self.add_role(guild, f"{name}'s permissions", permissions))
        guild.members[member.id] = member
        self.emit("GUILD_MEMBER_ADD", {**member.payload(), "guild_id": str(guild.id)})
        self.changed()
        return member

    def add_channel(
        self,
        guild: Guild,
        name: str,
        type: str | int = "text",
        parent: Channel | None = None,
        overwrites: Mapping[Role | Member, tuple[Any, Any]] | None = None,
        owner: Member | None = None,
        channel_id: int | None = None,
    ) -> Channel:
        """`overwrites` maps a role or member to (allow, deny); threads take their parent's permissions."""
        kind = CHANNEL_TYPES[type] if isinstance(type, str) else type
        if type == "forum_post" and (parent is None or parent.type != CHANNEL_TYPES["forum"]):
            raise ValueError("a forum post needs a forum channel as parent")
        if kind in (11, 12) and parent is None:
            raise ValueError("a thread needs a parent channel")
        channel = Channel(
            channel_id or self.snowflake(),
            guild,
            name,
            kind,
            position=len(guild.channels),
            parent=parent,
            owner_id=(owner.id if owner else self.bot.id) if kind in (11, 12) else None,
            created_at=self.clock.iso(),
        )
        for target, (allow, deny) in (overwrites or {}).items():
            channel.overwrites.append(
                Overwrite(
                    target.id,
                    1 if isinstance(target, Member) else 0,
                    permission_value(allow),
                    permission_value(deny),
                )
            )
        guild.channels.append(channel)
        self.channels[channel.id] = channel
        self.emit("THREAD_CREATE" if channel.is_thread else "CHANNEL_CREATE", channel.payload())
        self.changed()
        return channel

    # -- permissions -------------------------------------------------------------------------------

    def permissions(self, member: Member, channel: Channel | None = None) -> int:
        """Discord's algorithm: base from roles, then @everyone, role and member overwrites of the channel."""
        guild = member.guild
        if member.id == guild.owner_id:
            return ALL_PERMISSIONS
        perms = guild.everyone.permissions
        for role in member.roles:
            perms |= role.permissions
        if perms & ADMINISTRATOR:
            return ALL_PERMISSIONS
        target = channel.parent if channel is not None and channel.is_thread else channel
        if target is None:
            return perms
        by_id = {o.id: o for o in target.overwrites}
        if everyone := by_id.get(guild.id):
            perms = (perms & ~everyone.deny) | everyone.allow
        allow = deny = 0
        for role in member.roles:
            if o := by_id.get(role.id):
                allow, deny = allow | o.allow, deny | o.deny
        perms = (perms & ~deny) | allow
        if o := by_id.get(member.id):
            perms = (perms & ~o.deny) | o.allow
        return perms if perms & VIEW_CHANNEL else 0

    def bot_member(self, guild: Guild) -> Member:
        return guild.members[self.bot.id]

    def set_overwrite(self, channel: Channel, target: Role | Member, allow: Any = 0, deny: Any = 0) -> None:
        """Replace `target`'s overwrite on `channel` (a server admin editing the channel)."""
        kind = 1 if isinstance(target, Member) else 0
        channel.overwrites = [o for o in channel.overwrites if o.id != target.id]
        channel.overwrites.append(Overwrite(target.id, kind, permission_value(allow), permission_value(deny)))
        self.emit("CHANNEL_UPDATE", channel.payload())
        self.changed()

    def open_dm(self, user: User) -> Channel:
        """The bot's DM channel with `user` (one per user, as POST /users/@me/channels gives it)."""
        if user.id not in self.dms:
            channel = Channel(self.snowflake(), None, "", CHANNEL_TYPES["dm"], recipient=user)
            self.dms[user.id] = self.channels[channel.id] = channel
        return self.dms[user.id]

    # -- who sees what, and who is pinged ------------------------------------------------------------

    def can_see(self, user: User, message: Message) -> bool:
        """Whether `user` sees `message`: ephemeral: its user; a DM: its two ends; else View Channel."""
        if message.deleted:
            return False
        if message.visible_to is not None:
            return message.visible_to == user.id
        channel = message.channel
        if channel.guild is None:
            return user.id in (self.bot.id, channel.recipient.id if channel.recipient else None)
        member = channel.guild.members.get(user.id)
        return member is not None and bool(self.permissions(member, channel) & VIEW_CHANNEL)

    def viewers(self, message: Message) -> set[int]:
        """Every user (id) who can see `message`."""
        return {uid for uid, user in self.users.items() if self.can_see(user, message)}

    def pinged(self, message: Message) -> set[int]:
        """Who `message` notifies, as Discord decides it from its content and allowed_mentions.

        Without allowed_mentions Discord parses everything; @everyone/@here need the author's Mention
        Everyone permission. Embeds never ping. Only people who can see the message are notified.
        """
        if message.author is not self.bot:
            return set()
        am = message.allowed_mentions
        parse = {"users", "roles", "everyone"} if am is None else set(am.get("parse") or [])
        users = {int(u) for u in (am or {}).get("users") or []}
        roles = {int(r) for r in (am or {}).get("roles") or []}
        content = message.content or ""
        guild = message.channel.guild
        out: set[int] = set()
        for uid in map(int, re.findall(r"<@!?(\d+)>", content)):
            if "users" in parse or uid in users:
                out.add(uid)
        if guild is not None:
            for rid in map(int, re.findall(r"<@&(\d+)>", content)):
                if "roles" in parse or rid in roles:
                    out |= {m.id for m in guild.members.values() if any(r.id == rid for r in m.roles)}
            bot_perms = self.permissions(self.bot_member(guild), message.channel)
            if (
                "everyone" in parse
                and re.search(r"@(everyone|here)", content)
                and bot_perms & MENTION_EVERYONE
            ):
                out |= set(guild.members)
        out.discard(self.bot.id)
        return {uid for uid in out if uid in self.users and self.can_see(self.users[uid], message)}

    # -- messages ----------------------------------------------------------------------------------

    def make_attachment(
        self,
        channel: Channel,
        filename: str,
        data: bytes,
        content_type: str | None = None,
        description: str | None = None,
    ) -> Attachment:
        """A file stored on the CDN; its `url` and `proxy_url` are signed afresh each time they are read."""
        attachment_id = self.snowflake()
        path = f"/attachments/{channel.id}/{attachment_id}/{filename}"
        dimensions = image_size(data) if (content_type or "image/").startswith("image/") else None
        attachment = Attachment(
            attachment_id, filename, data, content_type, path, self.cdn, description, dimensions
        )
        self.attachments[attachment_id] = attachment
        return attachment

    def create_message(
        self, channel: Channel, author: User, *, message_id: int | None = None, **fields: Any
    ) -> Message:
        """A new message (fields as in `Message`); all but ephemeral ones are announced to the bot."""
        message = Message(message_id or self.snowflake(), channel, author, **fields)
        channel.messages.append(message)
        self.messages[message.id] = message
        if message.visible_to is None:
            self.emit("MESSAGE_CREATE", self.message_event(message))
        self.changed()
        return message

    def update_message(
        self, message: Message, changes: Mapping[str, Any], *, is_edit: bool = True
    ) -> Message:
        """Apply `changes` (content, embeds, attachments, components, flags); `is_edit`: count an edit."""
        for key, value in changes.items():
            setattr(message, key, value)
        if is_edit:
            message.edits += 1
            message.edited_at = self.clock.iso()
        if message.visible_to is None:
            self.emit("MESSAGE_UPDATE", self.message_event(message))
        self.changed()
        return message

    def delete_messages(self, channel: Channel, messages: list[Message]) -> None:
        for message in messages:
            message.deleted = True
        public = [str(m.id) for m in messages if m.visible_to is None]
        base = {"channel_id": str(channel.id)}
        if channel.guild is not None:
            base["guild_id"] = str(channel.guild.id)
        if len(public) == 1:
            self.emit("MESSAGE_DELETE", {"id": public[0], **base})
        elif public:
            self.emit("MESSAGE_DELETE_BULK", {"ids": public, **base})
        self.changed()

    def message_event(self, message: Message) -> dict[str, Any]:
        """A message as MESSAGE_CREATE/UPDATE carry it: with the author's guild membership."""
        data = message.payload()
        guild = message.channel.guild
        member = guild.members.get(message.author.id) if guild else None
        if member is not None:
            data["member"] = member.payload(with_user=False)
        return data

    def visible_messages(self, channel: Channel, viewer: int | None = None) -> list[Message]:
        """Oldest first, as `viewer` (a user id) sees the channel; ephemeral messages only to their user.

        A viewer who cannot see the channel (no View Channel, or someone else's DM) sees nothing."""
        if viewer is not None and viewer in self.users:
            user = self.users[viewer]
            return [m for m in channel.messages if self.can_see(user, m)]
        return [
            m for m in channel.messages if not m.deleted and (m.visible_to is None or m.visible_to == viewer)
        ]

    # -- application commands ----------------------------------------------------------------------

    def put_commands(self, guild_id: int | None, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Replace the synced tree of a guild (or the global one), keeping ids stable by name and type."""
        stored = []
        for command in commands:
            key = (guild_id, command.get("type", 1), command["name"])
            command_id = self._command_ids.setdefault(key, self.snowflake())
            stored.append(
                {
                    "description": "",
                    "options": [],
                    "default_member_permissions": None,
                    "nsfw": False,
                    "type": 1,
                    **command,
                    "id": str(command_id),
                    "application_id": str(self.application_id),
                    "version": str(self.snowflake()),
                    **({"guild_id": str(guild_id)} if guild_id else {}),
                }
            )
        self.commands[guild_id] = stored
        self.changed()
        return stored

    def find_command(self, name: str, guild: Guild | None, type: int) -> dict[str, Any]:
        """The synced command a user would pick: the guild's own first, then the global one."""
        for scope in ((guild.id,) if guild else ()) + (None,):
            for command in self.commands.get(scope, []):
                if command["name"] == name and command.get("type", 1) == type:
                    return command
        synced = {scope: [c["name"] for c in cmds] for scope, cmds in self.commands.items()}
        raise LookupError(f"no command {name!r} (type {type}) was synced; synced: {synced}")
