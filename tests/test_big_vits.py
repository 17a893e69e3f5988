"""Plain ViTs with head widths 80 / 88 / 104 and odd MLP ratios, exact against open_clip 3.3 (reference fixtures).

``tests/fixtures/families/vit_hw{80,88,104}_open_clip/`` are open_clip ``local-dir`` folders (float16 weights) made by
``scripts/make_reference_fixtures.py``: ViT-H-14's head width 80 with QuickGELU and DFN's squash preprocessing,
ViT-g-14's 88 with MLP ratio 4.3637, ViT-bigG-14's 104 with MLP ratio 4.9231. Their widths make the 64-wide head
rule give another head count, so a reader that ignores ``head_width`` fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import kontrast

FIXTURES = Path(__file__).parent / "fixtures" / "families"
FAMILIES = ["vit_hw80_open_clip", "vit_hw88_open_clip", "vit_hw104_open_clip"]


def _manifest(name: str) -> dict:
    return json.loads((FIXTURES / "manifest.json").read_text())["families"][name]


def _outputs(model, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {"image_features": model.encode_image(expected["pixels"]),
                "text_features": model.encode_text(expected["tokens"]),
                "logits_per_image": model.get_logits(expected["pixels"], expected["tokens"])[0],
                "logit_scale": model.logit_scale.exp()}


def _assert_matches(out: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    torch.testing.assert_close(out["image_features"], expected["image_features"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["text_features"], expected["text_features"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["logits_per_image"], expected["logits_per_image"], atol=2e-3, rtol=1e-4)
    torch.testing.assert_close(out["logit_scale"], expected["logit_scale"], atol=0, rtol=1e-6)


@pytest.mark.parametrize("name", FAMILIES)
def test_head_width_fixture_loads_exactly(name):
    folder = FIXTURES / name
    expected = load_file(str(folder / "expected.safetensors"))
    model, _, _ = kontrast.load(folder)
    tower = _manifest(name)["image_tower"]
    block = model.visual.transformer.resblocks[0]
    assert block.attn.heads == tower["heads"] != tower["heads_if_64_wide"]
    assert block.mlp.c_fc.out_features == tower["mlp_hidden"]
    _assert_matches(_outputs(model, expected), expected)


@pytest.mark.parametrize("name", FAMILIES)
def test_head_width_fixture_preprocessing_is_bit_exact(name, fixtures_dir):
    """open_clip's eval transform of each shared PNG (squash resize for the DFN-like head-width-80 folder)."""
    expected = load_file(str(FIXTURES / name / "expected.safetensors"))
    _, preprocess, _ = kontrast.load(FIXTURES / name)
    names = [k.split(".", 1)[1] for k in expected if k.startswith("preprocess.")]
    assert len(names) == 6
    for image in names:
        got = preprocess(Image.open(fixtures_dir / "preprocess" / f"{image}.png"))
        torch.testing.assert_close(got, expected[f"preprocess.{image}"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_head_width_models_round_trip_through_save_and_both_export_layouts(name, tmp_path):
    expected = load_file(str(FIXTURES / name / "expected.safetensors"))
    model, _, _ = kontrast.load(FIXTURES / name)
    kontrast.save(model, tmp_path / "kontrast")
    kontrast.export(model, tmp_path / "open_clip", format="open_clip")
    kontrast.export(model, tmp_path / "hf", format="hf")
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())["vision_config"]
    assert hf_cfg["hidden_size"] // hf_cfg["num_attention_heads"] == \
        model.config.vision.head_width
    for sub in ("kontrast", "open_clip", "hf"):
        again, _, _ = kontrast.load(tmp_path / sub)
        assert again.visual.transformer.resblocks[0].attn.heads == model.visual.transformer.resblocks[0].attn.heads
        _assert_matches(_outputs(again, expected), expected)
