"""SigLIP / SigLIP 2 in open_clip and Hugging Face layouts against the reference fixtures (tests/fixtures/families).

Each family loads exactly (features 1e-4, logits 2e-3, scale and bias exact, preprocessing of the PNGs bit-exact,
token ids exact), round trips through both layouts, and unsupported configs are refused in one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

import kontrast
from kontrast.checkpoints import siglip_convert, siglip_io
from kontrast.errors import CheckpointError, KontrastError
from kontrast.models.siglip import SigLIP

FAMILIES = Path(__file__).parent / "fixtures" / "families"
MANIFEST = json.loads((FAMILIES / "manifest.json").read_text())
SIGLIP = ["siglip_open_clip", "siglip2_open_clip", "siglip_hf", "siglip2_hf"]


def _expected(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(FAMILIES / name / "expected.safetensors"))


def _pixels(model: SigLIP, exp: dict[str, torch.Tensor]) -> torch.Tensor:
    if "pixels" in exp:
        return exp["pixels"]
    if exp["inputs.pixel_values"].dim() == 3:  # Siglip2 NaFlex patches
        return model.visual.from_patches(exp["inputs.pixel_values"], exp["inputs.pixel_attention_mask"],
                                         exp["inputs.spatial_shapes"])
    return exp["inputs.pixel_values"]


def _check_outputs(model: SigLIP, exp: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        pixels = _pixels(model, exp)
        img = model.encode_image(pixels)
        txt = model.encode_text(exp["tokens"])
        logits, _ = model.get_logits(pixels, exp["tokens"])
    torch.testing.assert_close(img, exp["image_features"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(txt, exp["text_features"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, exp["logits_per_image"], atol=2e-3, rtol=1e-4)
    torch.testing.assert_close(model.logit_scale.exp(), exp["logit_scale"], atol=0, rtol=1e-6)
    torch.testing.assert_close(model.logit_bias.detach(), exp["logit_bias"], atol=0, rtol=1e-6)


@pytest.mark.parametrize("name", SIGLIP)
def test_family_loads_exactly(name, caplog):
    model, preprocess, tokenizer = kontrast.load(FAMILIES / name)
    assert isinstance(model, SigLIP) and model.sigmoid
    exp = _expected(name)
    _check_outputs(model, exp)
    assert torch.equal(tokenizer(MANIFEST["families"][name]["texts"]), exp["tokens"])
    if name != "siglip2_hf":  # Siglip2's own processor keeps the aspect ratio (NaFlex); kontrast feeds the fixed grid
        for key, value in exp.items():
            if key.startswith("preprocess."):
                image = Image.open(Path("/work/shared/fixtures/preprocess") / f"{key.split('.', 1)[1]}.png")
                torch.testing.assert_close(preprocess(image), value, atol=1e-6, rtol=0)


def test_siglip2_processor_square_image_matches_fixed_grid():
    """For a square image the NaFlex processor gives the fixed grid, and kontrast's preprocess the same pixels."""
    model, preprocess, _ = kontrast.load(FAMILIES / "siglip2_hf")
    exp = _expected("siglip2_hf")
    assert exp["preprocess_spatial_shapes.rgb_64x64"].tolist() == [4, 4]
    patches = exp["preprocess.rgb_64x64"].unsqueeze(0)
    pixels = model.visual.from_patches(patches, exp["preprocess_mask.rgb_64x64"].unsqueeze(0))
    image = Image.open("/work/shared/fixtures/preprocess/rgb_64x64.png")
    torch.testing.assert_close(preprocess(image).unsqueeze(0), pixels, atol=1e-6, rtol=0)


def test_naflex_other_grids_refused_in_one_line():
    model, _, _ = kontrast.load(FAMILIES / "siglip2_hf")
    exp = _expected("siglip2_hf")
    with pytest.raises(ValueError, match=r"spatial_shapes \[\(3, 5\)\]") as info:
        model.visual.from_patches(exp["preprocess.rgb_300x200"].unsqueeze(0),
                                  exp["preprocess_mask.rgb_300x200"].unsqueeze(0),
                                  exp["preprocess_spatial_shapes.rgb_300x200"].unsqueeze(0))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["siglip_hf", "siglip2_hf"])
def test_hidden_states_match_transformers(name):
    model, _, _ = kontrast.load(FAMILIES / name)
    exp = _expected(name)
    with torch.no_grad():
        pixels = _pixels(model, exp)
        image_states = model.encode_image(pixels, output="hidden_states")
        text_states = model.encode_text(exp["tokens"], output="hidden_states")
        last_image = model.encode_image(pixels, output="last_hidden_state")
        penultimate = model.encode_text(exp["tokens"], output="tokens", layer=-2)
    for i, state in enumerate(image_states):
        torch.testing.assert_close(state, exp[f"image_hidden_states.{i}"], atol=1e-4, rtol=1e-4)
    for i, state in enumerate(text_states):
        torch.testing.assert_close(state, exp[f"text_hidden_states.{i}"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(last_image, exp["image_last_hidden_state"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(penultimate, exp[f"text_hidden_states.{len(text_states) - 2}"], atol=1e-4, rtol=1e-4)
    assert image_states[-1].shape[1] == model.visual.grid_size**2  # every patch, no class token


def test_open_clip_image_tokens_after_final_norm():
    model, _, _ = kontrast.load(FAMILIES / "siglip_open_clip")
    exp = _expected("siglip_open_clip")
    with torch.no_grad():
        tokens = model.encode_image(exp["pixels"], output="last_hidden_state")
    torch.testing.assert_close(tokens, exp["image_tokens_final_norm"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", SIGLIP)
@pytest.mark.parametrize("fmt", ["open_clip", "hf"])
def test_round_trip_both_layouts(name, fmt, tmp_path):
    model, preprocess, tokenizer = kontrast.load(FAMILIES / name)
    if fmt == "open_clip" and name.endswith("_hf"):
        # HF towers use tanh GELU and 32-wide heads: no timm trunk has that shape, so open_clip could not build it
        with pytest.raises(CheckpointError, match="matches no timm trunk"):
            siglip_io.save(model, tmp_path / "out", format=fmt)
        return
    siglip_io.save(model, tmp_path / "out", format=fmt)
    again, preprocess2, tokenizer2 = kontrast.load(tmp_path / "out")
    arch = ("vision", "text", "image_size", "patch_size", "vocab_size", "context_length", "embed_dim", "naflex")
    assert [getattr(again.config, a) for a in arch] == [getattr(model.config, a) for a in arch]
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    exp = _expected(name)
    _check_outputs(again, exp)
    texts = MANIFEST["families"][name]["texts"]
    if fmt == "open_clip" or name.endswith("_hf"):
        assert torch.equal(tokenizer2(texts), tokenizer(texts))
        image = Image.open("/work/shared/fixtures/preprocess/rgba_161x160.png")
        assert torch.equal(preprocess2(image), preprocess(image))


def test_open_clip_layout_written_is_the_original():
    """kontrast -> open_clip names gives back exactly the tensors open_clip saved (same keys, same values)."""
    original = load_file(str(FAMILIES / "siglip_open_clip" / "open_clip_model.safetensors"))
    back = siglip_convert.kontrast_to_open_clip(siglip_convert.open_clip_to_kontrast(original))
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)
    for name, naflex in (("siglip_hf", False), ("siglip2_hf", True)):
        original = load_file(str(FAMILIES / name / "model.safetensors"))
        back = siglip_convert.kontrast_to_hf(siglip_convert.hf_to_kontrast(original, patch_size=16), naflex=naflex)
        assert back.keys() == original.keys()
        assert all(torch.equal(back[k], original[k]) for k in original)


def test_unknown_trunk_reads_shapes_with_a_warning(caplog):
    with caplog.at_level("WARNING"):
        model, _, _ = kontrast.load(FAMILIES / "siglip_open_clip")
    assert "vit_kxtest_patch16_siglip_64" in caplog.text and "heads = width / 64 = 2" in caplog.text
    assert model.visual.transformer.resblocks[0].attn.heads == 2


def test_timm_table_matches_timm():
    """kontrast's table of timm SigLIP trunks agrees with what timm 1.0.31 builds (fixture JSON)."""
    from kontrast.checkpoints.siglip_formats import TIMM_SIGLIP_TRUNKS

    timm = json.loads((FAMILIES / "siglip_open_clip" / "timm_siglip_trunks.json").read_text())
    real = {k: v for k, v in timm.items() if v["global_pool"] == "map" and "kxtest" not in k}
    assert set(TIMM_SIGLIP_TRUNKS) == set(real)
    for name, (size, patch, width, depth, heads, hidden, act) in TIMM_SIGLIP_TRUNKS.items():
        t = real[name]
        assert (size, patch, width, depth, heads, hidden) == (t["image_size"][0], t["patch_size"][0], t["width"],
                                                             t["depth"], t["heads"], t["mlp_hidden"]), name
        assert (act == "gelu_tanh") == ("tanh" in t["act"].lower()), name
        assert t["attn_pool_heads"] == heads and not t["class_token"], name


def _copy(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(FAMILIES / name, dest)
    return dest


@pytest.mark.parametrize(("section", "key", "value", "needle"), [
    ("vision_cfg", "timm_pool", "avg", "vision_cfg.timm_pool = 'avg'"),
    ("vision_cfg", "timm_proj", "linear", "vision_cfg.timm_proj = 'linear'"),
    ("text_cfg", "pool_type", "argmax", "text_cfg.pool_type = 'argmax'"),
    ("text_cfg", "no_causal_mask", False, "text_cfg.no_causal_mask = False"),
    ("text_cfg", "rope", True, "text_cfg.rope = True"),
])
def test_unsupported_open_clip_config_refused(tmp_path, section, key, value, needle):
    folder = _copy("siglip_open_clip", tmp_path)
    raw = json.loads((folder / "open_clip_config.json").read_text())
    raw["model_cfg"][section][key] = value
    (folder / "open_clip_config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError) as info:
        kontrast.load(folder)
    assert needle in str(info.value) and str(folder) in str(info.value) and "\n" not in str(info.value)


def test_known_trunk_name_with_other_weights_refused(tmp_path):
    folder = _copy("siglip_open_clip", tmp_path)
    raw = json.loads((folder / "open_clip_config.json").read_text())
    raw["model_cfg"]["vision_cfg"]["timm_model_name"] = "vit_base_patch16_siglip_224"
    (folder / "open_clip_config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="do not fit timm trunk vit_base_patch16_siglip_224"):
        kontrast.load(folder)


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("hidden_act", "relu", "vision_config.hidden_act = 'relu'"),
    ("vision_use_head", False, "vision_use_head = false"),
    ("use_rope", True, "vision_config.use_rope = True"),
])
def test_unsupported_hf_config_refused(tmp_path, key, value, needle):
    folder = _copy("siglip_hf", tmp_path)
    raw = json.loads((folder / "config.json").read_text())
    raw["vision_config"][key] = value
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError) as info:
        kontrast.load(folder)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_missing_tokenizer_files_named(tmp_path):
    folder = _copy("siglip_hf", tmp_path)
    (folder / "spiece.model").unlink()
    with pytest.raises(KontrastError, match="no tokenizer.json or spiece.model"):
        kontrast.load(folder)


def test_sigmoid_probabilities_are_per_label():
    """SigLIP probabilities: sigmoid(scale * cos + bias) per (image, label), not a softmax over labels."""
    model, _, _ = kontrast.load(FAMILIES / "siglip_hf")
    exp = _expected("siglip_hf")
    with torch.no_grad():
        logits, _ = model.get_logits(exp["inputs.pixel_values"], exp["tokens"])
    cos = F.normalize(exp["image_features"], dim=-1) @ F.normalize(exp["text_features"], dim=-1).T
    torch.testing.assert_close(torch.sigmoid(logits), torch.sigmoid(exp["logit_scale"] * cos + exp["logit_bias"]),
                               atol=1e-5, rtol=0)


def test_zero_shot_of_siglip_is_sigmoid_per_label(tmp_path, monkeypatch):
    """ZeroShotClassifier on a SigLIP model: each label's probability is sigmoid(scale * cos + bias) on its own."""
    from kontrast.zeroshot import ZeroShotClassifier

    monkeypatch.setenv("KONTRAST_CACHE", str(tmp_path))
    model, preprocess, tokenizer = kontrast.load(FAMILIES / "siglip_open_clip")
    labels = ["cat", "dog", "neural network"]
    clf = ZeroShotClassifier(model, preprocess, tokenizer, labels, templates=["a photo of a {}"])
    image = Image.open("/work/shared/fixtures/preprocess/rgb_300x200.png")
    probs = clf([image])
    with torch.no_grad():
        img = model.encode_image(preprocess(image).unsqueeze(0), normalize=True)
        txt = model.encode_text(tokenizer([f"a photo of a {c}" for c in labels]), normalize=True)
    expected = torch.sigmoid(model.logit_scale.exp() * img @ txt.T + model.logit_bias)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)
    assert abs(float(probs.sum()) - 1.0) > 1e-3  # not a softmax
