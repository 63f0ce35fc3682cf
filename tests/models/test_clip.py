"""CLIP wrapper: fidelity to open_clip's own zero-shot path, caching, loading errors, toy accuracy."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from iris.errors import BadRequest, WeightsCorrupt, WeightsUnavailable
from models.clip import load_clip
from models.toy import TOY_DIR, world

LABELS = list(world.CLASSES)


def test_classify_matches_open_clip_zero_shot_classifier(toy_clip, heldout):
    images = [s.image for s in heldout[:24]]
    ours = toy_clip.classify_probs(toy_clip.encode_images(images), LABELS, "openai")

    model = toy_clip.model
    classifier = open_clip.build_zero_shot_classifier(
        model, toy_clip.tokenizer, LABELS, OPENAI_IMAGENET_TEMPLATES, num_classes_per_batch=5
    )
    with torch.no_grad():
        x = torch.stack([toy_clip.preprocess(im) for im in images])
        feats = model.encode_image(x, normalize=True)
        direct = (model.logit_scale.exp() * feats @ classifier).softmax(dim=-1).numpy()
    assert ours.shape == (24, 12)
    np.testing.assert_allclose(ours, direct, atol=1e-5)
    assert ours.max(axis=1).mean() > 0.5  # a trained model: the comparison is not between flat rows


def test_toy_clip_classifies_heldout_images(toy_clip, heldout):
    preds = toy_clip.classify([s.image for s in heldout], LABELS, "openai", top_k=3)
    correct = sum(p[0].label == s.label for p, s in zip(preds, heldout, strict=True))
    assert len(heldout) >= 200
    assert correct / len(heldout) >= 0.95, f"top-1 {correct}/{len(heldout)}"
    assert all(len(p) == 3 and p[0].probability >= p[1].probability >= p[2].probability for p in preds)


def test_label_embeddings_are_cached(toy_clip):
    toy_clip.label_embeddings(["red circle", "blue square"], "simple")
    before = toy_clip.text_forward_passes
    again = toy_clip.label_embeddings(["blue square", "red circle"], "simple")
    assert toy_clip.text_forward_passes == before  # repeated label set: no forward pass
    toy_clip.label_embeddings(["red circle", "a green thing"], "simple")
    assert toy_clip.text_forward_passes == before + 1  # only the new label is encoded
    assert again.shape[0] == 2
    assert torch.allclose(again.norm(dim=1), torch.ones(2), atol=1e-5)


def test_encodings_are_unit_float32(toy_clip, heldout):
    img = toy_clip.encode_images([s.image for s in heldout[:5]], batch_size=2)
    txt = toy_clip.encode_texts(["a red circle", "a blue square"])
    for arr in (img, txt):
        assert arr.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-5)
    # batching does not change results
    np.testing.assert_allclose(
        img, toy_clip.encode_images([s.image for s in heldout[:5]], batch_size=5), atol=1e-5
    )


def test_custom_architecture_random_weights_and_local_checkpoint(tmp_path):
    arch = TOY_DIR / "iris-toy-clip.json"
    random_clip = load_clip("ignored", device="cpu", arch_config=arch)
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in random_clip.model.state_dict().items()}}, path)
    again = load_clip("ignored", device="cpu", arch_config=arch, checkpoint=path)
    t = ["a cat"]
    np.testing.assert_allclose(random_clip.encode_texts(t), again.encode_texts(t), atol=1e-6)

    sd = random_clip.model.state_dict()
    sd.pop("text_projection")
    torch.save(sd, path)
    with pytest.raises(WeightsCorrupt, match="text_projection"):
        load_clip("ignored", device="cpu", arch_config=arch, checkpoint=path)
    with pytest.raises(WeightsUnavailable, match="not found"):
        load_clip("ignored", device="cpu", arch_config=arch, checkpoint=tmp_path / "nope.pt")


def test_unknown_preset_and_offline_preset(tmp_path, monkeypatch):
    with pytest.raises(BadRequest, match="unknown CLIP preset"):
        load_clip("NoSuchNet/x", device="cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="iris download ViT-B-32/laion2b_s34b_b79k") as e:
        load_clip("ViT-B-32/laion2b_s34b_b79k", device="cpu", cache_dir=tmp_path, offline=True)
    assert str(tmp_path) in str(e.value)


def test_empty_labels_refused(toy_clip):
    with pytest.raises(BadRequest):
        toy_clip.classify_probs(np.zeros((1, 128), np.float32), [], "simple")


# -- registry presets: preprocessing, cache, offline -------------------------------------------------------


def test_preset_preprocessing_comes_from_open_clips_registry():
    from models.weights import clip_preprocess

    # PE-Core-T-16-384/meta: mean/std 0.5, bilinear, squash — every field differs from open_clip's default.
    assert clip_preprocess("PE-Core-T-16-384/meta") == {
        "image_mean": (0.5, 0.5, 0.5),
        "image_std": (0.5, 0.5, 0.5),
        "image_interpolation": "bilinear",
        "image_resize_mode": "squash",
    }
    default = clip_preprocess("ViT-B-32/laion2b_s34b_b79k")
    assert default["image_mean"] == open_clip.OPENAI_DATASET_MEAN
    assert (default["image_interpolation"], default["image_resize_mode"]) == ("bicubic", "shortest")
    with pytest.raises(BadRequest, match="knows no weights"):
        clip_preprocess("ViT-B-32/no_such_tag")


def _hub_cache(clip_dir, repo: str, filename: str, data: bytes) -> None:
    """A file laid out as the Hugging Face hub cache holds it (refs/main -> snapshots/<commit>/FILE)."""
    commit = "0" * 40
    root = clip_dir / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    (root / "snapshots" / commit).mkdir(parents=True)
    (root / "snapshots" / commit / filename).write_bytes(data)


def test_cached_weights_keep_the_presets_preprocessing(tmp_path, monkeypatch, toy_clip):
    """Weights loaded from Iris's cache get the registry's preprocessing, not open_clip's default."""
    from open_clip import pretrained
    from torchvision import transforms as T

    from models import weights
    from models.toy import TOY_CLIP_NAME, TOY_CLIP_WEIGHTS
    from models.weights import ClipPreset

    open_clip.add_model_config(TOY_DIR)
    # The registry entry of a release whose preprocessing differs from the default (as PE-Core's does).
    entry = {
        "url": "",
        "hf_hub": "iris-test/toy-clip/",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "interpolation": "bilinear",
        "resize_mode": "squash",
    }
    monkeypatch.setitem(pretrained._PRETRAINED, TOY_CLIP_NAME, {"iristest": entry})
    name = f"{TOY_CLIP_NAME}/iristest"
    monkeypatch.setitem(weights.CLIP_PRESETS, name, ClipPreset(name, TOY_CLIP_NAME, "iristest"))
    _hub_cache(
        tmp_path / "clip", "iris-test/toy-clip", "open_clip_model.safetensors", TOY_CLIP_WEIGHTS.read_bytes()
    )

    clip = load_clip(name, device="cpu", cache_dir=tmp_path, offline=True)
    steps = clip.preprocess.transforms  # type: ignore[attr-defined]
    resize = next(t for t in steps if isinstance(t, T.Resize))
    normalize = next(t for t in steps if isinstance(t, T.Normalize))
    assert resize.interpolation == T.InterpolationMode.BILINEAR
    assert tuple(resize.size) == (clip.image_size, clip.image_size)  # squash: both sides, no crop
    assert tuple(normalize.mean) == (0.5, 0.5, 0.5) and tuple(normalize.std) == (0.5, 0.5, 0.5)
    assert clip._mean.flatten().tolist() == [0.5, 0.5, 0.5]  # generation normalises the same way
    np.testing.assert_allclose(
        clip.encode_texts(["a red square"]), toy_clip.encode_texts(["a red square"]), atol=1e-5
    )


def test_any_registry_name_gets_the_same_offline_error(tmp_path):
    # ViT-B-16/laion2b_s34b_b88k is in open_clip's registry but not among Iris's presets.
    for name in ("ViT-B-32/laion2b_s34b_b79k", "ViT-B-16/laion2b_s34b_b88k"):
        with pytest.raises(WeightsUnavailable) as info:
            load_clip(name, device="cpu", cache_dir=tmp_path, offline=True)
        message = info.value.message
        assert "offline mode is on" in message and f"`iris download {name}`" in message
        assert str(tmp_path) in message and "clip.checkpoint" in message
    assert not (tmp_path / "clip").exists()


def test_offline_config_reaches_huggingface_hub_before_its_import(tmp_path):
    """huggingface_hub reads HF_HUB_OFFLINE once, at import: the CLI sets it before anything imports it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    config = tmp_path / "config.yaml"
    config.write_text(f"weights: {{offline: true, cache_dir: {tmp_path / 'cache'}}}\n")
    script = (
        "import sys\n"
        "from iris import cli\n"
        "assert 'huggingface_hub' not in sys.modules\n"
        f"rc = cli.main(['download', '--config', {str(config)!r}, 'ViT-B-32/laion2b_s34b_b79k'])\n"
        "import huggingface_hub.constants as c\n"
        "print('rc', rc, 'offline', c.HF_HUB_OFFLINE)\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "IRIS_OFFLINE")
    }
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "rc 2 offline True", done.stderr
    assert "offline mode is on" in done.stderr and len(done.stderr.strip().splitlines()) == 1
