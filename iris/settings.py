"""Per-user defaults and per-server settings changed from Discord (/settings), kept in SQLite.

config.yaml gives the defaults; a stored value replaces the config's for that user or server. The storage
is a small interface (`SettingsBackend`: get one owner's values, put one value, list a kind) so that a
shared database can back it later; `SqliteSettings` is the one used today. `Settings` sits on top: it
validates every value in one place and keeps server settings in memory (they are read on every command),
user settings in a bounded LRU. Its methods block on I/O: the bot calls the writing ones and `user()`
through `asyncio.to_thread`; `guild()` never touches the disk after `load()`.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from iris.errors import BadRequest
from iris.labels import check_labels
from iris.request import ASPECTS, GENERATORS, PROFILES
from iris.sqlite import connect, transaction

USER, GUILD = "user", "guild"  # the two kinds of owner
MAX_PATTERN_CHARS = 200  # a banned-prompt regex longer than this is refused (bounds matching cost)
MAX_PATTERNS = 50  # banned-prompt regexes per server
MAX_CHANNELS = 100  # channel ids in one server list (imagine channels, /find exclusions)
MAX_LABELS = 50  # default labels per server
MAX_LABEL_CHARS = 100  # characters per default label

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (
    kind TEXT NOT NULL,   -- "user" or "guild"
    owner TEXT NOT NULL,  -- a user or server id
    key TEXT NOT NULL,
    value TEXT NOT NULL,  -- JSON
    PRIMARY KEY (kind, owner, key)
);
"""


@functools.lru_cache(maxsize=1024)
def banned_pattern(pattern: str) -> re.Pattern[str]:
    """A banned-prompt regex, compiled case-insensitively (cached); BadRequest when it is not one."""
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as e:
        raise BadRequest(f"{pattern!r} is not a valid regular expression ({e})") from None


def _channel_ids(value: Any) -> list[str]:
    ids = [str(v) for v in value]
    if len(ids) > MAX_CHANNELS or not all(re.fullmatch(r"[0-9]{15,21}", i) for i in ids):
        raise BadRequest(f"expected at most {MAX_CHANNELS} channel ids")
    return list(dict.fromkeys(ids))


def _patterns(value: Any) -> list[str]:
    patterns = [str(v) for v in value]
    if len(patterns) > MAX_PATTERNS:
        raise BadRequest(f"a server may ban at most {MAX_PATTERNS} patterns")
    for p in patterns:
        if not p.strip() or len(p) > MAX_PATTERN_CHARS:
            raise BadRequest(f"a banned pattern has 1 to {MAX_PATTERN_CHARS} characters")
        banned_pattern(p)
    return list(dict.fromkeys(patterns))


def _cap(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
        raise BadRequest("the per-user queue cap must be a whole number from 0 to 100")
    return value


def _labels(value: Any) -> list[str]:
    return check_labels([str(v) for v in value], MAX_LABELS, MAX_LABEL_CHARS)


def _choice(choices: tuple[str, ...]) -> Any:
    def check(value: Any) -> str:
        if value not in choices:
            raise BadRequest(f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return check


def _steps(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest("steps must be a positive whole number")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadRequest("expected true or false")
    return value


# What each kind may store, and the check of each value. Server keys are GuildConfig's field names.
_CHECKS: dict[str, dict[str, Any]] = {
    USER: {"steps": _steps, "aspect": _choice(ASPECTS), "generator": _choice(GENERATORS),
           "profile": _choice(PROFILES), "private_classify": _flag},
    GUILD: {"imagine_channels": _channel_ids, "max_queued_per_user": _cap, "default_labels": _labels,
            "banned_prompts": _patterns, "find_excluded": _channel_ids},
}  # fmt: skip


@dataclass(frozen=True)
class UserSettings:
    """One person's defaults; None: the config's."""

    steps: int | None = None  # /imagine steps when the command does not say
    aspect: str | None = None  # /imagine picture shape: square, landscape or portrait
    generator: str | None = None  # /imagine generator: vqgan or pixels
    profile: str | None = None  # /imagine cutout recipe: classic, iris or none
    private_classify: bool = False  # /classify answers only to this person (ephemeral)


class SettingsBackend(Protocol):
    """Where settings live. Values are JSON-compatible; an owner with no values gives {}."""

    def get(self, kind: str, owner: str) -> dict[str, Any]: ...
    def put(self, kind: str, owner: str, key: str, value: Any) -> None:  # None removes the key
        ...
    def all(self, kind: str) -> dict[str, dict[str, Any]]: ...
    def close(self) -> None: ...


class SqliteSettings:
    """SettingsBackend in one SQLite file, shared across threads behind a lock."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._db = connect(path, _SCHEMA)
        self._lock = threading.Lock()

    def get(self, kind: str, owner: str) -> dict[str, Any]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value FROM settings WHERE kind = ? AND owner = ?", (kind, owner)
            ).fetchall()
        return {k: json.loads(v) for k, v in rows}

    def put(self, kind: str, owner: str, key: str, value: Any) -> None:
        with self._lock, transaction(self._db):
            if value is None:
                self._db.execute(
                    "DELETE FROM settings WHERE kind = ? AND owner = ? AND key = ?", (kind, owner, key)
                )
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO settings (kind, owner, key, value) VALUES (?, ?, ?, ?)",
                    (kind, owner, key, json.dumps(value)),
                )

    def all(self, kind: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            rows = self._db.execute("SELECT owner, key, value FROM settings WHERE kind = ?", (kind,))
            for owner, key, value in rows.fetchall():
                out.setdefault(owner, {})[key] = json.loads(value)
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Settings:
    """Validated settings over a backend, with server settings in memory and user settings in an LRU."""

    def __init__(self, backend: SettingsBackend, user_cache: int = 1024) -> None:
        self.backend = backend
        self._guilds: dict[str, dict[str, Any]] = {}
        self._users: OrderedDict[str, UserSettings] = OrderedDict()
        self._user_cache = user_cache
        self._lock = threading.Lock()

    def load(self) -> None:
        """Read every server's settings (blocking); a value that no longer validates is left out."""
        loaded = {gid: _valid(GUILD, values) for gid, values in self.backend.all(GUILD).items()}
        with self._lock:
            self._guilds = loaded

    def guild(self, guild_id: str) -> dict[str, Any]:
        """A server's stored settings (GuildConfig field → value); from memory, never blocks."""
        with self._lock:
            return dict(self._guilds.get(guild_id, {}))

    def set_guild(self, guild_id: str, key: str, value: Any) -> Any:
        """Store (or with None, remove) one server setting; returns the value as stored. Blocking."""
        value = check(GUILD, key, value)
        self.backend.put(GUILD, guild_id, key, value)
        with self._lock:
            values = self._guilds.setdefault(guild_id, {})
            if value is None:
                values.pop(key, None)
            else:
                values[key] = value
        return value

    def user(self, user_id: str) -> UserSettings:
        """One person's defaults (blocking on a cache miss)."""
        with self._lock:
            if user_id in self._users:
                self._users.move_to_end(user_id)
                return self._users[user_id]
        found = UserSettings(**_valid(USER, self.backend.get(USER, user_id)))
        with self._lock:
            self._users[user_id] = found
            while len(self._users) > self._user_cache:
                self._users.popitem(last=False)
        return found

    def set_user(self, user_id: str, key: str, value: Any) -> UserSettings:
        """Store (or with None, reset) one of a person's defaults; returns them all. Blocking."""
        value = check(USER, key, value)
        self.backend.put(USER, user_id, key, value)
        with self._lock:
            self._users.pop(user_id, None)
        return self.user(user_id)

    def close(self) -> None:
        self.backend.close()


def check(kind: str, key: str, value: Any) -> Any:
    """The value to store for `key`, validated (BadRequest otherwise); None stays None (a reset)."""
    checks = _CHECKS[kind]
    if key not in checks:
        raise BadRequest(f"unknown setting {key!r}; known: {', '.join(checks)}")
    return None if value is None else checks[key](value)


def _valid(kind: str, values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        try:
            out[key] = check(kind, key, value)
        except BadRequest:
            continue  # written by another version, or by hand: the config's default applies
    return out
