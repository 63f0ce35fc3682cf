"""Interactions as a person makes them (a slash command, a context menu, a click) and what became of them."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from .models import Channel, Member, Message, Role, User
from .state import FakeState

# Interaction types.
APPLICATION_COMMAND, MESSAGE_COMPONENT = 2, 3
# Application command option types.
SUB_COMMAND = 1
SUB_COMMAND_GROUP = 2
STRING = 3
INTEGER = 4
BOOLEAN = 5
USER = 6
CHANNEL = 7
ROLE = 8
MENTIONABLE = 9
NUMBER = 10
ATTACHMENT = 11

ACK_DEADLINE_S = 3.0  # to answer the callback
TOKEN_LIFE_S = 15 * 60.0  # to use the webhook: followups and @original


@dataclass(eq=False)
class InteractionRecord:
    """One interaction sent to the bot, and how the bot answered it."""

    id: int
    token: str
    type: int
    user: Member
    channel: Channel
    created_at: float  # on the fake clock
    attachment_size_limit: int
    payload: dict[str, Any]  # as INTERACTION_CREATE carried it
    state: FakeState = field(repr=False)
    message: Message | None = None  # components: the message that was clicked
    callback_type: int | None = None  # 4 message, 5 deferred, 6 deferred update, 7 update, 8 choices, 9 modal
    deferred: bool = False
    ephemeral: bool = False
    original: Message | None = None  # the response message as it is now, if there is one
    followups: list[Message] = field(default_factory=list)  # what each followup POST returned
    modal: dict[str, Any] | None = None
    choices: list[dict[str, Any]] | None = None

    @property
    def acknowledged(self) -> bool:
        return self.callback_type is not None

    async def wait_response(self, timeout: float = 10.0) -> InteractionRecord:
        """Until the bot has answered the callback (any type)."""
        await self.state.wait_for(lambda: self.acknowledged, timeout)
        return self

    async def wait_original(self, timeout: float = 10.0) -> Message:
        """Until there is a response message that is not a "thinking" placeholder."""
        return await self.state.wait_for(
            lambda: self.original if self.original and not self.original.loading else None, timeout
        )

    async def wait_followups(self, count: int = 1, timeout: float = 10.0) -> list[Message]:
        await self.state.wait_for(lambda: len(self.followups) >= count, timeout)
        return self.followups


def new_interaction(
    state: FakeState,
    type: int,
    user: Member,
    channel: Channel,
    data: dict[str, Any],
    *,
    attachment_size_limit: int,
    message: Message | None = None,
) -> InteractionRecord:
    """Register an interaction and send INTERACTION_CREATE to the bot."""
    guild = channel.guild
    interaction_id, token = state.snowflake(), secrets.token_urlsafe(48)
    perms = state.permissions(user, channel)
    payload: dict[str, Any] = {
        "id": str(interaction_id),
        "application_id": str(state.application_id),
        "type": type,
        "token": token,
        "version": 1,
        "guild_id": str(guild.id),
        "guild": {"id": str(guild.id), "locale": "en-US", "features": []},
        "channel_id": str(channel.id),
        "channel": {**channel.payload(), "permissions": str(perms)},
        "member": {**user.payload(), "permissions": str(perms)},
        "app_permissions": str(state.permissions(state.bot_member(guild), channel)),
        "locale": "en-US",
        "guild_locale": "en-US",
        "entitlements": [],
        "authorizing_integration_owners": {"0": str(guild.id)},
        "context": 0,
        "attachment_size_limit": attachment_size_limit,
        "data": data,
    }
    if message is not None:
        payload["message"] = message.payload()
    record = InteractionRecord(
        interaction_id,
        token,
        type,
        user,
        channel,
        state.clock.now(),
        attachment_size_limit,
        payload,
        state,
        message=message,
    )
    state.interactions[interaction_id] = record
    state.by_token[token] = record
    state.emit("INTERACTION_CREATE", payload)
    state.changed()
    return record


def response_metadata(record: InteractionRecord) -> dict[str, Any]:
    """`interaction_metadata` of a message sent in answer to `record`."""
    data: dict[str, Any] = {
        "id": str(record.id),
        "type": record.type,
        "user": record.user.user.payload(),
        "authorizing_integration_owners": {"0": str(record.channel.guild.id)},
    }
    if record.message is not None:
        data["interacted_message_id"] = str(record.message.id)
    elif "name" in record.payload["data"]:
        data["name"] = record.payload["data"]["name"]
    return data


def slash_data(
    state: FakeState, name: str, user: Member, channel: Channel, options: dict[str, Any]
) -> dict[str, Any]:
    """`data` of a chat-input command; `name` may be "group sub" for subcommands.

    Option values: str, int, float, bool, a Member/User, Channel or Role, and for an attachment option
    `(filename, bytes)` or `(filename, bytes, content_type)`.
    """
    top, *path = name.split()
    command = state.find_command(top, channel.guild, 1)
    resolved: dict[str, dict[str, Any]] = {}
    schema: list[dict[str, Any]] = command.get("options", [])
    wrappers: list[dict[str, Any]] = []
    for part in path:
        sub = next(
            (o for o in schema if o["name"] == part and o["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP)), None
        )
        if sub is None:
            raise LookupError(f"/{top} has no subcommand {part!r}")
        wrappers.append({"name": part, "type": sub["type"], "options": []})
        schema = sub.get("options", [])
    by_name = {o["name"]: o for o in schema}
    leaf = []
    for key, value in options.items():
        if key not in by_name:
            raise TypeError(f"/{name} has no option {key!r}; it has {sorted(by_name)}")
        leaf.append(_option(state, channel, by_name[key], value, resolved))
    missing = [o["name"] for o in schema if o.get("required") and o["name"] not in options]
    if missing:
        raise TypeError(f"/{name} needs {missing}")
    for depth, wrapper in enumerate(wrappers):
        wrapper["options"] = [wrappers[depth + 1]] if depth + 1 < len(wrappers) else leaf
    data: dict[str, Any] = {
        "id": command["id"],
        "name": top,
        "type": 1,
        "options": [wrappers[0]] if wrappers else leaf,
    }
    if resolved:
        data["resolved"] = resolved
    if "guild_id" in command:
        data["guild_id"] = command["guild_id"]
    return data


def context_menu_data(state: FakeState, name: str, target: Message | Member) -> dict[str, Any]:
    """`data` of a message (type 3) or user (type 2) context-menu command."""
    if isinstance(target, Message):
        command = state.find_command(name, target.channel.guild, 3)
        resolved = {"messages": {str(target.id): target.payload()}}
    else:
        command = state.find_command(name, target.guild, 2)
        resolved = _member_resolved(state, target, None)
    data = {
        "id": command["id"],
        "name": name,
        "type": command["type"],
        "target_id": str(target.id),
        "resolved": resolved,
    }
    if "guild_id" in command:
        data["guild_id"] = command["guild_id"]
    return data


def component_data(message: Message, label_or_custom_id: str, values: list[str] | None) -> dict[str, Any]:
    component = message.find_component(label_or_custom_id)
    if component.get("disabled"):
        raise ValueError(f"component {label_or_custom_id!r} is disabled")
    data: dict[str, Any] = {"custom_id": component["custom_id"], "component_type": component["type"]}
    if component["type"] != 2:  # select menus
        data["values"] = list(values or [])
    return data


def _option(
    state: FakeState,
    channel: Channel,
    schema: dict[str, Any],
    value: Any,
    resolved: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    kind = schema["type"]
    if kind == ATTACHMENT:
        filename, data, *rest = value
        attachment = state.make_attachment(channel, filename, data, rest[0] if rest else None)
        resolved.setdefault("attachments", {})[str(attachment.id)] = attachment.payload()
        value = str(attachment.id)
    elif kind in (USER, MENTIONABLE) and isinstance(value, Member | User):
        member = value if isinstance(value, Member) else channel.guild.members.get(value.id)
        user = value.user if isinstance(value, Member) else value
        for key, items in _member_resolved(state, member or user, channel).items():
            resolved.setdefault(key, {}).update(items)
        value = str(value.id)
    elif kind in (ROLE, MENTIONABLE) and isinstance(value, Role):
        resolved.setdefault("roles", {})[str(value.id)] = value.payload()
        value = str(value.id)
    elif kind == CHANNEL:
        perms = state.permissions(state.bot_member(channel.guild), value)
        resolved.setdefault("channels", {})[str(value.id)] = {**value.payload(), "permissions": str(perms)}
        value = str(value.id)
    elif kind == INTEGER:
        value = int(value)
    elif kind == NUMBER:
        value = float(value)
    elif kind == BOOLEAN:
        value = bool(value)
    elif kind == STRING:
        value = str(value)
    return {"name": schema["name"], "type": kind, "value": value}


def _member_resolved(state: FakeState, target: Member | User, channel: Channel | None) -> dict[str, Any]:
    if isinstance(target, User):
        return {"users": {str(target.id): target.payload()}}
    member = {**target.payload(with_user=False), "permissions": str(state.permissions(target, channel))}
    return {"users": {str(target.id): target.user.payload()}, "members": {str(target.id): member}}
