"""Super-resolution weights for the *Upscale* button: presets checked like every other weights file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from iris.errors import BadRequest
from models.weights.fetch import obtain
from models.weights.presets import CHECKPOINT, Source, WeightFile
from models.weights.vqgan_files import mirror_sources


@dataclass(frozen=True)
class UpscalerPreset:
    name: str  # the name users type (imagine.upscaler), also the cache file's stem and the mirror folder
    file: WeightFile  # the weights file (.pth, a torch zip)
    approx_bytes: int  # for messages only


UPSCALER_PRESETS: dict[str, UpscalerPreset] = {
    p.name: p
    for p in (
        # Real-ESRGAN ×2 (RRDBNet, BSD-3-Clause), from the authors' GitHub release. No published sha256:
        # the first verified download records one.
        UpscalerPreset(
            "RealESRGAN_x2plus",
            WeightFile(
                "RealESRGAN_x2plus.pth",
                CHECKPOINT,
                (
                    Source(
                        "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth"
                    ),
                ),
            ),
            67_000_000,
        ),
    )
}


def upscaler_path(
    name: str,
    cache_dir: Path,
    *,
    download: bool = True,
    mirrors: Sequence[str] = (),
    offline: bool = False,
    progress: bool = True,
) -> Path:
    """`cache_dir/upscale/NAME.pth` of an upscaler preset, fetched and checked when missing if `download`."""
    if name not in UPSCALER_PRESETS:
        raise BadRequest(f"Unknown upscaler preset {name!r}. Known: {', '.join(UPSCALER_PRESETS)}.")
    preset = UPSCALER_PRESETS[name]
    path = cache_dir / "upscale" / preset.file.name
    if download:
        way_out = (
            f"To fix: run `iris download {name}` where a source is reachable and copy the cache dir "
            f"({cache_dir}), list a private mirror in weights.mirrors (BASE/{name}/{preset.file.name}), "
            "or set imagine.upscaler to a local file."
        )
        obtain(
            preset.file,
            path,
            [*mirror_sources(mirrors, name, preset.file), *preset.file.sources],
            label=name,
            way_out=way_out,
            offline=offline,
            progress=progress,
        )
    return path
