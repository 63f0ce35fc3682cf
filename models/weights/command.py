"""`iris download`: fetch CLIP, VQGAN and upscaler presets into the cache by name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from iris.errors import BadRequest
from models.weights.clip_files import clip_cfg, download_clip
from models.weights.presets import CLIP_PRESETS, DEFAULT_CLIP, DEFAULT_VQGAN, VQGAN_PRESETS
from models.weights.upscaler_files import UPSCALER_PRESETS, upscaler_path
from models.weights.vqgan_files import vqgan_paths


def download(
    names: Sequence[str],
    cache_dir: Path,
    *,
    mirrors: Sequence[str] = (),
    offline: bool = False,
    progress: bool = True,
    timeout: float = 30.0,
) -> list[Path]:
    """Fetch presets by name (none: the default CLIP and VQGAN); the files, checked, in the cache.

    Every name is checked before anything is downloaded, so a typo fails at once. Besides the presets,
    any "ARCH/TAG" in open_clip's registry is accepted.
    """
    names = list(dict.fromkeys(names or [DEFAULT_CLIP, DEFAULT_VQGAN]))
    special = {**VQGAN_PRESETS, **UPSCALER_PRESETS}
    unknown = [n for n in names if n not in CLIP_PRESETS and n not in special and "/" not in n]
    if unknown:
        known = ", ".join([*CLIP_PRESETS, *VQGAN_PRESETS, *UPSCALER_PRESETS])
        raise BadRequest(f"Unknown model preset(s): {', '.join(unknown)}. Known: {known}.")
    for name in names:
        if name not in special:
            clip_cfg(name)  # an ARCH/TAG open_clip does not know fails here, before any download
    paths: list[Path] = []
    for name in names:
        if name in VQGAN_PRESETS:
            files = vqgan_paths(
                name, cache_dir, mirrors=mirrors, offline=offline, progress=progress, timeout=timeout
            )
            paths += [files.config, files.checkpoint]
        elif name in UPSCALER_PRESETS:
            paths.append(upscaler_path(name, cache_dir, mirrors=mirrors, offline=offline, progress=progress))
        else:
            paths.append(download_clip(name, cache_dir, offline=offline))
    return paths
