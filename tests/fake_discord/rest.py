"""REST routes the bot calls with its token: itself, commands, guilds, channels, messages."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .limits import FormError, check_commands, check_thread_name
from .models import (
    ATTACH_FILES,
    CHANNEL_TYPES,
    CREATE_PUBLIC_THREADS,
    EMBED_LINKS,
    MANAGE_MESSAGES,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    SEND_MESSAGES_IN_THREADS,
    VIEW_CHANNEL,
    Channel,
    Guild,
    Message,
)
from .wire import (
    APIError,
    Body,
    form_error,
    invalid_form,
    json_response,
    message_fields,
    no_content,
    read_body,
    require_content,
)

if TYPE_CHECKING:
    from .server import FakeDiscord

API = "/api/v10"
_KEPT_FLAGS = (1 << 2) | (1 << 12)  # SUPPRESS_EMBEDS, SUPPRESS_NOTIFICATIONS: what a bot may set


def _check(check: Callable[[Any], Any], value: Any) -> Any:
    try:
        return check(value)
    except FormError as e:
        raise form_error(e) from None


def lookup_channel(fake: FakeDiscord, channel_id: str) -> Channel:
    channel = fake.state.channels.get(int(channel_id))
    if channel is None:
        raise APIError(404, 10003, "Unknown Channel")
    return channel


def lookup_message(fake: FakeDiscord, channel: Channel, message_id: str) -> Message:
    message = fake.state.messages.get(int(message_id))
    if message is None or message.deleted or message.channel is not channel:
        raise APIError(404, 10008, "Unknown Message")
    return message


class RestRoutes:
    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self.state = fake.state

    def register(self, app: web.Application) -> None:
        channel = API + "/channels/{channel_id}"
        message = channel + "/messages/{message_id}"
        commands = API + "/applications/{application_id}/commands"
        guild_commands = API + "/applications/{application_id}/guilds/{guild_id}/commands"
        guild = API + "/guilds/{guild_id}"
        routes = [
            ("GET", API + "/users/@me", self.me),
            ("GET", API + "/users/{user_id}", self.user),
            ("POST", API + "/users/@me/channels", self.open_dm),
            ("GET", API + "/oauth2/applications/@me", self.application),
            ("GET", API + "/applications/@me", self.application),
            ("GET", API + "/gateway", self.gateway),
            ("GET", API + "/gateway/bot", self.gateway),
            ("GET", commands, self.get_commands),
            ("PUT", commands, self.put_commands),
            ("POST", commands, self.post_command),
            ("GET", guild_commands, self.get_commands),
            ("PUT", guild_commands, self.put_commands),
            ("POST", guild_commands, self.post_command),
            ("GET", guild, self.get_guild),
            ("GET", guild + "/channels", self.guild_channels),
            ("GET", guild + "/roles", self.guild_roles),
            ("GET", guild + "/members", self.guild_members),
            ("GET", guild + "/members/{user_id}", self.guild_member),
            ("GET", channel, self.get_channel),
            ("POST", channel + "/typing", self.typing),
            ("GET", channel + "/messages", self.history),
            ("POST", channel + "/messages", self.create_message),
            ("POST", channel + "/messages/bulk-delete", self.bulk_delete),
            ("GET", message, self.get_message),
            ("PATCH", message, self.edit_message),
            ("DELETE", message, self.delete_message),
            ("PUT", message + "/reactions/{emoji}/@me", self.react),
            ("DELETE", message + "/reactions/{emoji}/@me", self.unreact),
            ("POST", channel + "/threads", self.create_thread),
            ("POST", API + "/attachments/refresh-urls", self.refresh_urls),
            ("POST", message + "/threads", self.thread_from_message),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)

    # -- the bot and its application ---------------------------------------------------------------

    async def me(self, request: web.Request) -> web.Response:
        return json_response({**self.state.bot.payload(), "verified": True, "mfa_enabled": False, "flags": 0})

    async def user(self, request: web.Request) -> web.Response:
        user = self.state.users.get(int(request.match_info["user_id"]))
        if user is None:
            raise APIError(404, 10013, "Unknown User")
        return json_response(user.payload())

    async def open_dm(self, request: web.Request) -> web.Response:
        """The DM channel with a user; opening it always works, sending may not (closed DMs)."""
        recipient = (await request.json()).get("recipient_id")
        user = self.state.users.get(int(recipient or 0))
        if user is None:
            raise APIError(400, 50035, "Invalid Form Body", {"recipient_id": {"_errors": []}})
        return json_response(self.state.open_dm(user).payload())

    async def application(self, request: web.Request) -> web.Response:
        state = self.state
        return json_response(
            {
                "id": str(state.application_id),
                "name": state.bot.name,
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": state.owner.payload(),
                "verify_key": "0" * 64,
                "flags": 0,
                "team": None,
                "interactions_endpoint_url": None,
                "bot": state.bot.payload(),
            }
        )

    async def gateway(self, request: web.Request) -> web.Response:
        gateway = self.fake.gateway
        concurrency = gateway.max_concurrency
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": concurrency}
        return json_response(
            {"url": self.fake.gateway_url, "shards": gateway.shards, "session_start_limit": limit}
        )

    # -- application commands ----------------------------------------------------------------------

    def _scope(self, request: web.Request) -> int | None:
        if int(request.match_info["application_id"]) != self.state.application_id:
            raise APIError(403, 20012, "You are not authorized to perform this action on this application")
        guild_id = request.match_info.get("guild_id")
        if guild_id is not None and int(guild_id) not in self.state.guilds:
            raise APIError(404, 10004, "Unknown Guild")
        return int(guild_id) if guild_id else None

    async def get_commands(self, request: web.Request) -> web.Response:
        return json_response(self.state.commands.get(self._scope(request), []))

    async def put_commands(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        commands = await request.json()
        _check(check_commands, commands)
        return json_response(self.state.put_commands(scope, commands))

    async def post_command(self, request: web.Request) -> web.Response:
        scope = self._scope(request)
        new = await request.json()
        _check(check_commands, [new])
        others = [c for c in self.state.commands.get(scope, []) if c["name"] != new["name"]]
        stored = self.state.put_commands(scope, [*others, new])
        return json_response(stored[-1], 201)

    # -- guilds ------------------------------------------------------------------------------------

    def _guild(self, request: web.Request) -> Guild:
        guild = self.state.guilds.get(int(request.match_info["guild_id"]))
        if guild is None:
            raise APIError(404, 10004, "Unknown Guild")
        return guild

    async def get_guild(self, request: web.Request) -> web.Response:
        return json_response(self._guild(request).payload(self.state.clock.iso()))

    async def guild_channels(self, request: web.Request) -> web.Response:
        return json_response([c.payload() for c in self._guild(request).channels if not c.is_thread])

    async def guild_roles(self, request: web.Request) -> web.Response:
        return json_response([r.payload() for r in self._guild(request).roles])

    async def guild_members(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", 1))
        members = sorted(self._guild(request).members.values(), key=lambda m: m.id)
        after = int(request.query.get("after", 0))
        return json_response([m.payload() for m in members if m.id > after][:limit])

    async def guild_member(self, request: web.Request) -> web.Response:
        member = self._guild(request).members.get(int(request.match_info["user_id"]))
        if member is None:
            raise APIError(404, 10007, "Unknown Member")
        return json_response(member.payload())

    # -- channels and messages ---------------------------------------------------------------------

    def _need(self, channel: Channel, permissions: int) -> None:
        """The bot's permissions in a server channel; in a DM, whether the user accepts messages."""
        if channel.guild is None:
            recipient = channel.recipient
            if recipient is None or recipient.bot or not recipient.dms_open:
                raise APIError(403, 50007, "Cannot send messages to this user")
            return
        have = self.state.permissions(self.state.bot_member(channel.guild), channel)
        if not have & VIEW_CHANNEL:
            raise APIError(403, 50001, "Missing Access")
        if have & permissions != permissions:
            raise APIError(403, 50013, "Missing Permissions")

    async def get_channel(self, request: web.Request) -> web.Response:
        channel = lookup_channel(self.fake, request.match_info["channel_id"])
        self._need(channel, VIEW_CHANNEL)
        return json_response(channel.payload())

    async def typing(self, request: web.Request) -> web.Response:
        lookup_channel(self.fake, request.match_info["channel_id"])
        return no_content()

    async def history(self, request: web.Request) -> web.Response:
        """Newest first, always; `before`/`after`/`around` pick the page, `limit` (1-100) its size."""
        channel = lookup_channel(self.fake, request.match_info["channel_id"])
        self._need(channel, VIEW_CHANNEL | READ_MESSAGE_HISTORY)
        query = request.query
        limit = max(1, min(100, int(query.get("limit", 50))))
        messages = self.state.visible_messages(channel)
        if "before" in query:
            page = [m for m in messages if m.id < int(query["before"])][-limit:]
        elif "after" in query:
            page = [m for m in messages if m.id > int(query["after"])][:limit]
        elif "around" in query:
            older = [m for m in messages if m.id < int(query["around"])]
            start = max(0, len(older) - limit // 2)
            page = messages[start : start + limit]
        else:
            page = messages[-limit:]
        return json_response([m.payload() for m in reversed(page)])

    async def get_message(self, request: web.Request) -> web.Response:
        channel = lookup_channel(self.fake, request.match_info["channel_id"])
        self._need(channel, VIEW_CHANNEL | READ_MESSAGE_HISTORY)
        message = lookup_message(self.fake, channel, request.match_info["message_id"])
        if message.visible_to is not None:
            raise APIError(404, 10008, "Unknown Message")
        return json_response(message.payload())

    async def create_message(self, request: web.Request) -> web.Response:
        channel = lookup_channel(self.fake, request.match_info["channel_id"])
        body = await read_body(request, self.fake.attachment_size_limit)
        if channel.type in (CHANNEL_TYPES["forum"], CHANNEL_TYPES["category"]):
            raise APIError(400, 50008, "Cannot send messages in a non-text channel")
        fields = message_fields(self.state, channel, body, None)
        require_content(fields)
        needed = SEND_MESSAGES_IN_THREADS if channel.is_thread else SEND_MESSAGES
        needed |= ATTACH_FILES if fields.get("attachments") else 0
        needed |= EMBED_LINKS if fields.get("embeds") else 0
        self._need(channel, needed)
        reference = (body.payload.get("message_reference") or {}).get("message_id")
        message = self.state.create_message(
            channel,
            self.state.bot,
            **fields,
            flags=int(body.payload.get("flags") or 0) & _KEPT_FLAGS,
            type=19 if reference else 0,
            reference=int(reference) if reference else None,
        )
        return json_response(message.payload())

    async def edit_message(self, request: web.Request) -> web.Response:
        channel = lookup_channel(self.fake, request.match_info["channel_id"])
        message = lookup_message(self.fake, channel, request.match_info["message_id"])
        body = await read_body(request, self.fake.attachment_size_limit)
        if message.author is not self.state.bot:
            raise APIError(403, 50005, "Cannot edit a message authored by another user")
        # Editing one's own message needs no Send Messages; new files and embeds need their permissions.
        needed = VIEW_CHANNEL | (ATTACH_FILES if body.files else 0)
        needed |= EMBED_LINKS if body.payload.get("embeds") else 0
        if channel.guild is not None:
            self._need(channel, needed)
        fields = message_fields(self.state, channel, body, message.attachments)
        if "flags" in body.payload:
            fields["flags"] = (message.flags & ~_KEPT_FLAGS) | (int(body.payload["flags"] or 0) & _KEPT_FLAGS)
        return json_response(self.state.update_message(message, fields).payload())

    async def delete_message(self, request: web.Request) -> web.Response:
        channel = lookup_channel(self.fake, request.match_info["channel_id"])
        message = lookup_message(self.fake, channel, request.match_info["message_id"])
        if message.author is not self.state.bot:
            self._need(channel, MANAGE_MESSAGES)
        self.state.delete_messages(channel, [message])
        return no_content()

    async def bulk_delete(self, request: web.Request) -> web.Response:
        channel = lookup_channel(self.fake, request.match_info["channel_id"])
        self._need(channel, MANAGE_MESSAGES)
        ids = (await request.json()).get("messages", [])
        if not 2 <= len(ids) <= 100:
            raise APIError(400, 50016, "You must provide between 2 and 100 messages to delete")
        self.state.delete_messages(channel, [lookup_message(self.fake, channel, i) for i in ids])
        return no_content()

    async def react(self, request: web.Request) -> web.Response:
        message = self._reacted(request)
        self._need(message.channel, READ_MESSAGE_HISTORY)
        entry = (request.match_info["emoji"], self.state.bot.id)
        if entry not in message.reactions:
            message.reactions.append(entry)
        self.state.changed()
        return no_content()

    async def unreact(self, request: web.Request) -> web.Response:
        message = self._reacted(request)
        entry = (request.match_info["emoji"], self.state.bot.id)
        if entry in message.reactions:
            message.reactions.remove(entry)
        self.state.changed()
        return no_content()

    def _reacted(self, request: web.Request) -> Message:
        channel = lookup_channel(self.fake, request.match_info["channel_id"])
        return lookup_message(self.fake, channel, request.match_info["message_id"])

    # -- threads and forum posts -------------------------------------------------------------------

    async def create_thread(self, request: web.Request) -> web.Response:
        """A thread without a starter message, or a forum post with one (whose id is the thread's)."""
        parent = lookup_channel(self.fake, request.match_info["channel_id"])
        body = await read_body(request, self.fake.attachment_size_limit)
        payload = body.payload
        is_forum = parent.type == CHANNEL_TYPES["forum"]
        kind = "forum_post" if is_forum else int(payload.get("type") or 12)
        name = _check(check_thread_name, payload.get("name"))
        self._need(parent, SEND_MESSAGES if is_forum else CREATE_PUBLIC_THREADS)
        assert parent.guild is not None
        thread = self.state.add_channel(parent.guild, name, kind, parent=parent)
        data: dict[str, Any] = thread.payload()
        if is_forum:
            starter = Body(payload.get("message") or {}, body.files)
            fields = message_fields(self.state, thread, starter, None)
            require_content(fields)
            message = self.state.create_message(thread, self.state.bot, message_id=thread.id, **fields)
            data["message"] = message.payload()
        return json_response(data, 201)

    async def thread_from_message(self, request: web.Request) -> web.Response:
        parent = lookup_channel(self.fake, request.match_info["channel_id"])
        message = lookup_message(self.fake, parent, request.match_info["message_id"])
        name = _check(check_thread_name, (await request.json()).get("name"))
        self._need(parent, CREATE_PUBLIC_THREADS)
        assert parent.guild is not None
        thread = self.state.add_channel(parent.guild, name, "thread", parent=parent, channel_id=message.id)
        return json_response(thread.payload(), 201)

    # -- attachment links --------------------------------------------------------------------------

    async def refresh_urls(self, request: web.Request) -> web.Response:
        """Fresh signed links for old (even expired) ones, as Discord's endpoint gives them."""
        urls = (await request.json()).get("attachment_urls")
        if not isinstance(urls, list) or not 1 <= len(urls) <= 50:
            raise invalid_form("attachment_urls", "Must be between 1 and 50 in length.")
        refreshed = [{"original": u, "refreshed": self.state.cdn.refresh(u)} for u in urls]
        return json_response({"refreshed_urls": refreshed})
