"""Named weight presets, the on-disk cache, and a resumable downloader.

CLIP weights come from the Hugging Face hub through open_clip; VQGAN weights (~1 GB each) come from the
taming-transformers shares on heibox. Everything lands under one cache dir, so a machine without internet
can be given a copy of the cache made by `iris download` on one with it.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import logging
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from iris.errors import BadRequest, WeightsCorrupt, WeightsUnavailable

log = logging.getLogger(__name__)

_CHUNK = 1 << 20  # bytes read per network call
_USER_AGENT = "iris-bot (weights downloader)"
_TRUE = {"1", "true", "yes", "on"}  # what HF_HUB_OFFLINE accepts as "on", case-insensitive
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


@dataclass(frozen=True)
class ClipPreset:
    name: str  # the name users type: "ARCH/TAG"
    arch: str  # open_clip model name, e.g. "ViT-B-32"
    pretrained: str  # open_clip pretrained tag, e.g. "laion2b_s34b_b79k"


@dataclass(frozen=True)
class VQGANPreset:
    name: str  # the name users type, also the cache folder
    config_url: str  # taming YAML config
    checkpoint_url: str  # Lightning .ckpt
    approx_bytes: int  # checkpoint size, approximate: for messages only, never checked
    sha256: str | None  # of the checkpoint; None: not known, so not checked
    factor: int  # downsampling factor: image side / latent side


def _clip(arch: str, tag: str) -> ClipPreset:
    return ClipPreset(f"{arch}/{tag}", arch, tag)


CLIP_PRESETS: dict[str, ClipPreset] = {
    p.name: p
    for p in (
        _clip("ViT-B-32", "laion2b_s34b_b79k"),
        _clip("ViT-B-32", "datacomp_xl_s13b_b90k"),
        _clip("ViT-L-14", "datacomp_xl_s13b_b90k"),
        _clip("ViT-B-32-quickgelu", "openai"),  # OpenAI weights need the QuickGELU variant
    )
}
DEFAULT_CLIP = "ViT-B-32/laion2b_s34b_b79k"


def _heibox(share: str, path: str) -> str:
    quoted = urllib.parse.quote("/" + path, safe="")
    return f"https://heibox.uni-heidelberg.de/d/{share}/files/?p={quoted}&dl=1"


def _vqgan(name: str, share: str, factor: int) -> VQGANPreset:
    return VQGANPreset(
        name=name,
        config_url=_heibox(share, "configs/model.yaml"),
        checkpoint_url=_heibox(share, "ckpts/last.ckpt"),
        # ~1 GB each: the checkpoints carry discriminator and optimizer state besides the model.
        approx_bytes=1_000_000_000,
        sha256=None,  # the shares publish no checksum
        factor=factor,
    )


VQGAN_PRESETS: dict[str, VQGANPreset] = {
    p.name: p
    for p in (
        _vqgan("vqgan_imagenet_f16_1024", "8088892a516d4e3baf92", 16),
        _vqgan("vqgan_imagenet_f16_16384", "a7530b09fed84f80a887", 16),
        _vqgan("vqgan_gumbel_f8_8192", "2e5662443a6b4307b470", 8),
    )
}
DEFAULT_VQGAN = "vqgan_imagenet_f16_16384"


@dataclass(frozen=True)
class UpscalerPreset:
    name: str  # the name users type (imagine.upscaler), also the cache file's stem
    url: str  # the weights file (.pth)
    approx_bytes: int  # for messages only, never checked
    sha256: str | None  # None: not published, so not checked


UPSCALER_PRESETS: dict[str, UpscalerPreset] = {
    p.name: p
    for p in (
        # Real-ESRGAN ×2 (RRDBNet, BSD-3-Clause), from the authors' GitHub release.
        UpscalerPreset(
            "RealESRGAN_x2plus",
            "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth",
            67_000_000,
            None,
        ),
    )
}


def upscaler_path(name: str, cache_dir: Path, *, download: bool = True, offline: bool = False) -> Path:
    """`cache_dir/upscale/NAME.pth` of an upscaler preset, fetched when missing if `download`."""
    if name not in UPSCALER_PRESETS:
        raise BadRequest(f"Unknown upscaler preset {name!r}. Known: {', '.join(UPSCALER_PRESETS)}.")
    preset = UPSCALER_PRESETS[name]
    path = cache_dir / "upscale" / f"{preset.name}.pth"
    if download:
        fetch(preset.url, path, sha256=preset.sha256, offline=offline, name=preset.name, cache_dir=cache_dir)
    return path


def default_cache_dir() -> Path:
    """`$IRIS_CACHE`, else `$XDG_CACHE_HOME/iris`, else `~/.cache/iris`."""
    if explicit := os.environ.get("IRIS_CACHE"):
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "iris"


def _offline_reason(offline: bool) -> str | None:
    """Why downloads are off, or None when they are allowed."""
    if offline:
        return "offline mode is on"
    for var in ("IRIS_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"offline mode is on ({var} is set)"
    return None


def _unavailable(what: str, reason: str, name: str | None, cache_dir: Path) -> WeightsUnavailable:
    command = f"`iris download {name}`" if name else "`iris download NAME` (NAME: the model's preset)"
    return WeightsUnavailable(
        f"{what} is not in the weights cache ({cache_dir}) and cannot be downloaded: {reason}. "
        f"To fix: run {command} on a connected machine and copy the cache dir here, "
        "or set a local path in config.yaml."
    )


def _describe(err: BaseException, url: str, timeout: float) -> str:
    host = urllib.parse.urlsplit(url).hostname or url
    if isinstance(err, urllib.error.HTTPError):
        return f"{host} answered HTTP {err.code} {err.reason}"
    cause = err.reason if isinstance(err, urllib.error.URLError) else err  # urlopen wraps connect errors
    if isinstance(cause, TimeoutError):
        return f"no answer from {host} within {timeout:g} s"
    if isinstance(err, urllib.error.URLError):
        return f"cannot reach {host} ({cause})"
    return f"the download from {host} failed ({err})"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header; None where absent or `*`."""
    m = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not m:
        return None, None
    start, total = m.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _download(
    url: str, part: Path, *, label: str, expected_bytes: int | None, progress: bool, timeout: float
) -> None:
    """Fill `part` with the body of `url`, resuming from what it holds. Network trouble raises."""
    for _ in range(2):  # a second pass only after throwing away a .part the server does not match
        have = part.stat().st_size if part.is_file() else 0
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
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
            total = total or expected_bytes
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
            # Keep the .part: the next call resumes from here.
            raise ConnectionError(f"the connection closed after {size} of {total} bytes")
        return
    raise ConnectionError("the server does not honour resume requests consistently")


def fetch(
    url: str,
    dest: Path,
    *,
    expected_bytes: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    offline: bool = False,
    timeout: float = 30.0,
    name: str | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """Return `dest`, downloading `url` into it first if it is missing.

    The download goes to `dest.part` and resumes from it; `dest` appears, by an atomic rename, only once
    complete and checked. `expected_bytes` is the exact size when known, `sha256` the hex digest.
    `name` (the preset, for `iris download NAME`) and `cache_dir` (default: dest's folder) only shape the
    error message. Offline (the argument, `IRIS_OFFLINE=1` or `HF_HUB_OFFLINE=1`) nothing is requested.
    Raises WeightsUnavailable (offline, or the network failed; a .part is kept to resume) or
    WeightsCorrupt (the finished file fails its size or checksum; it is deleted).
    """
    cache = cache_dir if cache_dir is not None else dest.parent
    label = f"{name}/{dest.name}" if name else dest.name
    reason = _offline_reason(offline)
    if dest.is_file():
        if sha256 is None:
            return dest
        actual = _sha256_file(dest)
        if actual == sha256.lower():
            return dest
        if reason:
            raise WeightsCorrupt(
                f"{dest} fails its checksum (expected sha256 {sha256}, got {actual}) "
                f"and cannot be downloaded again: {reason}."
            )
        log.warning("%s fails its checksum (expected %s, got %s): downloading it again", dest, sha256, actual)
        dest.unlink()
    if reason:
        raise _unavailable(label, reason, name, cache)

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    log.info("downloading %s from %s", label, url)
    try:
        _download(url, part, label=label, expected_bytes=expected_bytes, progress=progress, timeout=timeout)
    except (OSError, http.client.HTTPException) as err:  # URLError, HTTPError, timeouts, resets are OSError
        log.warning("download of %s from %s failed: %r", label, url, err)
        raise _unavailable(label, _describe(err, url, timeout), name, cache) from err

    size = part.stat().st_size
    if expected_bytes is not None and size != expected_bytes:
        part.unlink()
        raise WeightsCorrupt(
            f"{dest} came out {size} bytes instead of {expected_bytes}; the download was deleted, try again."
        )
    if sha256 is not None:
        actual = _sha256_file(part)
        if actual != sha256.lower():
            part.unlink()
            raise WeightsCorrupt(
                f"{dest} fails its checksum (expected sha256 {sha256}, got {actual}); "
                "the download was deleted, try again."
            )
    os.replace(part, dest)
    log.info("saved %s (%d bytes)", dest, size)
    return dest


def _vqgan_preset(name: str) -> VQGANPreset:
    if name not in VQGAN_PRESETS:
        raise BadRequest(f"Unknown VQGAN preset {name!r}. Known: {', '.join(VQGAN_PRESETS)}.")
    return VQGAN_PRESETS[name]


def _clip_preset(name: str) -> ClipPreset:
    if name not in CLIP_PRESETS:
        raise BadRequest(f"Unknown CLIP preset {name!r}. Known: {', '.join(CLIP_PRESETS)}.")
    return CLIP_PRESETS[name]


def vqgan_paths(
    preset_name: str, cache_dir: Path, *, download: bool = True, offline: bool = False, progress: bool = True
) -> tuple[Path, Path]:
    """(config, checkpoint) paths of a VQGAN preset, `cache_dir/vqgan/NAME/{model.yaml,last.ckpt}`.

    With `download` the files are fetched when missing (see `fetch`); without, the paths are returned
    as they are, existing or not.
    """
    preset = _vqgan_preset(preset_name)
    folder = cache_dir / "vqgan" / preset.name
    config, checkpoint = folder / "model.yaml", folder / "last.ckpt"
    if download:
        get = functools.partial(fetch, offline=offline, name=preset.name, cache_dir=cache_dir)
        get(preset.config_url, config, progress=False)
        if not checkpoint.is_file() and not _offline_reason(offline):
            log.info("%s: about %.1f GB to download", preset.name, preset.approx_bytes / 1e9)
        get(preset.checkpoint_url, checkpoint, sha256=preset.sha256, progress=progress)
    return config, checkpoint


def _cached_clip_file(cfg: dict[str, Any], clip_dir: Path) -> Path | None:
    """The file open_clip would load for `cfg` if it is in `clip_dir` already, else None."""
    if hub := cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        # open_clip prefers a safetensors twin when the hub has one; look for it first, as it does.
        candidates = [filename]
        if filename == "open_clip_pytorch_model.bin":
            candidates.insert(0, "open_clip_model.safetensors")
        elif filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        for candidate in candidates:
            found = try_to_load_from_cache(repo_id, candidate, cache_dir=clip_dir)
            if isinstance(found, str):
                return Path(found)
        return None
    if url := cfg.get("url"):
        path = clip_dir / os.path.basename(url)
        return path if path.is_file() else None
    return None


def _clip_cfg(preset: ClipPreset) -> dict[str, Any]:
    # open_clip pulls in torch and torchvision: import it only when CLIP weights are wanted.
    from open_clip.pretrained import get_pretrained_cfg

    cfg: dict[str, Any] = get_pretrained_cfg(preset.arch, preset.pretrained)
    if not cfg:
        raise BadRequest(f"open_clip knows no weights {preset.pretrained!r} for {preset.arch}.")
    return cfg


def clip_weights_cached(preset_name: str, cache_dir: Path) -> bool:
    """Best effort: whether a CLIP preset's weights are in `cache_dir/clip` already."""
    return _cached_clip_file(_clip_cfg(_clip_preset(preset_name)), cache_dir / "clip") is not None


def download_clip(preset_name: str, cache_dir: Path, *, offline: bool = False) -> Path:
    """Path of a CLIP preset's weights file under `cache_dir/clip`, downloading it through open_clip."""
    preset = _clip_preset(preset_name)
    cfg = _clip_cfg(preset)
    clip_dir = cache_dir / "clip"
    if (cached := _cached_clip_file(cfg, clip_dir)) is not None:
        return cached
    what = f"CLIP weights {preset.name}"
    if reason := _offline_reason(offline):
        raise _unavailable(what, reason, preset.name, cache_dir)
    from open_clip.pretrained import download_pretrained

    log.info("downloading %s into %s", what, clip_dir)
    try:
        target = download_pretrained(cfg, cache_dir=str(clip_dir))
    except Exception as err:  # hub, HTTP and socket errors come in many types (open_clip rewraps some)
        log.warning("download of %s failed: %r", what, err)
        raise _unavailable(what, f"the download failed ({err})", preset.name, cache_dir) from err
    if not target:
        raise _unavailable(what, "open_clip found no file to download", preset.name, cache_dir)
    return Path(target)


def download(names: list[str], cache_dir: Path, *, offline: bool = False) -> list[Path]:
    """`iris download [NAMES]`: fetch CLIP and VQGAN presets by name (none: the defaults).

    Every name is checked before anything is downloaded, so a typo fails at once.
    """
    names = list(dict.fromkeys(names or [DEFAULT_CLIP, DEFAULT_VQGAN]))
    unknown = [
        n for n in names if n not in CLIP_PRESETS and n not in VQGAN_PRESETS and n not in UPSCALER_PRESETS
    ]
    if unknown:
        known = ", ".join([*CLIP_PRESETS, *VQGAN_PRESETS, *UPSCALER_PRESETS])
        raise BadRequest(f"Unknown model preset(s): {', '.join(unknown)}. Known: {known}.")
    paths: list[Path] = []
    for name in names:
        if name in CLIP_PRESETS:
            paths.append(download_clip(name, cache_dir, offline=offline))
        elif name in UPSCALER_PRESETS:
            paths.append(upscaler_path(name, cache_dir, offline=offline))
        else:
            paths.extend(vqgan_paths(name, cache_dir, offline=offline))
    return paths
