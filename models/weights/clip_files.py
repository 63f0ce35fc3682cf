"""CLIP weights in the cache (`CACHE/clip`, laid out as the Hugging Face hub cache), through open_clip.

Any "ARCH/TAG" in open_clip's pretrained registry works, the curated `CLIP_PRESETS` or not, and goes
through the same cache and the same offline message. The registry also says how the weights expect their
images prepared (mean/std, interpolation, resize mode): `clip_preprocess` reads that, so a model loaded
from a cached file is fed exactly what it was trained on.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from iris.errors import BadRequest, WeightsUnavailable
from models.weights.fetch import offline_reason
from models.weights.presets import CLIP_PRESETS

log = logging.getLogger(__name__)


def set_hub_offline(offline: bool) -> None:
    """Make huggingface_hub offline when `weights.offline` is set.

    huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported (open_clip imports it), so
    entry points call this right after reading the config and before importing the engine. Called later,
    it also sets the module's constant, which the hub reads at each request.
    """
    if not offline:
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    if (constants := sys.modules.get("huggingface_hub.constants")) is not None:
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]


def split_clip_name(name: str) -> tuple[str, str]:
    """(open_clip arch, pretrained tag) of a preset or any "ARCH/TAG"."""
    if (preset := CLIP_PRESETS.get(name)) is not None:
        return preset.arch, preset.pretrained
    arch, _, tag = name.partition("/")
    if not arch or not tag:
        known = ", ".join(CLIP_PRESETS)
        raise BadRequest(f"Unknown CLIP preset {name!r}: use ARCH/TAG, e.g. one of {known}.")
    return arch, tag


def clip_cfg(name: str) -> dict[str, Any]:
    """open_clip's registry entry for a preset: where the weights live and how images are prepared."""
    arch, tag = split_clip_name(name)
    # open_clip pulls in torch and torchvision: imported only when CLIP weights are wanted.
    from open_clip.pretrained import get_pretrained_cfg

    cfg: dict[str, Any] = get_pretrained_cfg(arch, tag)
    if not cfg:
        raise BadRequest(
            f"open_clip knows no weights {tag!r} for {arch!r} (see open_clip.list_pretrained()); "
            f"Iris's presets: {', '.join(CLIP_PRESETS)}."
        )
    return cfg


def clip_preprocess(name: str) -> dict[str, Any]:
    """The preset's own preprocessing, as `open_clip.create_model_and_transforms` keyword arguments."""
    cfg = clip_cfg(name)
    keys = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation"}
    out = {arg: cfg[key] for key, arg in keys.items() if cfg.get(key)}
    if cfg.get("resize_mode"):
        out["image_resize_mode"] = cfg["resize_mode"]
    return out


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


def download_clip(name: str, cache_dir: Path, *, offline: bool = False) -> Path:
    """Path of a CLIP preset's weights file under `cache_dir/clip`, downloading it through open_clip."""
    cfg = clip_cfg(name)
    clip_dir = cache_dir / "clip"
    if (cached := _cached_clip_file(cfg, clip_dir)) is not None:
        return cached
    what = f"CLIP weights {name}"
    way_out = (
        f"To fix: run `iris download {name}` on a connected machine and copy the cache dir ({cache_dir}) "
        "here, or set clip.checkpoint to a local weights file in config.yaml."
    )
    if reason := offline_reason(offline):
        raise WeightsUnavailable(
            f"{what} are not in the weights cache and cannot be downloaded: {reason}. {way_out}"
        )
    if (unreachable := _hub_unreachable(cfg)) is not None:
        raise WeightsUnavailable(f"{what} could not be downloaded ({unreachable}). {way_out}")
    from open_clip.pretrained import download_pretrained

    log.info("downloading %s into %s", what, clip_dir)
    try:
        target = download_pretrained(cfg, cache_dir=str(clip_dir))
    except Exception as err:  # hub, HTTP and socket errors come in many types (open_clip rewraps some)
        log.info("download of %s failed: %r", what, err)
        reason = _first_line(err)
        raise WeightsUnavailable(f"{what} could not be downloaded ({reason}). {way_out}") from err
    if not target:
        raise WeightsUnavailable(f"{what}: open_clip found no file to download. {way_out}")
    return Path(target)


def _hub_unreachable(cfg: dict[str, Any], timeout: float = 10.0) -> str | None:
    """Why the weights' host cannot be reached, or None when a connection opens.

    The hub client retries a failed lookup with back-off (about 25 s per file, with a warning each time);
    one plain connection first turns "no network" into one clear line within seconds.
    """
    if cfg.get("hf_hub"):
        from huggingface_hub import constants

        url = constants.ENDPOINT
    else:
        url = cfg.get("url") or ""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except socket.gaierror:
        return f"cannot resolve {parts.hostname} (no network?)"
    except TimeoutError:
        return f"no answer from {parts.hostname} within {timeout:g} s"
    except OSError as e:
        return f"cannot connect to {parts.hostname} ({e.strerror or e})"
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__
