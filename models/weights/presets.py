"""Named weight presets: what each CLIP and VQGAN name means, and every place its files are known to live.

Hosts die (the taming share links now answer "Link does not exist" with a normal 200), so each VQGAN file
lists several sources, tried in order after the operator's own mirrors (`weights.mirrors`). Every address
below was found in public code or issue threads; none could be checked from where this was written, which
is why nothing is trusted without the checks in `models.weights.verify`.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field

from iris.errors import BadRequest

CONFIG = "config"  # a taming / latent-diffusion YAML model config
CHECKPOINT = "checkpoint"  # a torch file (zip or legacy pickle) holding the weights


@dataclass(frozen=True)
class Source:
    url: str  # where the file, or the zip holding it, is served
    member: str | None = None  # the file's name inside the zip at `url`; None: `url` serves the file itself

    def describe(self) -> str:
        """Short, for error lists: the host, plus the zip member when there is one."""
        parts = urllib.parse.urlsplit(self.url)
        # Host and port only: a mirror URL may carry credentials, which never go into a message.
        where = (parts.hostname or parts.path) + (f":{parts.port}" if parts.port else "")
        if parts.hostname in ("github.com", "huggingface.co", "raw.githubusercontent.com"):
            where += "/" + "/".join(parts.path.strip("/").split("/")[:2])  # owner/repo tells them apart
        if self.member:
            where += f" ({self.member} in {parts.path.rsplit('/', 1)[-1]})"
        return where


@dataclass(frozen=True)
class WeightFile:
    name: str  # file name in the cache folder, and under each mirror base: model.yaml or last.ckpt
    kind: str  # CONFIG or CHECKPOINT: decides the content check
    sources: tuple[Source, ...]  # public sources, tried in order after weights.mirrors
    sha256: str | None = None  # known hex digest; None: unknown, so the first verified download records one
    size: int | None = None  # exact size in bytes when known


@dataclass(frozen=True)
class VQGANPreset:
    name: str  # the name users type, also the cache folder and the mirror folder
    description: str  # one line for `iris download --list`
    config: WeightFile
    checkpoint: WeightFile
    approx_bytes: int  # what a download costs, for messages only (the whole zip for zipped presets)
    factor: int  # downsampling factor: image side / latent side

    @property
    def files(self) -> tuple[WeightFile, WeightFile]:
        return self.config, self.checkpoint


@dataclass(frozen=True)
class ClipPreset:
    name: str  # the name users type: "ARCH/TAG"
    arch: str  # open_clip model name, e.g. "ViT-B-32"
    pretrained: str  # open_clip pretrained tag, e.g. "laion2b_s34b_b79k"
    description: str = field(default="", compare=False)  # one line for `iris download --list`


def _clip(arch: str, tag: str, description: str) -> ClipPreset:
    return ClipPreset(f"{arch}/{tag}", arch, tag, description)


CLIP_PRESETS: dict[str, ClipPreset] = {
    p.name: p
    for p in (
        _clip("ViT-B-32", "laion2b_s34b_b79k", "ImageNet zero-shot 66.6 %, ~600 MB"),
        _clip("ViT-B-32", "datacomp_xl_s13b_b90k", "ImageNet zero-shot 69.2 %, ~600 MB"),
        _clip("ViT-L-14", "datacomp_xl_s13b_b90k", "ImageNet zero-shot 79.2 %, ~1.7 GB"),
        _clip("ViT-B-32-quickgelu", "openai", "the original OpenAI weights (QuickGELU), 63.3 %"),
    )
}
DEFAULT_CLIP = "ViT-B-32/laion2b_s34b_b79k"


def _heibox(file_id: str) -> Source:
    """A heibox direct-file link, the form the taming README and later projects use."""
    return Source(f"https://heibox.uni-heidelberg.de/f/{file_id}/?dl=1")


def _eleiber(filename: str) -> Source:
    """The GitHub release the VQGAN+CLIP community mirrored the taming files to in June 2021."""
    return Source(f"https://github.com/Eleiber/VQGAN-Mirrors/releases/download/0.0.1/{filename}")


def _hf(repo: str, filename: str) -> Source:
    return Source(f"https://huggingface.co/{repo}/resolve/main/{filename}")


def _taming(
    name: str, description: str, config: list[Source], checkpoint: list[Source], factor: int
) -> VQGANPreset:
    return VQGANPreset(
        name=name,
        description=description,
        config=WeightFile("model.yaml", CONFIG, tuple(config)),
        # ~1 GB each: the checkpoints carry discriminator and optimizer state besides the model.
        # No public checksum is known for them: the first verified download records one.
        checkpoint=WeightFile("last.ckpt", CHECKPOINT, tuple(checkpoint)),
        approx_bytes=1_000_000_000,
        factor=factor,
    )


_LDM_ZIPS = "https://ommer-lab.com/files/latent-diffusion"
# The same configs are committed in the latent-diffusion repository (its download script unzips beside them).
_LDM_CONFIGS = "https://raw.githubusercontent.com/CompVis/latent-diffusion/main/models/first_stage_models"


def _ldm(
    name: str,
    description: str,
    factor: int,
    approx_bytes: int,
    sha256: str | None = None,
    size: int | None = None,
) -> VQGANPreset:
    """A latent-diffusion first-stage VQ model, shipped as `NAME.zip` holding config.yaml and model.ckpt."""
    zipped = f"{_LDM_ZIPS}/{name}.zip"
    return VQGANPreset(
        name=name,
        description=description,
        # A fresh download takes the config out of the checkpoint's zip on the way; these sources serve
        # only a config missing beside a cached checkpoint, so the 1 kB copy comes before the big zip.
        config=WeightFile(
            "model.yaml",
            CONFIG,
            (Source(f"{_LDM_CONFIGS}/{name}/config.yaml"), Source(zipped, "config.yaml")),
        ),
        checkpoint=WeightFile("last.ckpt", CHECKPOINT, (Source(zipped, "model.ckpt"),), sha256, size),
        approx_bytes=approx_bytes,
        factor=factor,
    )


VQGAN_PRESETS: dict[str, VQGANPreset] = {
    p.name: p
    for p in (
        _taming(
            "vqgan_imagenet_f16_1024",
            "taming ImageNet f16, 1024 codes",
            [_heibox("6ecf2af6c658432c8298"), _eleiber("vqgan_imagenet_f16_1024.yaml")],
            [_heibox("140747ba53464f49b476"), _eleiber("vqgan_imagenet_f16_1024.ckpt")],
            16,
        ),
        _taming(
            "vqgan_imagenet_f16_16384",
            "taming ImageNet f16, 16384 codes (the VQGAN+CLIP classic)",
            [_heibox("274fb24ed38341bfa753"), _eleiber("vqgan_imagenet_f16_16384.yaml")],
            [_heibox("867b05fc8c4841768640"), _eleiber("vqgan_imagenet_f16_16384.ckpt")],
            16,
        ),
        _taming(
            "vqgan_gumbel_f8_8192",
            "taming OpenImages f8 GumbelVQ, 8192 codes",
            [_heibox("b24d14998a8d4f19a34f")],
            [_heibox("34a747d5765840b5a99d")],
            8,
        ),
        # Not a copy of vqgan_imagenet_f16_16384: the ImageNet model fine-tuned on CC3M and YFCC100M for
        # dalle-mini (better faces and people), so it is a preset of its own.
        _taming(
            "vqgan_f16_16384_cc3m_yfcc",
            "ImageNet f16 16384 fine-tuned on CC3M + YFCC100M (boris/vqgan_f16_16384, dalle-mini)",
            [_hf("boris/vqgan_f16_16384", "config.yaml")],
            [_hf("boris/vqgan_f16_16384", "model.ckpt")],
            16,
        ),
        # Known digest and size of vq-f4's model.ckpt: a Git LFS pointer and a README in public repos agree.
        _ldm(
            "vq-f4",
            "latent-diffusion OpenImages f4, 8192 codes (zip)",
            4,
            760_000_000,
            sha256="aacf13951f4b18f5af9b47febdc696cf9559305d6de0821084abeaf342439251",
            size=756_175_527,
        ),
        _ldm("vq-f8", "latent-diffusion OpenImages f8, 16384 codes (zip)", 8, 750_000_000),
        _ldm("vq-f8-n256", "latent-diffusion OpenImages f8, 256 codes (zip)", 8, 750_000_000),
        _ldm("vq-f16", "latent-diffusion OpenImages f16, 16384 codes (zip)", 16, 750_000_000),
    )
}
DEFAULT_VQGAN = "vqgan_imagenet_f16_16384"


def vqgan_preset(name: str) -> VQGANPreset:
    if name not in VQGAN_PRESETS:
        raise BadRequest(f"Unknown VQGAN preset {name!r}. Known: {', '.join(VQGAN_PRESETS)}.")
    return VQGAN_PRESETS[name]
