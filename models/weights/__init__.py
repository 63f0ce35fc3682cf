"""Model weights: named presets, the checked on-disk cache, and the downloader.

CLIP weights come from the Hugging Face hub through open_clip; VQGAN weights from several public sources
per preset (and first from `weights.mirrors`). Everything lands under one cache dir (`Config.cache_dir`),
so a machine without internet can be given a copy of the cache made by `iris download` on one with it.
"""

from models.weights.clip_files import clip_cfg, clip_preprocess, download_clip, set_hub_offline
from models.weights.command import download
from models.weights.fetch import Cached, obtain
from models.weights.presets import (
    CLIP_PRESETS,
    DEFAULT_CLIP,
    DEFAULT_VQGAN,
    VQGAN_PRESETS,
    ClipPreset,
    Source,
    VQGANPreset,
    WeightFile,
)
from models.weights.upscaler_files import UPSCALER_PRESETS, UpscalerPreset, upscaler_path
from models.weights.vqgan_files import VQGANFiles, mirror_sources, vqgan_paths

__all__ = [
    "CLIP_PRESETS",
    "DEFAULT_CLIP",
    "DEFAULT_VQGAN",
    "UPSCALER_PRESETS",
    "VQGAN_PRESETS",
    "Cached",
    "ClipPreset",
    "Source",
    "UpscalerPreset",
    "VQGANFiles",
    "VQGANPreset",
    "WeightFile",
    "clip_cfg",
    "clip_preprocess",
    "download",
    "download_clip",
    "mirror_sources",
    "obtain",
    "set_hub_offline",
    "upscaler_path",
    "vqgan_paths",
]
