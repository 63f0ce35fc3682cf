"""`iris find`'s side of the index: bring a folder's items up to date, embedding only new content."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
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
from iris.index.base import Index


@dataclass
class IndexReport:
    embedded: int = 0  # new images that went through the model
    reused: int = 0  # new or changed files whose content was already embedded
    unchanged: int = 0  # files skipped without reading (same size and mtime)
    bad: int = 0  # unreadable files, skipped and counted
    removed: int = 0  # items whose file is gone
    problems: list[str] = field(default_factory=list)  # one message per bad file


EmbedFn = Callable[[Sequence[Image.Image]], np.ndarray]


def index_folder(
    index: Index,
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
