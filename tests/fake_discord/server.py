"""FakeDiscord: the server, and the test driver's side of it (a person using Discord)."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .cdn import Cdn, image_size
from .clock import FakeClock
from .gateway import Gateway
from .interactions import (
    APPLICATION_COMMAND,
    MESSAGE_COMPONENT,
    InteractionRecord,
    component_data,
    context_menu_data,
    new_interaction,
    slash_data,
)
from .models import DEFAULT_PERMISSIONS, Channel, Guild, Member, Message, Role, User
from .ratelimit import RateLimiter, too_many_requests
from .rest import API, RestRoutes
from .state import FakeState
from .webhooks import WebhookRoutes
from .wire import APIError, json_response

log = logging.getLogger(__name__)

DEFAULT_ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024  # Discord's per-file default since 2024 (was 8 MiB)
_CDN_PREFIXES = ("/cdn/", "/media/", "/external/")  # the CDN, the media proxy, proxied embed images
AttachmentSpec = tuple[str, bytes] | tuple[str, bytes, str]  # (filename, data[, content type])


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str  # below /api/v10 ("/channels/1/messages"), or the CDN path ("/cdn/attachments/...")
    time: float  # on the fake clock
    status: int
    query: str = ""


class FakeDiscord:
    """A local Discord (REST v10 + gateway) that the real discord.py client can log in to.

    ``async with FakeDiscord() as fake:`` starts it on 127.0.0.1 at a free port; ``fake.run_bot(bot)``
    points discord.py at it and logs the bot in.
    """

    def __init__(
        self,
        *,
        clock: FakeClock | None = None,
        bot_name: str = "Iris",
        bot_permissions: int = DEFAULT_PERMISSIONS,
        attachment_size_limit: int = DEFAULT_ATTACHMENT_SIZE_LIMIT,
        shards: int = 1,
        sharding_required: bool = False,
        max_concurrency: int = 1,
    ) -> None:
        """`shards`: the count GET /gateway/bot recommends; `sharding_required`: IDENTIFYing with fewer is
        closed with 4011; `max_concurrency`: GET /gateway/bot's (see Gateway for pacing identifies)."""
        self.clock = clock or FakeClock()
        self.state = FakeState(self.clock, bot_name=bot_name, bot_permissions=bot_permissions)
        self.token = secrets.token_urlsafe(32)  # what the bot must log in with
        self.attachment_size_limit = attachment_size_limit  # per file; sent in interactions too
        self.limiter = RateLimiter()
        self._drops: list[tuple[str, re.Pattern[str], list[int]]] = []  # (method, path, [left]) to drop
        self.requests: list[RequestRecord] = []
        self.errors: list[str] = []  # the fake's own failures, raised when it stops
        self.gateway = Gateway(self.state, lambda: self.token, lambda: self.resume_url)
        self.gateway.shards, self.gateway.sharding_required = shards, sharding_required
        self.gateway.max_concurrency = max_concurrency
        self.state.emit = self.gateway.dispatch
        self.port = 0
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return self.base_url + API

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def resume_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/resume"

    @property
    def cdn(self) -> Cdn:
        """The CDN and media proxy: link lifetime, piece size and delay are its attributes."""
        return self.state.cdn

    @property
    def bot(self) -> User:
        return self.state.bot

    @property
    def application_id(self) -> int:
        return self.state.application_id

    @property
    def commands(self) -> dict[int | None, list[dict[str, Any]]]:
        """Synced command trees by guild id; None is the global tree."""
        return self.state.commands

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/", self.gateway.handle)
        app.router.add_get("/resume", self.gateway.handle)
        RestRoutes(self).register(app)
        self.cdn.register(app)
        WebhookRoutes(self).register(app)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.cdn.base = self.base_url
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        await self.gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        await self.stop()
        if self.errors and exc_type is None:
            raise AssertionError("the fake Discord failed:\n" + "\n".join(self.errors))

    @contextmanager
    def patch_discord(self) -> Iterator[None]:
        """Point discord.py's REST base and default gateway at this fake, and restore them after."""
        import yarl
        from discord.gateway import DiscordWebSocket
        from discord.http import Route

        saved = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
        Route.BASE = self.api_url
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield
        finally:
            Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved

    @asynccontextmanager
    async def run_bot(self, bot: Any, timeout: float = 10.0) -> AsyncIterator[Any]:
        """Log `bot` (a discord.Client) in to this fake, wait for on_ready, and close it on the way out."""
        with self.patch_discord():
            task = asyncio.create_task(bot.start(self.token))
            try:
                await self.wait_for(lambda: task.done() or bot.is_ready(), timeout)
                if task.done():
                    task.result()  # raises what stopped the bot
                    raise RuntimeError("the bot stopped before it was ready")
                yield bot
            finally:
                await bot.close()
                await asyncio.wait({task}, timeout=timeout)

    # -- HTTP plumbing -----------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        path = request.path
        is_api, is_cdn = path.startswith(API + "/"), path.startswith(_CDN_PREFIXES)
        if not (is_api or is_cdn):
            return await handler(request)  # the gateway
        relative = path[len(API) :] if is_api else path
        if self._take_drop(request.method, relative):
            assert request.transport is not None
            request.transport.close()  # the connection drops mid-request: the client sees no answer
            raise ConnectionResetError("dropped by the test")
        response = await self._serve(request, handler, relative, is_api)
        self.requests.append(
            RequestRecord(request.method, relative, self.clock.now(), response.status, request.query_string)
        )
        self.state.changed()
        return response

    async def _serve(
        self, request: web.Request, handler: Callable[..., Any], relative: str, is_api: bool
    ) -> web.StreamResponse:
        headers: dict[str, str] = {}
        if is_api:
            webhook = relative.startswith(("/webhooks/", "/interactions/"))
            if not webhook and request.headers.get("Authorization") != f"Bot {self.token}":
                return json_response({"message": "401: Unauthorized", "code": 0}, 401)
            if early := self.limiter.too_early(request.method, relative):
                self.errors.append(
                    f"{request.method} {relative}: retried {early[0]:.3f} s after a 429 "
                    f"whose retry_after was {early[1]:.3f} s"
                )
            if rule := self.limiter.take_injected(request.method, relative):
                return too_many_requests(rule.retry_after, is_global=rule.is_global, headers={})
            resource = request.match_info.route.resource
            template = resource.canonical[len(API) :] if resource is not None else relative
            headers, retry = self.limiter.hit(request.method, template, self._major(request))
            if retry is not None:
                return too_many_requests(retry, is_global=False, headers=headers)
        try:
            response = await handler(request)
        except APIError as exc:
            response = exc.response()
        except web.HTTPException as exc:  # no such route, or method
            response = json_response({"message": f"{exc.status}: {exc.reason}", "code": 0}, exc.status)
            self.errors.append(f"{request.method} {relative}: the fake has no such route ({exc.status})")
        except Exception as exc:
            log.exception("fake Discord failed on %s %s", request.method, relative)
            self.errors.append(f"{request.method} {relative}: {exc!r}")
            # 400, not 500: discord.py retries 5xx with growing sleeps, which would only slow the test down.
            response = json_response({"message": f"fake Discord error: {exc!r}", "code": 0}, 400)
        response.headers.update(headers)
        return response

    def _major(self, request: web.Request) -> str:
        """What a bucket is per: the channel (an interaction's, for its edits), the guild or the token."""
        info = request.match_info
        if "channel_id" in info:
            return info["channel_id"]
        if "token" in info:
            record = self.state.by_token.get(info["token"])
            if record is not None and request.method == "PATCH":
                return str(record.channel.id)
            return info["token"]
        return info.get("guild_id", "")

    def inject_429(
        self,
        method: str,
        path_regex: str,
        count: int = 1,
        retry_after: float = 0.1,
        *,
        is_global: bool = False,
    ) -> None:
        """Answer the next `count` requests matching (path below /api/v10, `re.search`) with a 429.

        A request that comes back sooner than `retry_after` after one of these 429s is a failure of the
        client (recorded in `errors`): Discord would count it against the bot."""
        self.limiter.inject(method, path_regex, count, retry_after, is_global)

    def drop_connections(self, method: str, path_regex: str, count: int = 1) -> None:
        """Close the connection on the next `count` matching requests (path below /api/v10, or a /cdn/
        path), as a proxy or a network fault does: the client gets no answer at all."""
        self._drops.append((method, re.compile(path_regex), [count]))

    def _take_drop(self, method: str, relative: str) -> bool:
        for m, pattern, left in self._drops:
            if m == method and left[0] > 0 and pattern.search(relative):
                left[0] -= 1
                return True
        return False

    def end_429s(self) -> None:
        """Stop every injected 429 storm."""
        self.limiter.clear_injected()

    def count_requests(
        self, method: str | None = None, path_regex: str = "", status: int | None = None
    ) -> int:
        pattern = re.compile(path_regex)
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method)
            and pattern.search(r.path)
            and (status is None or r.status == status)
        )

    # -- setup -------------------------------------------------------------------------------------

    def add_guild(
        self, name: str, *, bot_permissions: Any = None, shard: tuple[int, int] | None = None
    ) -> Guild:
        """`shard`: (shard_id, num_shards) to give the server an id that this shard receives."""
        return self.state.add_guild(name, bot_permissions=bot_permissions, shard=shard)

    def add_role(self, guild: Guild, name: str, permissions: Any = 0) -> Role:
        return self.state.add_role(guild, name, permissions)

    def add_member(
        self, guild: Guild, name: str, roles: Iterable[Role] = (), permissions: Any = None
    ) -> Member:
        return self.state.add_member(guild, name, roles, permissions)

    def add_channel(
        self,
        guild: Guild,
        name: str,
        type: str | int = "text",
        parent: Channel | None = None,
        overwrites: Mapping[Role | Member, tuple[Any, Any]] | None = None,
    ) -> Channel:
        """`type`: "text", "category", "forum", "thread", "private_thread" or "forum_post"."""
        return self.state.add_channel(guild, name, type, parent, overwrites)

    async def add_forum_post(
        self,
        forum: Channel,
        name: str,
        author: Member,
        content: str = "",
        attachments: Iterable[AttachmentSpec] = (),
    ) -> tuple[Channel, Message]:
        """A forum post as a person makes it: the thread and its starter message (which shares its id)."""
        post = self.state.add_channel(forum.guild, name, "forum_post", forum, owner=author)
        files = [self.state.make_attachment(post, *spec) for spec in attachments]
        starter = self.state.create_message(
            post, author.user, message_id=post.id, content=content, attachments=files
        )
        return post, starter

    # -- what people do ----------------------------------------------------------------------------

    async def post_message(
        self,
        channel: Channel,
        author: Member,
        content: str = "",
        *,
        attachments: Iterable[AttachmentSpec] = (),
        embeds: Iterable[dict[str, Any]] = (),
        reply_to: Message | None = None,
    ) -> Message:
        """`author` posts in `channel`; the bot gets MESSAGE_CREATE. Attachments are served by the CDN."""
        files = [self.state.make_attachment(channel, *spec) for spec in attachments]
        return self.state.create_message(
            channel,
            author.user,
            content=content,
            attachments=files,
            embeds=list(embeds),
            type=19 if reply_to else 0,
            reference=reply_to.id if reply_to else None,
        )

    def image_embed(
        self,
        url: str,
        data: bytes,
        content_type: str = "image/jpeg",
        *,
        rich: bool = False,
        proxy_redirect_to: str | None = None,
    ) -> dict[str, Any]:
        """The embed Discord adds for an image at `url` on another host, for `post_message(embeds=...)`.

        A posted image link gets a `type: "image"` embed with the picture as its `thumbnail`; a bot's rich
        embed (`rich=True`) has it as `image`. Either way `url` stays the original (the fake never fetches
        it) and `proxy_url` points at the fake's media proxy, which serves `data`, or answers 302 to
        `proxy_redirect_to` if given.
        """
        proxy_url = self.cdn.add_external(url, data, content_type, redirect_to=proxy_redirect_to)
        picture: dict[str, Any] = {"url": url, "proxy_url": proxy_url, "content_type": content_type}
        if size := image_size(data):
            picture["width"], picture["height"] = size
        if rich:
            return {"type": "rich", "title": "a picture", "image": picture}
        return {"type": "image", "url": url, "thumbnail": picture}

    async def edit_message(
        self, message: Message, content: str | None = None, *, embeds: Iterable[dict[str, Any]] | None = None
    ) -> Message:
        changes: dict[str, Any] = {}
        if content is not None:
            changes["content"] = content
        if embeds is not None:
            changes["embeds"] = list(embeds)
        return self.state.update_message(message, changes)

    async def delete_message(self, message: Message) -> None:
        self.state.delete_messages(message.channel, [message])

    async def bulk_delete(self, messages: Iterable[Message]) -> None:
        messages = list(messages)
        if len({m.channel.id for m in messages}) > 1:
            raise ValueError("a bulk delete happens in one channel")
        if messages:
            self.state.delete_messages(messages[0].channel, messages)

    async def invoke_slash(
        self, name: str, *, user: Member, channel: Channel, **options: Any
    ) -> InteractionRecord:
        """`user` runs `/name` in `channel`. Attachment options take `(filename, bytes[, content_type])`."""
        data = slash_data(self.state, name, user, channel, options)
        return new_interaction(
            self.state,
            APPLICATION_COMMAND,
            user,
            channel,
            data,
            attachment_size_limit=self.attachment_size_limit,
        )

    async def invoke_context_menu(
        self, name: str, target: Message | Member, *, user: Member, channel: Channel | None = None
    ) -> InteractionRecord:
        """`user` picks Apps → `name` on a message (its channel) or on a member (then give `channel`)."""
        where = target.channel if isinstance(target, Message) else channel
        if where is None:
            raise ValueError("a user command needs the channel it is used in")
        data = context_menu_data(self.state, name, target)
        return new_interaction(
            self.state,
            APPLICATION_COMMAND,
            user,
            where,
            data,
            attachment_size_limit=self.attachment_size_limit,
        )

    async def click(
        self, message: Message, label_or_custom_id: str, *, user: Member, values: list[str] | None = None
    ) -> InteractionRecord:
        """`user` clicks the button (or picks `values` in the select) with that label or custom_id prefix."""
        if message.deleted:
            raise LookupError(f"message {message.id} was deleted")
        data = component_data(message, label_or_custom_id, values)
        return new_interaction(
            self.state,
            MESSAGE_COMPONENT,
            user,
            message.channel,
            data,
            attachment_size_limit=self.attachment_size_limit,
            message=message,
        )

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send any gateway event as is, for what the helpers above do not cover."""
        self.gateway.dispatch(event, data)

    async def drop_connection(self, code: int = 4000) -> None:
        """Cut the gateway like a network fault; the bot reconnects at resume_gateway_url and RESUMEs."""
        await self.gateway.drop_connection(code)

    def set_overwrite(self, channel: Channel, target: Role | Member, allow: Any = 0, deny: Any = 0) -> None:
        """A server admin sets `target`'s (allow, deny) on `channel`; the bot gets CHANNEL_UPDATE."""
        self.state.set_overwrite(channel, target, allow, deny)

    def close_dms(self, member: Member | User) -> None:
        """`member` turns off direct messages from server members: DMs to them get 403 / 50007."""
        (member.user if isinstance(member, Member) else member).dms_open = False

    # -- what tests look at ------------------------------------------------------------------------

    def channel_messages(self, channel: Channel, *, as_user: Member | None = None) -> list[Message]:
        """Oldest first, as `as_user` sees the channel (ephemeral messages only to their user; nothing if
        they cannot view it); without `as_user`, every message that is not ephemeral to someone else."""
        return self.state.visible_messages(channel, as_user.id if as_user else None)

    def seen_by(self, user: Member | User, channel: Channel) -> list[Message]:
        """What `user` sees in `channel`, oldest first."""
        return self.state.visible_messages(channel, user.id)

    def dm_messages(self, user: Member | User) -> list[Message]:
        """The bot's DMs to `user`, oldest first (empty if it never opened one)."""
        channel = self.state.dms.get(user.id)
        return self.state.visible_messages(channel, user.id) if channel else []

    def viewers(self, message: Message) -> set[int]:
        """The ids of everyone who can see `message`."""
        return self.state.viewers(message)

    def pinged(self, message: Message) -> set[int]:
        """The ids of everyone `message` notifies (content mentions, allowed_mentions, who can see it)."""
        return self.state.pinged(message)

    def all_messages(self) -> list[Message]:
        """Every live message the bot sent or received, in every channel and DM, oldest first."""
        return sorted(
            (m for ch in self.state.channels.values() for m in ch.messages if not m.deleted),
            key=lambda m: m.id,
        )

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Wait, without sleeping blindly, until `predicate()` is truthy; returns its value."""
        return await self.state.wait_for(predicate, timeout)
