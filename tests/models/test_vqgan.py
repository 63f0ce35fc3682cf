"""VQGAN loader: Lightning-layout checkpoints load into our model and compute what taming's modules do."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2

from iris.errors import WeightsCorrupt, WeightsUnavailable
from models.vqgan import VQGANConfig, load_vqgan

DD = dict(
    double_z=False,
    z_channels=32,
    resolution=32,
    in_channels=3,
    out_ch=3,
    ch=32,
    ch_mult=[1, 2],
    num_res_blocks=1,
    attn_resolutions=[16],
    dropout=0.0,
)


def _cfg(gumbel: bool = False) -> VQGANConfig:
    target = "taming.models.vqgan.GumbelVQ" if gumbel else "taming.models.vqgan.VQModel"
    return VQGANConfig.from_dict(
        {"model": {"target": target, "params": {"embed_dim": 32, "n_embed": 64, "ddconfig": DD}}}
    )


class Reference(torch.nn.Module):
    """The same parts, put together directly from taming's modules (what VQModel holds)."""

    def __init__(self, gumbel: bool) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.encoder, self.decoder = Encoder(**DD), Decoder(**DD)
        self.quant_conv = torch.nn.Conv2d(32, 32, 1)
        self.post_quant_conv = torch.nn.Conv2d(32, 32, 1)
        self.quantize = GumbelQuantize(32, 32, n_embed=64) if gumbel else VectorQuantizer2(64, 32, beta=0.25)
        self.gumbel = gumbel
        for p in self.parameters():  # taming's init makes a near-constant codebook: spread it out
            p.data.add_(torch.randn_like(p) * 0.05)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        h = self.quant_conv(self.encoder(x))
        if self.gumbel:
            quant = self.quantize.embed(self.quantize.proj(h).argmax(1)).permute(0, 3, 1, 2)
        else:
            quant, _, _ = self.quantize.eval()(h)
        return self.decoder(self.post_quant_conv(quant))


def _lightning_ckpt(ref: Reference, prefix: str = "") -> dict:
    sd = {prefix + k: v for k, v in ref.state_dict().items()}
    sd[prefix + "loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)
    sd["loss.logvar"] = torch.zeros(())
    if prefix:  # a Net2Net file also holds the transformer
        sd["transformer.tok_emb.weight"] = torch.randn(8, 8)
    return {"state_dict": sd, "epoch": 3, "global_step": 1000, "pytorch-lightning_version": "1.0.8"}


@pytest.mark.parametrize("gumbel", [False, True])
@pytest.mark.parametrize("prefix", ["", "first_stage_model."])
def test_loaded_model_matches_taming_modules(tmp_path, gumbel, prefix):
    ref = Reference(gumbel).eval()
    path = tmp_path / "last.ckpt"
    torch.save(_lightning_ckpt(ref, prefix), path)
    ours = load_vqgan(_cfg(gumbel), path)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        got = ours.reconstruct(x)
    want = ref.reconstruct(x)
    assert got.shape == (2, 3, 32, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not any(p.requires_grad for p in ours.parameters())
    assert ours.factor == 2


def test_missing_key_fails_loudly(tmp_path):
    ckpt = _lightning_ckpt(Reference(False))
    del ckpt["state_dict"]["decoder.conv_out.weight"]
    path = tmp_path / "broken.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(WeightsCorrupt, match=r"missing decoder\.conv_out\.weight"):
        load_vqgan(_cfg(), path)


def test_pickled_training_objects_need_trust(tmp_path):
    # A Lightning callback object whose module is not installed at load time (as with Lightning 1.x files).
    mod = types.ModuleType("pl_callbacks_gone")

    class ModelCheckpoint:
        def __init__(self) -> None:
            self.best = 0.5

    ModelCheckpoint.__module__ = mod.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    mod.ModelCheckpoint = ModelCheckpoint  # type: ignore[attr-defined]
    sys.modules[mod.__name__] = mod
    try:
        ckpt = _lightning_ckpt(Reference(False))
        ckpt["callbacks"] = {"ModelCheckpoint": ModelCheckpoint()}
        path = tmp_path / "old.ckpt"
        torch.save(ckpt, path)
    finally:
        del sys.modules[mod.__name__]
    with pytest.raises(WeightsCorrupt, match="trust_pickle"):
        load_vqgan(_cfg(), path)
    model = load_vqgan(_cfg(), path, trust_pickle=True)
    assert model.codebook.shape == (64, 32)


def test_truncated_and_missing_files(tmp_path):
    path = tmp_path / "cut.ckpt"
    torch.save(_lightning_ckpt(Reference(False)), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(WeightsCorrupt, match=r"cut\.ckpt"):
        load_vqgan(_cfg(), path)
    with pytest.raises(WeightsUnavailable, match="not found"):
        load_vqgan(_cfg(), tmp_path / "absent.ckpt")
    bad_cfg = tmp_path / "model.yaml"
    bad_cfg.write_text("model: {params: {}}\n")
    with pytest.raises(WeightsCorrupt, match="not a taming VQGAN config"):
        load_vqgan(bad_cfg, path)


def test_standard_configs_parse():
    f16 = VQGANConfig.from_dict(
        {
            "model": {
                "target": "taming.models.vqgan.VQModel",
                "params": {
                    "embed_dim": 256,
                    "n_embed": 16384,
                    "ddconfig": {**DD, "ch_mult": [1, 1, 2, 2, 4], "z_channels": 256},
                },
            }
        }
    )
    gumbel = VQGANConfig.from_dict(
        {
            "model": {
                "target": "taming.models.vqgan.GumbelVQ",
                "params": {"embed_dim": 256, "n_embed": 8192, "ddconfig": {**DD, "ch_mult": [1, 1, 2, 4]}},
            }
        }
    )
    assert (f16.factor, f16.gumbel) == (16, False)
    assert (gumbel.factor, gumbel.gumbel) == (8, True)


# -- latent-diffusion first-stage VQ models (vq-f4, vq-f8, vq-f8-n256, vq-f16) ----------------------------

# The shapes of the four released configs (CompVis/latent-diffusion models/first_stage_models/*/config.yaml):
# (embed_dim = z_channels, n_embed, ch_mult, attn_resolutions); all ch 128, 2 res blocks, 256 px.
LDM_SHAPES = {
    "vq-f4": (3, 8192, [1, 2, 4], []),
    "vq-f8": (4, 16384, [1, 2, 2, 4], [32]),
    "vq-f8-n256": (4, 256, [1, 2, 2, 4], [32]),
    "vq-f16": (8, 16384, [1, 1, 2, 2, 4], [16]),
}


def _ldm_config(
    z: int, n_embed: int, ch_mult: list[int], attn: list[int], ch: int = 128, res: int = 256
) -> dict:
    """A config laid out as latent-diffusion's: ldm target, monitor, lossconfig, a data section."""
    return {
        "model": {
            "base_learning_rate": 4.5e-06,
            "target": "ldm.models.autoencoder.VQModel",
            "params": {
                "embed_dim": z,
                "n_embed": n_embed,
                "monitor": "val/rec_loss",
                "ddconfig": {
                    "double_z": False,
                    "z_channels": z,
                    "resolution": res,
                    "in_channels": 3,
                    "out_ch": 3,
                    "ch": ch,
                    "ch_mult": ch_mult,
                    "num_res_blocks": 1 if ch < 128 else 2,
                    "attn_resolutions": attn,
                    "dropout": 0.0,
                },
                "lossconfig": {
                    "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                    "params": {"disc_start": 250001, "disc_weight": 0.75, "codebook_weight": 1.0},
                },
            },
        },
        "data": {"target": "main.DataModuleFromConfig", "params": {"batch_size": 10}},
    }


@pytest.mark.parametrize("name", list(LDM_SHAPES))
def test_ldm_configs_parse_and_match_their_presets(name):
    from models.weights import VQGAN_PRESETS

    cfg = VQGANConfig.from_dict(_ldm_config(*LDM_SHAPES[name]))
    preset = VQGAN_PRESETS[name]
    assert cfg.factor == preset.factor and not cfg.gumbel
    assert preset.checkpoint.sources[0].url == f"https://ommer-lab.com/files/latent-diffusion/{name}.zip"
    assert [s.member for s in preset.checkpoint.sources] == ["model.ckpt"]
    assert [s.member for s in preset.config.sources] == [None, "config.yaml"]


class LdmReference(torch.nn.Module):
    """ldm's VQModel for inference, put together from taming's modules (the same classes and key names)."""

    def __init__(self, dd: dict, z: int, n_embed: int) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.encoder, self.decoder = Encoder(**dd), Decoder(**dd)
        self.quant_conv = torch.nn.Conv2d(z, z, 1)
        self.post_quant_conv = torch.nn.Conv2d(z, z, 1)
        self.quantize = VectorQuantizer2(n_embed, z, beta=0.25)
        for p in self.parameters():
            p.data.add_(torch.randn_like(p) * 0.05)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        quant, _, _ = self.quantize.eval()(self.quant_conv(self.encoder(x)))
        return self.decoder(self.post_quant_conv(quant))


def _ldm_zip(tmp_path, mutate=None):
    """A tiny vq-f4-shaped model zipped as the released ones are: config.yaml and model.ckpt inside."""
    import io
    import zipfile

    import yaml

    cfg = _ldm_config(3, 64, [1, 2, 4], [], ch=32, res=32)
    ref = LdmReference(cfg["model"]["params"]["ddconfig"], 3, 64).eval()
    sd = dict(ref.state_dict())
    sd["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)
    if mutate:
        mutate(sd)
    buf = io.BytesIO()
    torch.save({"state_dict": sd, "epoch": 7, "global_step": 10}, buf)
    path = tmp_path / "vq-tiny.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.yaml", yaml.safe_dump(cfg))
        zf.writestr("model.ckpt", buf.getvalue())
    return path, ref


def _zip_preset(monkeypatch, archive):
    from models import weights
    from models.weights import Source, VQGANPreset, WeightFile

    url = archive.as_uri()
    preset = VQGANPreset(
        "vq-tiny",
        "a tiny vq-f4 look-alike",
        WeightFile("model.yaml", "config", (Source(url, "config.yaml"),)),
        WeightFile("last.ckpt", "checkpoint", (Source(url, "model.ckpt"),)),
        archive.stat().st_size,
        4,
    )
    monkeypatch.setitem(weights.VQGAN_PRESETS, preset.name, preset)
    return preset


def test_ldm_zip_preset_loads_strictly_and_computes_what_the_modules_do(tmp_path, monkeypatch):
    from models.weights import vqgan_paths

    archive, ref = _ldm_zip(tmp_path)
    _zip_preset(monkeypatch, archive)
    files = vqgan_paths("vq-tiny", tmp_path / "cache", progress=False)
    assert files.verified and {p.name for p in files.config.parent.glob("*.part")} == set()
    model = load_vqgan(files.config, files.checkpoint)
    assert model.factor == 4 and model.codebook.shape == (64, 3)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model.reconstruct(x), ref.reconstruct(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        (lambda sd: sd.pop("decoder.conv_out.bias"), r"missing decoder\.conv_out\.bias"),
        (lambda sd: sd.pop("quantize.embedding.weight"), r"missing quantize\.embedding\.weight"),
        (
            lambda sd: sd.__setitem__("encoder.extra.weight", torch.zeros(1)),
            r"unexpected encoder\.extra\.weight",
        ),
        (lambda sd: sd.__setitem__("model_ema.decay", torch.zeros(())), r"unexpected model_ema\.decay"),
    ],
)
def test_ldm_missing_or_extra_key_fails_naming_it(tmp_path, monkeypatch, mutate, named):
    from models.weights import vqgan_paths

    archive, _ = _ldm_zip(tmp_path, mutate)
    _zip_preset(monkeypatch, archive)
    files = vqgan_paths("vq-tiny", tmp_path / "cache", progress=False)
    with pytest.raises(WeightsCorrupt, match=named):
        load_vqgan(files.config, files.checkpoint)
