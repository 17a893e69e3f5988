"""Every fixture checkpoint reproduces the reference outputs (open_clip 3.3.0 / transformers 5.23.0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import kontrast

CASES = {
    "openai_vit": "openai_vit.pt",
    "openai_vit_jit": "openai_vit.jit.pt",
    "openai_rn": "openai_rn.pt",
    "open_clip_vit": "open_clip_vit",
    "hf_vit": "hf_vit",
}
FORMATS = {"openai_vit": "state_dict", "openai_vit_jit": "openai_jit", "openai_rn": "state_dict",
           "open_clip_vit": "open_clip", "hf_vit": "hf"}


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    return load_file(str(fixtures_dir / "expected.safetensors")), load_file(str(fixtures_dir / "inputs.safetensors"))


@pytest.mark.parametrize("prefix", sorted(CASES))
def test_fixture_outputs(prefix, fixtures_dir, reference):
    expected, inputs = reference
    path = fixtures_dir / CASES[prefix]
    assert kontrast.checkpoints.detect(path) == FORMATS[prefix]
    model, _, _ = kontrast.load(path)
    with torch.no_grad():
        image = model.encode_image(inputs["pixels_64"])
        text = model.encode_text(inputs["tokens"])
        logits, logits_t = model.get_logits(inputs["pixels_64"], inputs["tokens"])
    torch.testing.assert_close(image, expected[f"{prefix}.image_features"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(text, expected[f"{prefix}.text_features"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, expected[f"{prefix}.logits_per_image"], atol=2e-3, rtol=1e-4)
    torch.testing.assert_close(logits_t, logits.T)
    torch.testing.assert_close(model.logit_scale.exp().detach(), expected[f"{prefix}.logit_scale"], atol=0, rtol=1e-6)


def test_end_to_end_from_files(fixtures_dir, reference):
    """Preprocess + tokenizer + model from kontrast.load reproduce the fixture pipeline from the raw files."""
    expected, inputs = reference
    model, preprocess, tokenizer = kontrast.load(fixtures_dir / "openai_vit.pt")
    names = ["rgb_300x200.png", "rgb_97x311.png", "rgba_161x160.png", "photo_320x240.jpg"]
    pixels = torch.stack([preprocess(fixtures_dir / "preprocess" / n) for n in names])
    torch.testing.assert_close(pixels, inputs["pixels_64"], atol=1e-6, rtol=0)
    texts = ["a photo of a cat", "a diagram of a neural network", "A DOG running on the beach!",
             "it's a café in Zürich", "two people riding bikes at sunset, 1999", ""]
    assert torch.equal(tokenizer(texts), inputs["tokens"])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(pixels), expected["openai_vit.image_features"], atol=1e-4, rtol=1e-4)


def test_normalize_and_forward(fixtures_dir, reference):
    _, inputs = reference
    model, _, _ = kontrast.load(fixtures_dir / "openai_vit.pt")
    with torch.no_grad():
        img = model.encode_image(inputs["pixels_64"], normalize=True)
        txt = model.encode_text(inputs["tokens"], normalize=True)
        a, b, scale = model(inputs["pixels_64"], inputs["tokens"])
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(a, img)
    torch.testing.assert_close(b, txt)
    assert scale.ndim == 0


# Parameters of every shipped config: exactly open_clip 3.3.0's count for the same config (the oracle written by
# scripts/make_reference_fixtures.py), or for kontrast's own tiny test configs the count open_clip gives them.
ORACLE = Path(__file__).parent / "fixtures" / "families" / "open_clip_architectures" / "open_clip_architectures.json"
TINY = {"tiny-ViT": 1_725_729, "tiny-RN": 1_944_669, "fixture-ViT": 3_777_089, "fixture-RN": 3_614_109}


@pytest.mark.parametrize("name", kontrast.list_models())
def test_architectures_build(name):
    """Every shipped config builds with open_clip's parameter count (the big ones only on the meta device)."""
    cfg = kontrast.get_model_config(name)
    with torch.device("meta"):
        model = kontrast.create_model(cfg)
    n = sum(p.numel() for p in model.parameters())
    counts = {k: v["params"] for k, v in json.loads(ORACLE.read_text())["architectures"].items()} | TINY
    assert name in counts, f"{name}: no parameter count to check it against; add it to this test"
    assert n == counts[name], (name, n, counts[name])


def test_tiny_models_run():
    for name, size in (("tiny-ViT", 32), ("tiny-RN", 64)):
        model = kontrast.create_model(name).eval()
        with torch.no_grad():
            f = model.encode_image(torch.randn(2, 3, size, size))
            g = model.encode_text(kontrast.tokenize(["a cat", "a dog"]))
        assert f.shape == (2, 32) and g.shape == (2, 32)


def test_list_models_has_the_real_architectures():
    names = kontrast.list_models()
    for n in ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"]:
        assert n in names
