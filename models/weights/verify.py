"""What makes a weights file acceptable: its size, its sha256, and its content.

Dead hosts answer with a normal status and an HTML page, so a status code proves nothing: a checkpoint must
look like a torch file, a config must parse as a model config. The sha256 seen at the first verified
download is recorded beside the file (`FILE.sha256`) and checked on every later start.
"""

from __future__ import annotations

import hashlib
import html
import re
import zipfile
from pathlib import Path

import yaml

from models.weights.presets import CHECKPOINT, CONFIG, WeightFile

_CHUNK = 1 << 20  # bytes hashed per read
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format since 1.6 is a zip
_PICKLE_PROTO = 0x80  # a legacy torch.save pickle starts with the PROTO opcode
_MAX_CONFIG_BYTES = 1 << 20  # a model config is a few kB; anything this big is not one
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


class Rejected(Exception):
    """A file failed a check; the message says why, in words fit for a list of sources tried."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar(path: Path) -> Path:
    """Where the sha256 recorded for `path` lives."""
    return path.with_name(path.name + ".sha256")


def recorded_sha256(path: Path) -> str | None:
    try:
        text = sidecar(path).read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    return text[0].lower() if text and re.fullmatch(r"[0-9a-fA-F]{64}", text[0]) else None


def record_sha256(path: Path, digest: str) -> None:
    """Write `FILE.sha256` in the `sha256sum` format, atomically."""
    tmp = sidecar(path).with_suffix(".sha256.tmp")
    tmp.write_text(f"{digest}  {path.name}\n", encoding="ascii")
    tmp.replace(sidecar(path))


def error_page(head: bytes) -> str | None:
    """'an HTML page ("Link does not exist")' or 'a JSON document' when `head` starts one, else None."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    lower = text[:512].lower()
    if lower.startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<?xml")) or b"<html" in lower:
        m = _TITLE.search(text)
        title = html.unescape(m.group(1).decode("utf-8", "replace")).strip() if m else ""
        title = " ".join(title.split())[:80]
        return f'an HTML page ("{title}")' if title else "an HTML page"
    if text[:1] in (b"{", b"["):
        return "a JSON document"
    return None


def check_content(path: Path, kind: str) -> None:
    """Raise Rejected unless `path` looks like a file of this kind."""
    with path.open("rb") as f:
        head = f.read(4096)
    if not head:
        raise Rejected("an empty file")
    if page := error_page(head):
        raise Rejected(f"{page} instead of the {kind}")
    if kind == CHECKPOINT:
        if head.startswith(_ZIP_MAGIC):
            if not zipfile.is_zipfile(path):  # a cut zip has lost its central directory, at the end
                raise Rejected("a torch zip that is cut short (no central directory)")
            return
        if head[0] == _PICKLE_PROTO:
            return
        raise Rejected(f"not a torch checkpoint (it starts with {head[:8]!r})")
    if kind == CONFIG:
        check_config(path)
        return
    raise ValueError(f"unknown file kind {kind!r}")


def check_config(path: Path) -> None:
    """Raise Rejected unless `path` parses as a taming / latent-diffusion VQ model config."""
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        raise Rejected("too large for a model config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise Rejected(f"not a YAML model config ({type(e).__name__})") from e
    # The one home of what a VQGAN config must hold; imported here, as torch comes with it.
    from iris.errors import WeightsCorrupt
    from models.vqgan import VQGANConfig

    try:
        VQGANConfig.from_dict(data)
    except WeightsCorrupt as e:
        raise Rejected(e.message) from e


def check_file(path: Path, wf: WeightFile, expected_sha256: str | None) -> str:
    """Size, content, then sha256 (cheapest and most telling first); the digest seen, or Rejected."""
    size = path.stat().st_size
    if wf.size is not None and size != wf.size:
        # An error page is the likely cause of a wrong size: say so rather than only the numbers.
        with path.open("rb") as f:
            page = error_page(f.read(4096))
        raise Rejected(page or f"{size} bytes instead of {wf.size}")
    check_content(path, wf.kind)
    digest = sha256_file(path)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise Rejected(f"sha256 {digest} instead of {expected_sha256.lower()}")
    return digest
