"""VQGAN for inference, built from taming's own modules, with no pytorch-lightning anywhere.

`taming.models.vqgan` imports Lightning 1.x internals and fails to import with Lightning 2.x, so this
module rebuilds the model from the parts that import cleanly (Encoder, Decoder, VectorQuantizer2,
GumbelQuantize), reads taming YAML configs, and loads Lightning `.ckpt` files (or safetensors).
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2
from torch import nn

from iris.errors import WeightsCorrupt, WeightsUnavailable

log = logging.getLogger(__name__)

_GUMBEL_TARGETS = ("GumbelVQ",)
# taming.models.vqgan.VQModel / GumbelVQ and latent-diffusion's ldm.models.autoencoder.VQModel (and its
# VQModelInterface) share the encoder, decoder and quantiser modules and their key names.
_VQ_TARGETS = ("VQModel", "GumbelVQ", "VQModelInterface")
_DROP_PREFIXES = ("loss.",)  # discriminator and LPIPS weights: training only
_NET2NET_PREFIX = "first_stage_model."


@dataclass(frozen=True)
class VQGANConfig:
    ddconfig: dict[str, Any]  # taming Encoder/Decoder arguments (ch, ch_mult, z_channels, resolution, ...)
    n_embed: int  # codebook size
    embed_dim: int  # codebook vector size
    gumbel: bool = False  # GumbelVQ (f8 8192) instead of VQModel

    @property
    def factor(self) -> int:
        """Pixels per latent token along each side (16 for f16, 8 for f8)."""
        return int(2 ** (len(self.ddconfig["ch_mult"]) - 1))

    @classmethod
    def from_dict(cls, cfg: Any) -> VQGANConfig:
        """Read a taming / ldm config: `model: {target, params: {ddconfig, n_embed, embed_dim}}`."""
        try:
            model = cfg["model"]
            target = str(model.get("target", "")).rsplit(".", 1)[-1]
        except (KeyError, TypeError, AttributeError) as e:
            raise WeightsCorrupt(f"not a taming VQGAN config (missing {e})") from e
        if target not in _VQ_TARGETS:
            raise WeightsCorrupt(
                f"not a taming VQGAN config: its target is {model.get('target')!r}, "
                f"not one of {', '.join(_VQ_TARGETS)} (taming or latent-diffusion)"
            )
        try:
            params = model["params"]
            made = cls(
                ddconfig=dict(params["ddconfig"]),
                n_embed=int(params["n_embed"]),
                embed_dim=int(params["embed_dim"]),
                gumbel=target in _GUMBEL_TARGETS,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsCorrupt(f"not a taming VQGAN config (missing {e})") from e
        needed = ("ch", "ch_mult", "z_channels", "resolution", "num_res_blocks", "attn_resolutions")
        if missing := [key for key in needed if key not in made.ddconfig]:
            raise WeightsCorrupt(f"not a taming VQGAN config (ddconfig lacks {', '.join(missing)})")
        return made

    @classmethod
    def from_yaml(cls, path: str | Path) -> VQGANConfig:
        try:
            data = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError as e:
            raise WeightsUnavailable(f"VQGAN config not found: {path}") from e
        except yaml.YAMLError as e:
            raise WeightsCorrupt(f"VQGAN config {path} is not valid YAML: {e}") from e
        return cls.from_dict(data)


class VQGAN(nn.Module):
    """encoder → quant_conv → quantize → post_quant_conv → decoder; images in [-1, 1]."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dd = cfg.ddconfig
        self.encoder = Encoder(**dd)
        with contextlib.redirect_stdout(io.StringIO()):  # taming's Decoder prints its z shape to stdout
            self.decoder = Decoder(**dd)
        self.quant_conv = nn.Conv2d(dd["z_channels"], cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, dd["z_channels"], 1)
        self.quantize: nn.Module
        if cfg.gumbel:
            self.quantize = GumbelQuantize(dd["z_channels"], cfg.embed_dim, n_embed=cfg.n_embed)
        else:
            self.quantize = VectorQuantizer2(cfg.n_embed, cfg.embed_dim, beta=0.25)

    @property
    def factor(self) -> int:
        return self.cfg.factor

    @property
    def codebook(self) -> torch.Tensor:
        """(n_embed, embed_dim) codebook vectors."""
        q = self.quantize
        return q.embed.weight if self.cfg.gumbel else q.embedding.weight  # type: ignore[union-attr, return-value]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] → continuous latents (B, embed_dim, H/f, W/f), before quantisation."""
        return self.quant_conv(self.encoder(x))

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Deterministic code indices (B, h, w) for latents from `encode`."""
        if self.cfg.gumbel:
            return self.quantize.proj(z).argmax(dim=1)  # type: ignore[operator]
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        cb = self.codebook
        d = flat.pow(2).sum(1, keepdim=True) + cb.pow(2).sum(1) - 2 * flat @ cb.T
        return d.argmin(dim=1).view(z.shape[0], z.shape[2], z.shape[3])

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Code indices (B, h, w) → quantised latents (B, embed_dim, h, w)."""
        return self.codebook[codes].permute(0, 3, 1, 2).contiguous()

    def decode(self, zq: torch.Tensor) -> torch.Tensor:
        """Quantised latents → (B, 3, H, W) roughly in [-1, 1]."""
        return self.decoder(self.post_quant_conv(zq))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.embed_codes(self.codes(self.encode(x))))


class _Stub:
    """Stands in for a pickled class whose module is not installed (e.g. Lightning callbacks)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _StubUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Stub,), {"__module__": module})


class _stub_pickle:
    Unpickler = _StubUnpickler
    load = staticmethod(lambda f, **kw: _StubUnpickler(f, **kw).load())
    __name__ = "pickle"


def read_state_dict(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a VQGAN checkpoint: a Lightning `.ckpt`, a plain torch state dict, or safetensors.

    `weights_only` loading comes first. Old Lightning files also pickle training objects; those are
    unpickled (with stand-ins for classes that are not installed) only when `trust_pickle` is set,
    because unpickling can run code.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"VQGAN checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:
            raise WeightsCorrupt(f"{path} is not a readable safetensors file: {e}") from e
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            raise WeightsCorrupt(
                f"{path} pickles objects besides tensors (unpickling can run code), and its sha256 is "
                "neither a known one nor the one recorded at a verified download, so it is not loaded. "
                "If you trust this file, set `vqgan.trust_pickle: true` in the config."
            ) from e
        log.info("%s: weights-only load refused; unpickling the trusted file in full", path)
        ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_stub_pickle)
    except (RuntimeError, EOFError, OSError, io.UnsupportedOperation) as e:
        raise WeightsCorrupt(f"{path} is not a readable checkpoint (truncated download?): {e}") from e
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise WeightsCorrupt(f"{path} holds no state dict")
    return clean_state_dict(sd)


def clean_state_dict(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Keep the first stage of a Net2Net file, drop training-only `loss.*` weights."""
    if any(k.startswith(_NET2NET_PREFIX) for k in sd):
        sd = {k[len(_NET2NET_PREFIX) :]: v for k, v in sd.items() if k.startswith(_NET2NET_PREFIX)}
    return {k: v for k, v in sd.items() if not k.startswith(_DROP_PREFIXES) and isinstance(v, torch.Tensor)}


def load_vqgan(
    config: str | Path | VQGANConfig,
    checkpoint: str | Path,
    device: str | torch.device = "cpu",
    trust_pickle: bool = False,
) -> VQGAN:
    """Build a VQGAN from a taming config and load its weights; eval mode, weights frozen."""
    cfg = config if isinstance(config, VQGANConfig) else VQGANConfig.from_yaml(config)
    model = VQGAN(cfg)
    sd = read_state_dict(checkpoint, trust_pickle=trust_pickle)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise WeightsCorrupt(
            f"{checkpoint} does not fit the VQGAN config: "
            f"missing {_summarise(missing)}; unexpected {_summarise(unexpected)}"
        )
    model.eval().requires_grad_(False)
    return model.to(device)


def _summarise(keys: list[str], most: int = 5) -> str:
    if not keys:
        return "none"
    more = f" (+{len(keys) - most} more)" if len(keys) > most else ""
    return ", ".join(keys[:most]) + more
