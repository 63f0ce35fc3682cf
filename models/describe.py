"""/describe: what an image shows, by ranking a built-in vocabulary with CLIP (no labels from the user).

The vocabulary (models/vocabulary.txt: shapes, objects, scenes, styles, media, colours) is embedded once per
CLIP model and kept in memory and on disk (keyed by the model id and the vocabulary's content). Phrases the
model cannot tell apart (text embeddings closer than SAME_PHRASE_COS) collapse to the first one in the
file: a model that has never learnt a word puts it next to words it knows, and such a phrase would
otherwise win on images of the known word.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iris.service.results import Description, Phrase
from models.clip import Clip

log = logging.getLogger(__name__)

VOCABULARY_PATH = Path(__file__).with_name("vocabulary.txt")
SAME_PHRASE_COS = 0.95  # text embeddings at least this close count as one phrase for the model
PROMPT_PARTS = (("shapes", "objects"), ("scenes",), ("styles",), ("media",))  # one phrase from each, in order
MAX_MODELS = 4  # vocabulary embeddings kept in memory (one per CLIP model id)


@dataclass(frozen=True)
class Vocabulary:
    """The phrases this model tells apart, with their embeddings."""

    texts: list[str]
    categories: list[str]
    embeddings: np.ndarray  # (K, D) L2-normalised float32


def read_vocabulary(path: Path = VOCABULARY_PATH) -> list[tuple[str, str]]:
    """(category, phrase) pairs in file order; comments and blank lines skipped."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        category, _, phrase = line.partition("\t")
        if phrase.strip():
            entries.append((category.strip(), phrase.strip()))
    return entries


def distinct(embeddings: np.ndarray, threshold: float = SAME_PHRASE_COS) -> list[int]:
    """Indices of the rows to keep: each row unless an earlier kept row is at least `threshold` close."""
    keep: list[int] = []
    kept = np.zeros((0, embeddings.shape[1]), dtype=embeddings.dtype)
    for i, row in enumerate(embeddings):
        if kept.shape[0] and float((kept @ row).max()) >= threshold:
            continue
        keep.append(i)
        kept = np.vstack([kept, row[None, :]])
    return keep


class Describer:
    """Embeds the vocabulary once per model (memory, then disk) and ranks it for images."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None, path: Path = VOCABULARY_PATH) -> None:
        self.path = path
        self.cache_dir = Path(cache_dir) / "describe" if cache_dir else None
        self._entries: list[tuple[str, str]] | None = None
        self._digest = ""
        self._by_model: dict[str, Vocabulary] = {}
        self._lock = threading.Lock()
        self.builds = 0  # vocabulary embeddings computed with the text tower (tests read it)

    def _read(self) -> list[tuple[str, str]]:
        if self._entries is None:
            self._entries = read_vocabulary(self.path)
            raw = "\n".join(f"{c}\t{p}" for c, p in self._entries) + f"\n{SAME_PHRASE_COS}"
            self._digest = hashlib.sha256(raw.encode()).hexdigest()[:16]
        return self._entries

    def vocabulary(self, clip: Clip) -> Vocabulary:
        """The vocabulary embedded by `clip`: from memory, else the disk cache, else the text tower."""
        with self._lock:
            if clip.name in self._by_model:
                return self._by_model[clip.name]
            entries = self._read()
            vocab = self._load(clip.name, entries)
            if vocab is None:
                vocab = self._build(clip, entries)
                self._save(clip.name, vocab, entries)
            while len(self._by_model) >= MAX_MODELS:
                self._by_model.pop(next(iter(self._by_model)))
            self._by_model[clip.name] = vocab
            return vocab

    def _build(self, clip: Clip, entries: list[tuple[str, str]]) -> Vocabulary:
        self.builds += 1
        emb = clip.encode_texts([p for _, p in entries])  # (N, D)
        keep = distinct(emb)
        log.info("describe: %d of %d phrases are distinct for %s", len(keep), len(entries), clip.name)
        return Vocabulary(
            [entries[i][1] for i in keep], [entries[i][0] for i in keep], np.ascontiguousarray(emb[keep])
        )

    def _file(self, model_id: str) -> Path | None:
        if self.cache_dir is None:
            return None
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)[:80]
        key = hashlib.sha256(model_id.encode()).hexdigest()[:8]
        return self.cache_dir / f"{slug}-{key}-{self._digest}.npz"

    def _load(self, model_id: str, entries: list[tuple[str, str]]) -> Vocabulary | None:
        file = self._file(model_id)
        if file is None or not file.is_file():
            return None
        try:
            with np.load(file) as data:
                keep, emb = data["keep"], data["embeddings"].astype(np.float32)
            return Vocabulary([entries[i][1] for i in keep], [entries[i][0] for i in keep], emb)
        except Exception as e:  # a damaged cache file is rebuilt, never fatal
            log.warning("describe: ignoring the cached vocabulary %s: %s", file, e)
            return None

    def _save(self, model_id: str, vocab: Vocabulary, entries: list[tuple[str, str]]) -> None:
        file = self._file(model_id)
        if file is None:
            return
        index = {(c, p): i for i, (c, p) in enumerate(entries)}
        keep = np.array([index[(c, p)] for c, p in zip(vocab.categories, vocab.texts, strict=True)])
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(".tmp.npz")
            np.savez(tmp, keep=keep, embeddings=vocab.embeddings)
            os.replace(tmp, file)
        except OSError as e:  # the memory copy still serves; the next start embeds again
            log.warning("describe: cannot cache the vocabulary in %s: %s", file, e)

    def describe(self, clip: Clip, features: np.ndarray, top_k: int = 5) -> list[Description]:
        """(N, D) image embeddings → one Description per image."""
        vocab = self.vocabulary(clip)
        scale = float(clip.model.logit_scale.exp())  # type: ignore[operator]
        logits = scale * np.asarray(features, dtype=np.float32) @ vocab.embeddings.T  # (N, K)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        out = []
        for row in probs:
            order = np.argsort(-row, kind="stable")
            best = [
                Phrase(vocab.texts[i], vocab.categories[i], float(row[i])) for i in order[: max(1, top_k)]
            ]
            parts = []
            for cats in PROMPT_PARTS:
                pick = next((int(i) for i in order if vocab.categories[i] in cats), None)
                if pick is not None:
                    parts.append(vocab.texts[pick])
            out.append(Description(best, ", ".join(parts)))
        return out
