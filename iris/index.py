"""The image search index: SQLite on disk, vectors as fp16 blobs, ranked by dot product in numpy.

One embedding per (content hash, model id), so the same picture posted twice, or a re-scan, never costs a
second forward pass. Items (a file in a folder, an attachment in a channel) point at a content hash within
a scope (a folder, a channel). Nothing here imports torch: embedding is a function the caller passes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from iris.errors import BadImage
from iris.images import (
    DEFAULT_LIMITS,
    IMAGE_SUFFIXES,
    ImageLimits,
    image_sha256,
    load_image,
    read_image_bytes,
)
from iris.sqlite import connect, transaction

log = logging.getLogger(__name__)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    content_hash TEXT NOT NULL,
    model_id TEXT NOT NULL,
    vector BLOB NOT NULL,              -- L2-normalised embedding, float16, little-endian
    PRIMARY KEY (content_hash, model_id)
);
CREATE TABLE IF NOT EXISTS items (
    scope TEXT NOT NULL,               -- what one search covers: a folder, a channel
    key TEXT NOT NULL,                 -- the item within its scope: a relative path, message/attachment ids
    content_hash TEXT,                 -- NULL while unreadable (status 'bad')
    status TEXT NOT NULL DEFAULT 'ok', -- 'ok' or 'bad'
    meta TEXT NOT NULL DEFAULT '{}',   -- JSON: size, mtime, author, url, ...
    PRIMARY KEY (scope, key)
);
CREATE INDEX IF NOT EXISTS items_hash ON items (content_hash);
CREATE TABLE IF NOT EXISTS excluded (
    scope_prefix TEXT NOT NULL,        -- e.g. discord:GUILD:
    channel TEXT NOT NULL,             -- a channel an admin took out of search
    PRIMARY KEY (scope_prefix, channel)
);
CREATE TABLE IF NOT EXISTS finds (
    id TEXT PRIMARY KEY,               -- a /find query, kept so its buttons work after a restart
    data TEXT NOT NULL                 -- JSON
);
CREATE TABLE IF NOT EXISTS scans (
    scope TEXT PRIMARY KEY,            -- a channel's scope
    newest INTEGER,                    -- newest message id seen
    oldest INTEGER,                    -- oldest message id reached going back
    complete INTEGER NOT NULL DEFAULT 0  -- 1 once the scan reached the start of the history
);
"""


@dataclass(frozen=True)
class ScanState:
    newest: int | None = None
    oldest: int | None = None
    complete: bool = False


@dataclass(frozen=True)
class Hit:
    scope: str
    key: str
    score: float  # cosine similarity to the query
    meta: dict[str, Any]


@dataclass
class IndexReport:
    embedded: int = 0  # new images that went through the model
    reused: int = 0  # new or changed files whose content was already embedded
    unchanged: int = 0  # files skipped without reading (same size and mtime)
    bad: int = 0  # unreadable files, skipped and counted
    removed: int = 0  # items whose file is gone
    problems: list[str] = field(default_factory=list)  # one message per bad file


class ImageIndex:
    """Thread-safe (one connection behind a lock); search matrices cached per (scopes, model)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db = connect(self.path, _SCHEMA)
        self._lock = threading.RLock()
        self._version = 0  # bumped on every change; invalidates cached matrices
        self._matrices: dict[
            tuple[tuple[str, ...], str], tuple[int, list[tuple[str, str, str]], np.ndarray]
        ] = {}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ImageIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- vectors -----------------------------------------------------------------------------------
    def missing_vectors(self, hashes: Iterable[str], model_id: str) -> set[str]:
        wanted = set(hashes)
        with self._lock:
            have = {
                row[0]
                for chunk in _chunks(sorted(wanted), 500)
                for row in self._db.execute(
                    f"SELECT content_hash FROM vectors WHERE model_id = ? AND content_hash IN ({_qs(chunk)})",
                    (model_id, *chunk),
                )
            }
        return wanted - have

    def put_vectors(self, model_id: str, vectors: dict[str, np.ndarray]) -> None:
        rows = [(h, model_id, np.asarray(v, dtype="<f2").tobytes()) for h, v in vectors.items()]
        with self._lock, transaction(self._db):
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", rows)
            self._version += 1

    # -- items -------------------------------------------------------------------------------------
    def items(self, scope: str) -> dict[str, tuple[str | None, str, dict[str, Any]]]:
        """key → (content hash, status, meta) for every item of a scope."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, content_hash, status, meta FROM items WHERE scope = ?", (scope,)
            )
            return {k: (h, s, json.loads(m)) for k, h, s, m in rows}

    def upsert(
        self, scope: str, key: str, content_hash: str | None, meta: dict[str, Any], status: str = "ok"
    ) -> None:
        with self._lock, transaction(self._db):
            self._db.execute(
                "INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?)",
                (scope, key, content_hash, status, json.dumps(meta)),
            )
            self._version += 1

    def remove(self, scope: str, keys: Sequence[str]) -> int:
        with self._lock, transaction(self._db):
            n = 0
            for chunk in _chunks(list(keys), 500):
                n += self._db.execute(
                    f"DELETE FROM items WHERE scope = ? AND key IN ({_qs(chunk)})", (scope, *chunk)
                ).rowcount
            self._version += 1
            return n

    def remove_prefix(self, scope: str, prefix: str) -> int:
        """Remove the items of `scope` whose key starts with `prefix` (e.g. every image of one message)."""
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._lock, transaction(self._db):
            n = self._db.execute(
                "DELETE FROM items WHERE scope = ? AND key LIKE ? ESCAPE '\\'", (scope, pattern)
            ).rowcount
            self._version += 1
            return int(n)

    def remove_scope(self, scope: str) -> int:
        """Forget a whole scope (a deleted channel): its items and its scan state."""
        with self._lock, transaction(self._db):
            n = self._db.execute("DELETE FROM items WHERE scope = ?", (scope,)).rowcount
            self._db.execute("DELETE FROM scans WHERE scope = ?", (scope,))
            self._version += 1
            return int(n)

    def scopes(self, prefix: str) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT scope FROM items WHERE scope LIKE ?", (prefix + "%",))
            return [r[0] for r in rows]

    def set_excluded(self, scope_prefix: str, channel: str, excluded: bool) -> None:
        with self._lock:
            if excluded:
                self._db.execute("INSERT OR IGNORE INTO excluded VALUES (?, ?)", (scope_prefix, channel))
            else:
                self._db.execute(
                    "DELETE FROM excluded WHERE scope_prefix = ? AND channel = ?", (scope_prefix, channel)
                )

    def excluded(self, scope_prefix: str) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT channel FROM excluded WHERE scope_prefix = ?", (scope_prefix,))
            return {r[0] for r in rows}

    def missing_for_model(self, scope: str, model_id: str) -> list[tuple[str, dict[str, Any]]]:
        """Items of `scope` with no vector for `model_id` yet (after a model change): (key, meta)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT i.key, i.meta FROM items i LEFT JOIN vectors v ON v.content_hash = i.content_hash "
                "AND v.model_id = ? WHERE i.scope = ? AND i.status = 'ok' AND v.content_hash IS NULL",
                (model_id, scope),
            ).fetchall()
        return [(k, json.loads(m)) for k, m in rows]

    def save_find(self, find_id: str, data: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO finds VALUES (?, ?)", (find_id, json.dumps(data)))

    def get_find(self, find_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM finds WHERE id = ?", (find_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def vector(self, content_hash: str, model_id: str) -> np.ndarray | None:
        with self._lock:
            row = self._db.execute(
                "SELECT vector FROM vectors WHERE content_hash = ? AND model_id = ?", (content_hash, model_id)
            ).fetchone()
        return np.frombuffer(row[0], dtype="<f2").astype(np.float32) if row else None

    def scan_state(self, scope: str) -> ScanState:
        with self._lock:
            q = "SELECT newest, oldest, complete FROM scans WHERE scope = ?"
            row = self._db.execute(q, (scope,)).fetchone()
        return ScanState(row[0], row[1], bool(row[2])) if row else ScanState()

    def set_scan_state(self, scope: str, state: ScanState) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO scans VALUES (?, ?, ?, ?)",
                (scope, state.newest, state.oldest, int(state.complete)),
            )

    def count(self, scope: str | None = None) -> int:
        with self._lock:
            if scope is None:
                return int(self._db.execute("SELECT COUNT(*) FROM items WHERE status = 'ok'").fetchone()[0])
            q = "SELECT COUNT(*) FROM items WHERE status = 'ok' AND scope = ?"
            return int(self._db.execute(q, (scope,)).fetchone()[0])

    # -- search ------------------------------------------------------------------------------------
    def _matrix(self, scopes: Sequence[str], model_id: str) -> tuple[list[tuple[str, str, str]], np.ndarray]:
        cache_key = (tuple(sorted(scopes)), model_id)
        with self._lock:
            cached = self._matrices.get(cache_key)
            if cached and cached[0] == self._version:
                return cached[1], cached[2]
            rows = self._db.execute(
                "SELECT i.scope, i.key, i.meta, v.vector FROM items i JOIN vectors v "
                f"ON v.content_hash = i.content_hash AND v.model_id = ? WHERE i.status = 'ok' "
                f"AND i.scope IN ({_qs(cache_key[0])}) ORDER BY i.scope, i.key",
                (model_id, *cache_key[0]),
            ).fetchall()
            refs = [(s, k, m) for s, k, m, _ in rows]
            mat = (
                np.frombuffer(b"".join(r[3] for r in rows), dtype="<f2")
                .reshape(len(rows), -1)
                .astype(np.float32)
                if rows
                else np.zeros((0, 0), dtype=np.float32)
            )
            self._matrices[cache_key] = (self._version, refs, mat)
            return refs, mat

    def search(self, query: np.ndarray, scopes: Sequence[str], model_id: str, k: int = 10) -> list[Hit]:
        """Top-k items of `scopes` by cosine similarity to the unit vector `query`."""
        refs, mat = self._matrix(scopes, model_id)
        if not refs:
            return []
        scores = mat @ np.asarray(query, dtype=np.float32)
        k = min(k, len(refs))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Hit(refs[i][0], refs[i][1], float(scores[i]), json.loads(refs[i][2])) for i in top]


def _qs(items: Sequence[object]) -> str:
    return ",".join("?" * len(items))


def _chunks(items: list[str], n: int) -> Iterable[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


EmbedFn = Callable[[Sequence[Image.Image]], np.ndarray]


def index_folder(
    index: ImageIndex,
    folder: str | os.PathLike[str],
    embed: EmbedFn,
    model_id: str,
    limits: ImageLimits = DEFAULT_LIMITS,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> IndexReport:
    """Bring a folder's index up to date: embed only files whose content is new to this model."""
    root = Path(folder).resolve()
    scope = f"folder:{root}"
    known = index.items(scope)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    report = IndexReport()
    seen: set[str] = set()
    pending: list[tuple[str, str, dict[str, Any], Image.Image]] = []  # key, hash, meta, image

    def flush() -> None:
        if not pending:
            return
        vecs = embed([p[3] for p in pending])
        index.put_vectors(model_id, {h: v for (_, h, _, _), v in zip(pending, vecs, strict=True)})
        for key, h, meta, _ in pending:
            index.upsert(scope, key, h, meta)
        report.embedded += len({p[1] for p in pending})
        pending.clear()

    for n, path in enumerate(files):
        if progress is not None:
            progress(n, len(files))
        key = path.relative_to(root).as_posix()
        seen.add(key)
        st = path.stat()
        meta: dict[str, Any] = {"path": str(path), "size": st.st_size, "mtime": st.st_mtime_ns}
        old = known.get(key)
        same_file = (
            old is not None and old[2].get("size") == st.st_size and old[2].get("mtime") == st.st_mtime_ns
        )
        if (
            old
            and same_file
            and (old[1] == "bad" or (old[0] and not index.missing_vectors([old[0]], model_id)))
        ):
            report.unchanged += 1 if old[1] == "ok" else 0
            report.bad += 1 if old[1] == "bad" else 0
            continue
        try:
            data = read_image_bytes(path, limits, name=key)
            h = image_sha256(data)
            known_content = not index.missing_vectors([h], model_id) or any(p[1] == h for p in pending)
            image = None if known_content else load_image(data, limits, name=key)
        except BadImage as e:
            index.upsert(scope, key, None, meta, status="bad")
            report.bad += 1
            report.problems.append(e.message)
            continue
        if image is None:
            index.upsert(scope, key, h, meta)
            report.reused += 1
            continue
        pending.append((key, h, meta, image))
        if len(pending) >= batch_size:
            flush()
    flush()
    if progress is not None:
        progress(len(files), len(files))
    gone = [k for k in known if k not in seen]
    if gone:
        report.removed = index.remove(scope, gone)
    return report
