"""Getting one weights file into the cache: try each source in turn, check what arrives, keep only that.

A download goes to a `.part` file named after its source (so two sources never mix their bytes), resumes
from it with a Range request where the server honours one, and becomes the cache file by an atomic rename
only after the checks in `models.weights.verify` pass. A file already in the cache is checked again on
every start: against a known sha256, else the one recorded at its download, else by its content.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from iris.errors import WeightsCorrupt, WeightsUnavailable
from models.weights.presets import Source, WeightFile
from models.weights.verify import (
    Rejected,
    check_file,
    error_page,
    record_sha256,
    recorded_sha256,
    sha256_file,
    sidecar,
)

log = logging.getLogger(__name__)

_CHUNK = 1 << 20  # bytes read per network call
_USER_AGENT = "iris-bot (weights downloader)"
_TRUE = {"1", "true", "yes", "on"}  # what HF_HUB_OFFLINE accepts as "on", case-insensitive
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


class Truncated(ConnectionError):
    """The connection closed before the whole body arrived; the .part is kept to resume."""


@dataclass(frozen=True)
class Cached:
    path: Path
    verified: bool  # its sha256 matches a known value or the one recorded at its verified download


def offline_reason(offline: bool) -> str | None:
    """Why downloads are off, or None when they are allowed."""
    if offline:
        return "offline mode is on (weights.offline)"
    for var in ("IRIS_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"offline mode is on ({var} is set)"
    return None


def describe_error(err: BaseException, url: str, timeout: float) -> str:
    host = urllib.parse.urlsplit(url).hostname or url
    if isinstance(err, Truncated):
        return str(err)
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    cause = err.reason if isinstance(err, urllib.error.URLError) else err  # urlopen wraps connect errors
    if isinstance(cause, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(cause, socket.gaierror):
        return f"cannot resolve {host} (no network?)"
    if isinstance(err, urllib.error.URLError):
        return f"cannot connect ({cause})"
    return f"the transfer failed ({err})"


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header; None where absent or `*`."""
    m = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not m:
        return None, None
    start, total = m.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _request(url: str) -> urllib.request.Request:
    """A GET for `url`; credentials in it (a private mirror's) become a Basic header for its host only."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    request = urllib.request.Request(
        parts._replace(netloc=netloc).geturl(), headers={"User-Agent": _USER_AGENT}
    )
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    request.add_unredirected_header("Authorization", f"Basic {token}")  # never sent on to a redirect target
    return request


def download(url: str, part: Path, *, label: str, progress: bool, timeout: float) -> None:
    """Fill `part` with the body of `url`, resuming from what it holds. Network trouble raises.

    Redirects are followed (urllib keeps the Range header on each hop). A server that ignores Range
    answers 200 with the whole body, which then replaces the part from its first byte.
    """
    for _ in range(2):  # a second pass only after throwing away a .part the server does not match
        have = part.stat().st_size if part.is_file() else 0
        request = _request(url)
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response: Any = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as err:
            if err.code != 416 or not have:
                raise
            _, total = _content_range(err.headers.get("Content-Range"))
            err.close()
            if total == have:
                return  # the .part was complete already
            log.info("%s: the partial download does not match the server's file, starting over", label)
            part.unlink()
            continue
        with response:
            mode = "wb"
            total = int(response.headers.get("Content-Length") or 0) or None
            if have and response.status == 206:
                start, total = _content_range(response.headers.get("Content-Range"))
                if start != have:
                    log.info("%s: the server sent an unexpected range, starting over", label)
                    part.unlink()
                    continue
                mode = "ab"
            elif have:
                log.info("%s: the server ignored the resume request, downloading from the start", label)
                have = 0
            bar = tqdm(
                total=total,
                initial=have,
                desc=label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                disable=not progress,
            )
            with bar, part.open(mode) as out:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        size = part.stat().st_size
        if total is not None and size < total:
            raise Truncated(f"the connection closed after {size} of {total} bytes")
        return
    raise ConnectionError("the server does not honour resume requests consistently")


def _part(folder: Path, name: str, url: str) -> Path:
    """The .part of `name` coming from `url`: one per source, so a resume never mixes two files."""
    return folder / f"{name}.{hashlib.sha256(url.encode()).hexdigest()[:12]}.part"


def _install(tmp: Path, dest: Path, wf: WeightFile) -> None:
    """Check `tmp` against `wf`, then make it `dest` with its sha256 recorded beside it."""
    digest = check_file(tmp, wf, wf.sha256)
    os.replace(tmp, dest)
    record_sha256(dest, digest)


def _unzip(archive: Path, member: str, target: Path) -> None:
    """Copy the zip member whose base name is `member` to `target`; Rejected if there is none."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == member and not n.endswith("/")]
            if not names:
                raise Rejected(f"the zip holds no {member}")
            with zf.open(min(names, key=len)) as src, target.open("wb") as out:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        with archive.open("rb") as f:
            page = error_page(f.read(4096))  # a dead link answers with a page, not a zip
        raise Rejected(f"{page} instead of a zip" if page else f"not a readable zip ({e})") from e


def _try_source(
    source: Source,
    wf: WeightFile,
    dest: Path,
    also: Sequence[tuple[WeightFile, Path]],
    *,
    label: str,
    progress: bool,
    timeout: float,
) -> None:
    """Fetch `wf` from one source into `dest`, or raise (network error, Truncated, Rejected)."""
    folder = dest.parent
    part = _part(folder, source.url.rsplit("/", 1)[-1] if source.member else wf.name, source.url)
    download(source.url, part, label=label, progress=progress, timeout=timeout)
    if source.member is None:
        try:
            _install(part, dest, wf)
        finally:
            part.unlink(missing_ok=True)
        return
    try:
        tmp = dest.with_name(dest.name + ".unzipped")
        try:
            _unzip(part, source.member, tmp)
            _install(tmp, dest, wf)
        finally:
            tmp.unlink(missing_ok=True)
        # The same zip often holds the preset's other files: take them now rather than fetch it twice.
        for other, other_dest in also:
            for s in other.sources:
                if s.url == source.url and s.member and not other_dest.is_file():
                    other_tmp = other_dest.with_name(other_dest.name + ".unzipped")
                    try:
                        _unzip(part, s.member, other_tmp)
                        _install(other_tmp, other_dest, other)
                    except Rejected as e:
                        log.info("%s from %s not taken: %s", other.name, s.describe(), e)
                    finally:
                        other_tmp.unlink(missing_ok=True)
    finally:
        part.unlink(missing_ok=True)


def check_cached(dest: Path, wf: WeightFile) -> Cached | None:
    """The cache file if it passes its checks; a failing one is deleted (with its record) and None given.

    Checked against the known sha256, else the recorded one; with neither (a cache from before records,
    or a file put there by hand) only its content can be checked, and it counts as not verified.
    """
    if not dest.is_file():
        return None
    expected = wf.sha256 or recorded_sha256(dest)
    try:
        if expected is not None:
            actual = sha256_file(dest)
            if actual != expected.lower():
                raise Rejected(f"sha256 {actual} instead of {expected.lower()}")
            return Cached(dest, verified=True)
        check_file(dest, wf, None)
        return Cached(dest, verified=False)
    except Rejected as e:
        log.warning("%s in the cache failed its check (%s): removed", dest, e)
        dest.unlink(missing_ok=True)
        sidecar(dest).unlink(missing_ok=True)
        return None


def obtain(
    wf: WeightFile,
    dest: Path,
    sources: Sequence[Source],
    *,
    label: str,
    way_out: str,
    also: Sequence[tuple[WeightFile, Path]] = (),
    offline: bool = False,
    progress: bool = True,
    timeout: float = 30.0,
) -> Cached:
    """`dest`, checked, downloading it from the first of `sources` that gives a file passing the checks.

    `also`: the preset's other files, taken from a zip on the way when a source is one they share.
    Raises WeightsUnavailable naming every source tried with its reason, then `way_out`; or
    WeightsCorrupt when offline with a damaged cache file.
    """
    had = dest.is_file()
    if (cached := check_cached(dest, wf)) is not None:
        return cached
    if reason := offline_reason(offline):
        if had:
            raise WeightsCorrupt(
                f"{label} in the cache failed its check and cannot be fetched again: {reason}. {way_out}"
            )
        raise WeightsUnavailable(
            f"{label} is not in the weights cache and cannot be downloaded: {reason}. {way_out}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tried: list[str] = []
    for source in sources:
        log.info("downloading %s from %s", label, source.describe())
        try:
            _try_source(source, wf, dest, also, label=label, progress=progress, timeout=timeout)
        except Rejected as e:
            tried.append(f"{source.describe()}: {e}")
        except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts, resets
            tried.append(f"{source.describe()}: {describe_error(e, source.url, timeout)}")
        else:
            if tried:
                log.warning("%s came from %s after %d source(s) failed", label, source.describe(), len(tried))
            for stale in dest.parent.glob(f"{dest.name}.*.part"):  # resumable leftovers of other sources
                stale.unlink(missing_ok=True)
            log.info("saved %s (%d bytes)", dest, dest.stat().st_size)
            return Cached(dest, verified=True)
        log.info("%s: %s", label, tried[-1])
    raise WeightsUnavailable(
        f"{label} could not be downloaded. Tried {len(tried)} source(s): {'; '.join(tried)}. {way_out}"
    )
