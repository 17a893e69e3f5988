"""The fingerprint names the CURRENT weights: caches keyed by it (zero-shot classifiers, eval features, ONNX
exports) notice a training step or ``load_state_dict`` instead of serving results of the old weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import kontrast
from kontrast import fingerprint
from kontrast import zeroshot as zs

NAMES = ["cat", "dog", "car"]


@pytest.fixture()
def vit(fixtures_dir):
    return kontrast.load(fixtures_dir / "openai_vit.pt")


def _train_step(model: torch.nn.Module) -> None:
    """One AdamW step of a contrastive-style loss on random inputs (in-place parameter updates)."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    pixels = torch.randn(2, 3, model.image_size, model.image_size)
    ids = kontrast.tokenize(["a cat", "a dog"])
    img, txt, scale = model(pixels, ids)
    (-(scale * img @ txt.T).diag().mean()).backward()
    opt.step()
    model.eval()


def test_fingerprint_follows_training_and_load_state_dict(vit, fixtures_dir):
    model, _, _ = vit
    first = fingerprint(model)
    assert fingerprint(model) == first  # remembered, not re-hashed
    _train_step(model)
    trained = fingerprint(model)
    assert trained != first
    other, _, _ = kontrast.load(fixtures_dir / "openai_vit.pt")
    model.load_state_dict(other.state_dict())
    assert fingerprint(model) == first  # the original weights again
    from kontrast.record import forget_fingerprint

    with torch.no_grad():
        model.logit_scale.data.add_(1.0)  # through .data: the version counter does not see it ...
    forget_fingerprint(model)  # ... so the caller says so
    assert fingerprint(model) not in (first, trained)


def test_zero_shot_classifier_is_rebuilt_after_a_training_step(vit, tmp_path):
    model, _, tokenizer = vit
    zs.clear_memory_cache()
    cache = tmp_path / "zs"
    before = zs.build_classifier(model, tokenizer, NAMES, templates=["a {}"], cache_dir=cache)
    _train_step(model)
    after = zs.build_classifier(model, tokenizer, NAMES, templates=["a {}"], cache_dir=cache)
    fresh = zs.build_classifier(model, tokenizer, NAMES, templates=["a {}"], cache=False)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, fresh)
    assert len(list(cache.glob("*.npy"))) == 2  # one entry per weights


def test_eval_features_are_recomputed_after_new_weights(vit, data_dir, tmp_path):
    from kontrast.evaluate.datasets import open_dataset
    from kontrast.evaluate.features import image_features, text_features

    model, preprocess, tokenizer = vit
    dataset = open_dataset(data_dir / "emoji_sample" / "captions.csv", need="captions")
    first = image_features(model, preprocess, dataset, cache_dir=tmp_path)
    texts = ["a red heart", "a flag"]
    txt_first = text_features(model, tokenizer, texts, cache_dir=tmp_path)
    assert image_features(model, preprocess, dataset, cache_dir=tmp_path).cached
    _train_step(model)
    second = image_features(model, preprocess, dataset, cache_dir=tmp_path)
    assert not second.cached and not np.allclose(first.image, second.image)
    assert not np.allclose(txt_first, text_features(model, tokenizer, texts, cache_dir=tmp_path))


def test_onnx_export_names_the_weights_it_holds(vit, tmp_path):
    from kontrast.export.onnx_export import MANIFEST, export_onnx
    from kontrast.export.runtime import OnnxCLIP

    model, _, _ = vit
    export_onnx(model, tmp_path / "a")
    _train_step(model)
    export_onnx(model, tmp_path / "b")
    fa, fb = (json.loads((tmp_path / d / MANIFEST).read_text())["fingerprint"] for d in ("a", "b"))
    assert fa != fb and fb == fingerprint(model)
    runtime = OnnxCLIP(tmp_path / "b")
    pixels = torch.randn(2, 3, model.image_size, model.image_size)
    with torch.no_grad():
        torch.testing.assert_close(runtime.encode_image(pixels), model.encode_image(pixels), atol=1e-4, rtol=1e-4)
    assert fingerprint(runtime) == fb


def test_backend_onnx_cache_follows_the_file(fixtures_dir, tmp_path, monkeypatch):
    """Re-saving other weights to the same path gives a new ONNX export, not the cached one."""
    monkeypatch.setenv("KONTRAST_CACHE", str(tmp_path / "cache"))
    model, _, _ = kontrast.load(fixtures_dir / "openai_vit.pt")
    kontrast.save(model, tmp_path / "m")
    a, _, _ = kontrast.load(tmp_path / "m", backend="onnx")
    _train_step(model)
    kontrast.save(model, tmp_path / "m")
    b, _, _ = kontrast.load(tmp_path / "m", backend="onnx")
    assert fingerprint(a) != fingerprint(b) == fingerprint(model)
