"""The gateway: HELLO, heartbeats, IDENTIFY → READY + GUILD_CREATE, RESUME with replay, and dispatch.

Frames go out as TEXT JSON. discord.py asks for `compress=zlib-stream` but only inflates BINARY frames,
so plain text is what keeps the fake simple and readable in a debugger.

Sharding works as Discord's (https://discord.com/developers/docs/events/gateway#sharding): an IDENTIFY's
`shard: [shard_id, num_shards]` makes its session receive only the servers with
`(guild_id >> 22) % num_shards == shard_id`, and DMs on shard 0 only; a shard id out of range is closed with
4010, too few shards (when `sharding_required`) with 4011.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .state import FakeState

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_MS = 41_250
IDENTIFY_WINDOW_S = 5.0  # Discord: one IDENTIFY per rate-limit bucket (shard_id % max_concurrency) per 5 s
# Gateway intents (https://discord.com/developers/docs/events/gateway#gateway-intents).
GUILDS = 1 << 0
GUILD_MEMBERS = 1 << 1
GUILD_MESSAGES = 1 << 9
GUILD_MESSAGE_REACTIONS = 1 << 10
MESSAGE_CONTENT = 1 << 15
_EVENT_INTENT = {
    "GUILD_CREATE": GUILDS,
    "GUILD_ROLE_CREATE": GUILDS,
    "CHANNEL_CREATE": GUILDS,
    "THREAD_CREATE": GUILDS,
    "GUILD_MEMBER_ADD": GUILD_MEMBERS,
    "MESSAGE_CREATE": GUILD_MESSAGES,
    "MESSAGE_UPDATE": GUILD_MESSAGES,
    "MESSAGE_DELETE": GUILD_MESSAGES,
    "MESSAGE_DELETE_BULK": GUILD_MESSAGES,
    "MESSAGE_REACTION_ADD": GUILD_MESSAGE_REACTIONS,
    "MESSAGE_REACTION_REMOVE": GUILD_MESSAGE_REACTIONS,
}


@dataclass(eq=False)
class _Connection:
    ws: web.WebSocketResponse
    session: Session | None = None
    sent: int = 0  # the session's frames up to this sequence number went out on this connection
    closed_by_us: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, frame: str) -> None:
        async with self.lock:
            await self.ws.send_str(frame)


@dataclass(eq=False)
class Session:
    id: str
    intents: int
    shard: tuple[int, int] | None = None  # (shard_id, num_shards) from IDENTIFY; None: not sharded
    frames: list[str] = field(default_factory=list)  # every dispatch, frames[s - 1] has sequence s
    connection: _Connection | None = None

    def receives(self, guild_id: int | None) -> bool:
        """Whether a server's events come to this session: its shard's servers; DMs come to shard 0."""
        if self.shard is None:
            return True
        shard_id, count = self.shard
        return shard_id == (0 if guild_id is None else (guild_id >> 22) % count)

    def push(self, event: str, data: dict[str, Any]) -> None:
        seq = len(self.frames) + 1
        self.frames.append(json.dumps({"op": 0, "t": event, "s": seq, "d": data}))
        if self.connection is not None:
            self.connection.wake.set()


class Gateway:
    def __init__(self, state: FakeState, token: Callable[[], str], resume_url: Callable[[], str]) -> None:
        self.state = state
        self._token, self._resume_url = token, resume_url
        self.sessions: dict[str, Session] = {}
        self._connections: set[_Connection] = set()
        self.identifies = self.resumes = self.heartbeats = 0
        self.paths: list[str] = []  # the path of every connection, "/" to identify, "/resume" to resume
        self.shards = 1  # the shard count GET /gateway/bot recommends
        self.sharding_required = False  # an IDENTIFY with fewer shards than `shards` is closed with 4011
        self.max_concurrency = 1  # GET /gateway/bot's: how many rate-limit buckets identify at once
        self.pace_identifies = False  # a second IDENTIFY of a bucket within 5 s gets op 9, as on Discord
        self.identified: list[tuple[int, int] | None] = []  # the `shard` of every accepted IDENTIFY
        self.too_early = 0  # IDENTIFYs refused by the pacing above
        self._identified_at: dict[int, float] = {}  # rate-limit bucket → monotonic time of its last

    @property
    def connected(self) -> bool:
        """Some session is live and has been sent everything dispatched so far."""
        return any(
            s.connection is not None and s.connection.sent >= len(s.frames) for s in self.sessions.values()
        )

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send an event to every session of its server's shard, now or when it resumes; subject to the
        session's intents."""
        guild_id = _guild_of(event, data)
        for session in self.sessions.values():
            if not session.receives(guild_id):
                continue
            needed = _EVENT_INTENT.get(event, 0)
            if needed and not session.intents & needed:
                continue
            session.push(event, self._for_intents(session, event, data))

    async def drop_connection(self, code: int = 4000) -> None:
        """Close every gateway socket as a network fault would; 4000 lets the client RESUME."""
        for connection in list(self._connections):
            connection.closed_by_us = True
            await connection.ws.close(code=code, message=b"dropped by the fake")

    async def close(self) -> None:
        await self.drop_connection(1001)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self.paths.append(request.path)
        connection = _Connection(ws)
        self._connections.add(connection)
        writer = asyncio.create_task(self._writer(connection))
        try:
            hello = {"op": 10, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}, "s": None, "t": None}
            await connection.send(json.dumps(hello))
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    break
                await self._on_frame(connection, json.loads(msg.data))
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            self._connections.discard(connection)
            session = connection.session
            if session is not None and session.connection is connection:
                session.connection = None
                if ws.close_code == 1000 and not connection.closed_by_us:  # the client logged out: the
                    self.sessions.pop(session.id, None)  # session ends, as Discord ends it
            self.state.changed()
        return ws

    async def _on_frame(self, connection: _Connection, frame: dict[str, Any]) -> None:
        op = frame.get("op")
        raw = frame.get("d")
        data: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if op == 1:
            self.heartbeats += 1
            await connection.send(json.dumps({"op": 11, "d": None, "s": None, "t": None}))
        elif op == 2:
            if data.get("token") != self._token():
                await connection.ws.close(code=4004, message=b"Authentication failed.")
                return
            try:
                shard = _shard(data.get("shard"))
            except ValueError:
                await connection.ws.close(code=4010, message=b"Invalid shard.")
                return
            if self.sharding_required and (shard[1] if shard else 1) < self.shards:
                await connection.ws.close(code=4011, message=b"Sharding required.")
                return
            if not self._may_identify(shard[0] if shard else 0):
                self.too_early += 1
                await connection.send(json.dumps({"op": 9, "d": False, "s": None, "t": None}))
                return
            self.identifies += 1
            self.identified.append(shard)
            new = Session(secrets.token_hex(16), int(data.get("intents", 0)), shard)
            self.sessions[new.id] = new
            self._attach(connection, new, 0)
            new.push("READY", self._ready(new))
            for guild in self.state.guilds.values():
                if new.receives(guild.id):
                    new.push("GUILD_CREATE", guild.payload(self.state.clock.iso()))
        elif op == 6:
            session = self.sessions.get(data.get("session_id", ""))
            if session is None or data.get("token") != self._token():
                await connection.send(json.dumps({"op": 9, "d": False, "s": None, "t": None}))
                return
            self.resumes += 1
            self._attach(connection, session, min(int(data.get("seq") or 0), len(session.frames)))
            session.push("RESUMED", {})  # after the replay of what the client missed
        elif op == 8:
            for guild_id in _as_list(data.get("guild_id")):
                wanted = self.state.guilds.get(int(guild_id))
                session = connection.session
                if wanted is not None and session is not None and session.receives(wanted.id):
                    chunk = {
                        "guild_id": str(wanted.id),
                        "members": [m.payload() for m in wanted.members.values()],
                        "chunk_index": 0,
                        "chunk_count": 1,
                        "nonce": data.get("nonce"),
                    }
                    session.push("GUILD_MEMBERS_CHUNK", chunk)
        self.state.changed()

    def _may_identify(self, shard_id: int) -> bool:
        """Whether the shard's rate-limit bucket may IDENTIFY now (always, unless `pace_identifies`)."""
        bucket, now = shard_id % self.max_concurrency, time.monotonic()
        last = self._identified_at.get(bucket)
        if self.pace_identifies and last is not None and now - last < IDENTIFY_WINDOW_S:
            return False
        self._identified_at[bucket] = now
        return True

    def _attach(self, connection: _Connection, session: Session, sent: int) -> None:
        if session.connection is not None and session.connection is not connection:
            session.connection.session = None
        session.connection, connection.session, connection.sent = connection, session, sent
        connection.wake.set()

    async def _writer(self, connection: _Connection) -> None:
        """Send the session's frames in sequence order; the only task that sends dispatches."""
        while True:
            await connection.wake.wait()
            connection.wake.clear()
            while (session := connection.session) is not None and connection.sent < len(session.frames):
                frame = session.frames[connection.sent]
                try:
                    await connection.send(frame)
                except (ConnectionError, RuntimeError) as exc:
                    log.debug("gateway frame not sent: %s", exc)
                    return
                connection.sent += 1
                self.state.changed()

    def _ready(self, session: Session) -> dict[str, Any]:
        state = self.state
        return {
            "v": 10,
            "user": {**state.bot.payload(), "verified": True, "mfa_enabled": False, "flags": 0},
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self._resume_url(),
            "guilds": [{"id": str(g), "unavailable": True} for g in state.guilds if session.receives(g)],
            "application": {"id": str(state.application_id), "flags": 0},
            **({"shard": list(session.shard)} if session.shard else {}),
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "_trace": ["fake-discord"],
        }

    def _for_intents(self, session: Session, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """Without MESSAGE_CONTENT, others' messages arrive empty unless they mention the bot."""
        if event not in ("MESSAGE_CREATE", "MESSAGE_UPDATE") or session.intents & MESSAGE_CONTENT:
            return data
        author = data.get("author", {}).get("id")
        mentioned = f"<@{self.state.bot.id}>" in data.get("content", "")
        if author == str(self.state.bot.id) or mentioned:
            return data
        return {**data, "content": "", "embeds": [], "attachments": [], "components": []}


def _shard(value: Any) -> tuple[int, int] | None:
    """IDENTIFY's `shard` as (shard_id, num_shards), None when absent; ValueError when invalid (4010)."""
    if value is None:
        return None
    ints = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ints or len(value) != 2 or not 0 <= value[0] < value[1]:
        raise ValueError(f"invalid shard {value!r}")
    return value[0], value[1]


def _guild_of(event: str, data: dict[str, Any]) -> int | None:
    """The server an event belongs to (None: a DM, or no server at all)."""
    is_guild = event in ("GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE")
    raw = data.get("id") if is_guild else data.get("guild_id")
    return int(raw) if raw else None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
