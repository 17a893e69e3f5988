"""Checkpoint formats: detection, variants of state dicts, save/export round trips, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import kontrast
from kontrast.checkpoints import convert, formats
from kontrast.errors import CheckpointError, UnknownModelError


@pytest.fixture(scope="module")
def inputs(fixtures_dir):
    return load_file(str(fixtures_dir / "inputs.safetensors"))


def features(model, inputs):
    with torch.no_grad():
        return model.encode_image(inputs["pixels_64"]), model.encode_text(inputs["tokens"]), model.logit_scale.exp()


def assert_same(a, b, atol=1e-5):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-5)


@pytest.fixture(scope="module")
def reference(fixtures_dir, inputs):
    model, _, _ = kontrast.load(fixtures_dir / "openai_vit.pt")
    return model, features(model, inputs)


def test_state_dict_variants(tmp_path, fixtures_dir, inputs, reference):
    sd = torch.load(fixtures_dir / "openai_vit.pt", weights_only=True)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, wrapped)
    st = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    half = tmp_path / "half.bin"
    torch.save({k: v.half() for k, v in sd.items()}, half)  # OpenAI releases are partly float16
    for path in (wrapped, st, half):
        model, _, _ = kontrast.load(path)
        assert_same(features(model, inputs), reference[1])


def test_kontrast_format_round_trip(tmp_path, inputs, reference):
    model, ref = reference
    out = kontrast.save(model, tmp_path / "k")
    assert formats.detect(out) == "kontrast"
    assert formats.detect(out / formats.KONTRAST_WEIGHTS) == "kontrast"  # the config travels in the metadata too
    for path in (out, out / formats.KONTRAST_WEIGHTS):
        loaded, _, _ = kontrast.load(path)
        assert_same(features(loaded, inputs), ref, atol=0)
        assert kontrast.fingerprint(loaded) == kontrast.fingerprint(model)


@pytest.mark.parametrize("fixture", ["openai_vit.pt", "open_clip_vit", "hf_vit", "openai_rn.pt"])
@pytest.mark.parametrize("fmt", ["hf", "open_clip"])
def test_export_round_trip(tmp_path, fixtures_dir, inputs, fixture, fmt):
    model, _, _ = kontrast.load(fixtures_dir / fixture)
    ref = features(model, inputs)
    if fmt == "hf" and model.config.vision.is_resnet:
        with pytest.raises(kontrast.KontrastError, match="ResNet"):
            kontrast.export(model, tmp_path / "x", format=fmt)
        return
    out = kontrast.export(model, tmp_path / fmt, format=fmt)
    assert formats.detect(out) == fmt
    loaded, _, _ = kontrast.load(out)
    assert_same(features(loaded, inputs), ref)
    assert loaded.config.vision.act == model.config.vision.act


def test_hf_export_layout_matches_transformers_names(tmp_path, fixtures_dir):
    """The HF export has exactly the tensor names and config keys of the transformers-written fixture."""
    model, _, _ = kontrast.load(fixtures_dir / "hf_vit")
    out = kontrast.export(model, tmp_path / "hf", format="hf")
    ours = load_file(str(out / "model.safetensors"))
    theirs = load_file(str(fixtures_dir / "hf_vit" / "model.safetensors"))
    theirs = {k: v for k, v in theirs.items() if not k.endswith("position_ids")}
    assert set(ours) == set(theirs)
    for k in theirs:
        torch.testing.assert_close(ours[k], theirs[k], atol=0, rtol=0)
    cfg, ref_cfg = json.loads((out / "config.json").read_text()), json.loads((fixtures_dir / "hf_vit" / "config.json").read_text())
    for tower in ("text_config", "vision_config"):
        for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "hidden_act"):
            assert cfg[tower][key] == ref_cfg[tower][key]


def test_open_clip_export_matches_fixture_config(tmp_path, fixtures_dir):
    model, _, _ = kontrast.load(fixtures_dir / "open_clip_vit")
    out = kontrast.export(model, tmp_path / "oc", format="open_clip")
    cfg = json.loads((out / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["vision_cfg"]["head_width"] == 32
    assert "quick_gelu" not in cfg["model_cfg"]
    assert set(load_file(str(out / "open_clip_model.safetensors"))) == set(
        load_file(str(fixtures_dir / "open_clip_vit" / "open_clip_model.safetensors")))


def test_infer_config_from_shapes(fixtures_dir):
    sd = torch.load(fixtures_dir / "openai_rn.pt", weights_only=True)
    cfg = convert.infer_config(sd)
    assert cfg.vision.layers == (1, 1, 1, 1) and cfg.vision.width == 8 and cfg.vision.image_size == 64
    assert cfg.vision.heads == 4 and cfg.text.heads == 1 and cfg.embed_dim == 64


def test_hf_conversion_is_invertible(fixtures_dir):
    hf = load_file(str(fixtures_dir / "hf_vit" / "model.safetensors"))
    back = convert.openai_to_hf(convert.hf_to_openai(hf))
    for k, v in back.items():
        assert torch.equal(v, hf[k])


def test_image_size_interpolation(fixtures_dir, inputs, reference):
    model, _, _ = kontrast.load(fixtures_dir / "openai_vit.pt", image_size=128)
    assert model.image_size == 128 and model.visual.positional_embedding.shape[0] == 8 * 8 + 1
    with torch.no_grad():
        assert model.encode_image(torch.randn(1, 3, 128, 128)).shape == (1, 64)


def test_precision_bf16(fixtures_dir, inputs, reference):
    model, _, _ = kontrast.load(fixtures_dir / "openai_vit.pt", precision="bf16")
    assert model.dtype == torch.bfloat16
    img, _, _ = features(model, inputs)
    cos = torch.nn.functional.cosine_similarity(img.float(), reference[1][0], dim=-1)
    assert cos.min() > 0.99
    assert kontrast.fingerprint(model) == kontrast.fingerprint(reference[0])


def test_unknown_model_lists_nearest():
    with pytest.raises(UnknownModelError) as info:
        kontrast.load("ViT-B-33")
    msg = str(info.value)
    assert "ViT-B-32" in msg and "\n" not in msg


def test_mismatched_checkpoint_names_keys(tmp_path, fixtures_dir):
    sd = torch.load(fixtures_dir / "openai_vit.pt", weights_only=True)
    sd.pop("visual.ln_post.bias")
    sd["extra.weight"] = torch.zeros(3)
    bad = tmp_path / "bad.pt"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError) as info:
        kontrast.load(bad)
    msg = str(info.value)
    assert "missing: visual.ln_post.bias" in msg and "unexpected: extra.weight" in msg and "\n" not in msg


def test_wrong_shapes_named(tmp_path, fixtures_dir):
    model, _, _ = kontrast.load(fixtures_dir / "openai_vit.pt")
    sd = model.state_dict()
    sd["visual.proj"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match="wrong shape: visual.proj"):
        kontrast.api.load_weights(model, sd, "x.pt")


def test_garbage_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        kontrast.load(junk)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        kontrast.load(empty_dir)
    with pytest.raises(CheckpointError, match="not found"):
        kontrast.load(tmp_path / "missing.pt")


def test_random_init_warns():
    with pytest.warns(UserWarning, match="randomly initialised"):
        kontrast.load("tiny-ViT")


def test_cli_errors_are_one_line(tmp_path):
    for argv in (["info", "ViT-B-33"], ["info", str(tmp_path / "missing.pt")]):
        proc = subprocess.run([sys.executable, "-m", "kontrast", *argv], check=False, capture_output=True, text=True)
        assert proc.returncode == 2
        assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr, proc.stderr
