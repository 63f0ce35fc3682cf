"""A VQGAN preset's two files in the cache: `CACHE/vqgan/NAME/model.yaml` and `.../last.ckpt`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from models.weights.fetch import Cached, obtain, offline_reason
from models.weights.presets import Source, VQGANPreset, WeightFile, vqgan_preset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VQGANFiles:
    config: Path
    checkpoint: Path
    verified: bool  # the checkpoint's sha256 matches a known value or the one recorded at its download


def mirror_sources(mirrors: Sequence[str], preset: str, wf: WeightFile) -> list[Source]:
    """`weights.mirrors` bases, laid out as `BASE/PRESET/FILE` (e.g. .../vq-f8/last.ckpt)."""
    return [Source(f"{base.rstrip('/')}/{preset}/{wf.name}") for base in mirrors]


def _way_out(preset: VQGANPreset, cache_dir: Path) -> str:
    return (
        "To fix: list a private mirror in weights.mirrors (files laid out as "
        f"BASE/{preset.name}/model.yaml and BASE/{preset.name}/last.ckpt), or set vqgan.config and "
        "vqgan.checkpoint to local files in config.yaml, or run "
        f"`iris download {preset.name}` where a source is reachable and copy the cache dir ({cache_dir})."
    )


def vqgan_paths(
    preset_name: str,
    cache_dir: Path,
    *,
    mirrors: Sequence[str] = (),
    offline: bool = False,
    progress: bool = True,
    timeout: float = 30.0,
) -> VQGANFiles:
    """The preset's checked files, downloading (mirrors first, then the preset's sources) what is missing.

    Cached files are checked on every call (see `models.weights.fetch.check_cached`); a damaged one is
    fetched again. Raises WeightsUnavailable listing what was tried and the ways out.
    """
    preset = vqgan_preset(preset_name)
    folder = cache_dir / "vqgan" / preset.name
    dests = {wf.name: folder / wf.name for wf in preset.files}
    way_out = _way_out(preset, cache_dir)
    got: dict[str, Cached] = {}
    # The checkpoint first: for zipped presets its zip carries the config too, so one download serves both.
    for wf in (preset.checkpoint, preset.config):
        dest = dests[wf.name]
        if wf is preset.checkpoint and not dest.is_file() and not offline_reason(offline):
            log.info("%s: about %.1f GB to download", preset.name, preset.approx_bytes / 1e9)
        others = [(o, dests[o.name]) for o in preset.files if o is not wf]
        got[wf.name] = obtain(
            wf,
            dest,
            [*mirror_sources(mirrors, preset.name, wf), *wf.sources],
            label=f"{preset.name}/{wf.name}",
            way_out=way_out,
            also=others,
            offline=offline,
            progress=progress and wf is preset.checkpoint,
            timeout=timeout,
        )
    checkpoint = got[preset.checkpoint.name]
    return VQGANFiles(got[preset.config.name].path, checkpoint.path, checkpoint.verified)
