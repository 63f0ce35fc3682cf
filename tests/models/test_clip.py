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
