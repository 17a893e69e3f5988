"""ConvNeXt image towers (kontrast.models.convnext) exact against open_clip's timm-based towers.

Fixtures (``scripts/make_reference_fixtures.py``): ``convnext_open_clip`` (linear head) and ``convnext_mlp_open_clip``
(MLP head with ``timm_proj_bias``), open_clip folders around a tiny timm ConvNeXt trunk, with the stem and stage
outputs, the pooled trunk output and the features open_clip computed; ``open_clip_architectures.json`` has timm's
facts for every real trunk name open_clip uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kontrast.models.convnext import TIMM_CONVNEXT, ConvNeXtTower, geometry_from_state_dict

FIXTURES = Path(__file__).parent / "fixtures" / "families"
HEADS = {"convnext_open_clip": ("linear", False), "convnext_mlp_open_clip": ("mlp", True)}


def _tower(name: str) -> tuple[ConvNeXtTower, dict[str, torch.Tensor]]:
    folder = FIXTURES / name
    sd = load_file(str(folder / "open_clip_model.safetensors"))
    head, bias = HEADS[name]
    tower = ConvNeXtTower(geometry_from_state_dict(sd), 48, 64, head, bias).eval()
    tower.load_state_dict({k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}, strict=True)
    return tower, load_file(str(folder / "expected.safetensors"))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_tower_matches_open_clip_stage_by_stage(name):
    tower, expected = _tower(name)
    with torch.no_grad():
        maps = tower.feature_maps(expected["pixels"])
        pooled = tower.trunk.head(maps[-1])
        features = tower(expected["pixels"])
    assert len(maps) == 5
    for i, m in enumerate(maps):
        torch.testing.assert_close(m, expected[f"feature_maps.{i}"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pooled, expected["trunk_pooled"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(features, expected["image_features"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_training_path_gives_the_inference_numbers(name):
    """With autograd on (no oneDNN fast path, no channels-last) the tower computes the same features."""
    tower, expected = _tower(name)
    pixels = expected["pixels"].clone().requires_grad_(True)
    features = tower(pixels)
    torch.testing.assert_close(features.detach(), expected["image_features"], atol=1e-4, rtol=1e-4)
    features.sum().backward()
    assert pixels.grad is not None and tower.trunk.stages[0].blocks[0].gamma.grad is not None


def test_trunk_table_is_timms():
    """Depths, dims, kernel, MLP width and LayerNorm eps (1e-5 for convnext_xxlarge only) of every real trunk."""
    facts = json.loads((FIXTURES / "open_clip_architectures" / "open_clip_architectures.json").read_text())
    timm = facts["timm_convnext"]
    assert set(timm) <= set(TIMM_CONVNEXT) and len(timm) == 6
    for name, f in timm.items():
        g = TIMM_CONVNEXT[name]
        assert list(g.depths) == f["depths"] and list(g.dims) == f["dims"], name
        assert g.kernel_size == f["kernel_size"] and int(g.mlp_ratio * g.dims[0]) == f["mlp_hidden_0"], name
        assert g.eps == f["eps"] == f["block_norm_eps"] == f["head_norm_eps"], name
        assert not f["conv_mlp"] and f["layer_scale"] and f["stem"] == ["Conv2d", "LayerNorm2d"], name


def test_geometry_is_read_from_weights_and_unsupported_trunks_are_named():
    sd = load_file(str(FIXTURES / "convnext_open_clip" / "open_clip_model.safetensors"))
    g = geometry_from_state_dict(sd)
    assert (g.depths, g.dims, g.kernel_size, g.mlp_ratio) == ((1, 1, 2, 1), (16, 24, 32, 40), 7, 4.0)
    conv_mlp = dict(sd)
    conv_mlp["visual.trunk.stages.0.blocks.0.mlp.fc1.weight"] = sd["visual.trunk.stages.0.blocks.0.mlp.fc1.weight"][
        :, :, None, None]
    with pytest.raises(ValueError, match="conv_mlp"):
        geometry_from_state_dict(conv_mlp)
    grn = {**sd, "visual.trunk.stages.0.blocks.0.mlp.grn.weight": torch.zeros(64)}
    with pytest.raises(ValueError, match="GRN"):
        geometry_from_state_dict(grn)


def test_real_size_tower_has_open_clips_layout_on_meta():
    """convnext_xxlarge: 30 blocks in stage 3, dims up to 3072, eps 1e-5 in every LayerNorm."""
    with torch.device("meta"):
        tower = ConvNeXtTower(TIMM_CONVNEXT["convnext_xxlarge"], 1024, 256)
    assert len(tower.trunk.stages[2].blocks) == 30 and tower.trunk.head.norm.normalized_shape == (3072,)
    assert {m.eps for m in tower.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}


# ---- the open_clip layout through kontrast.load -------------------------------------------------------------
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


@pytest.mark.parametrize("name", sorted(HEADS))
def test_open_clip_folder_loads_exactly_with_its_preprocessing(name, fixtures_dir):
    from PIL import Image

    import kontrast

    expected = load_file(str(FIXTURES / name / "expected.safetensors"))
    model, preprocess, _ = kontrast.load(FIXTURES / name)
    assert model.config.vision.kind == "convnext" and model.config.vision.timm_proj == HEADS[name][0]
    assert any("convnext_kxtest" in line and "read from the weights" in line for line in model.record.provenance.assumed)
    _assert_matches(_outputs(model, expected), expected)
    for key in [k for k in expected if k.startswith("preprocess.")]:
        image = Image.open(fixtures_dir / "preprocess" / f"{key.split('.', 1)[1]}.png")
        torch.testing.assert_close(preprocess(image), expected[key], atol=1e-6, rtol=0)
    tokens = model.encode_image(expected["pixels"][:1], output="hidden_states")
    assert [t.shape[1:] for t in tokens] == [(256, 16), (256, 16), (64, 24), (16, 32), (4, 40)]


@pytest.mark.parametrize("name", sorted(HEADS))
def test_round_trips_through_save_and_open_clip_export_and_refuses_hf(name, tmp_path):
    import kontrast
    from kontrast.errors import KontrastError

    expected = load_file(str(FIXTURES / name / "expected.safetensors"))
    model, _, _ = kontrast.load(FIXTURES / name)
    kontrast.save(model, tmp_path / "kontrast")
    kontrast.export(model, tmp_path / "open_clip", format="open_clip")
    oc = json.loads((tmp_path / "open_clip" / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"]
    assert oc["timm_model_name"] == "convnext_kxtest" and oc["timm_proj"] == HEADS[name][0]
    assert oc.get("timm_proj_bias", False) == HEADS[name][1]
    for sub in ("kontrast", "open_clip"):
        again, _, _ = kontrast.load(tmp_path / sub)
        assert again.config.vision.depths == (1, 1, 2, 1)
        _assert_matches(_outputs(again, expected), expected)
    with pytest.raises(KontrastError) as info:
        kontrast.export(model, tmp_path / "hf", format="hf")
    assert "ConvNeXt" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "hf" / "model.safetensors").exists()


def test_every_open_clip_convnext_config_is_a_kontrast_architecture():
    import kontrast

    facts = json.loads((FIXTURES / "open_clip_architectures" / "open_clip_architectures.json").read_text())
    names = [n for n, row in facts["architectures"].items() if "timm_model_name" in row]
    assert len(names) == 11
    for name in names:
        cfg = kontrast.get_model_config(name)
        row = facts["architectures"][name]
        assert (cfg.vision.kind, cfg.vision.timm_model_name, cfg.vision.timm_proj, cfg.image_size) == (
            "convnext", row["timm_model_name"], row["timm_proj"], row["image_size"]), name


def test_bare_state_dicts_take_image_size_and_heads_from_the_known_architectures():
    """convnext_base's shapes are one architecture (224 px), convnext_xlarge's too (256 px); convnext_base_w and
    convnext_base_w_320 share theirs: refused, naming both."""
    import kontrast
    from kontrast.checkpoints.convert import infer_config
    from kontrast.errors import ConfigError

    for name, size, heads in (("convnext_base", 224, 8), ("convnext_xlarge", 256, 16)):
        with torch.device("meta"):
            sd = kontrast.create_model(name).state_dict()
        assumed: list[str] = []
        cfg = infer_config(sd, None, "bare.pt", assumed)
        assert (cfg.vision.timm_model_name, cfg.image_size, cfg.text.heads, cfg.text.act) == (name, size, heads, "gelu")
        assert any("GELU assumed" in line for line in assumed)
    with torch.device("meta"):
        sd = kontrast.create_model("convnext_base_w").state_dict()
    with pytest.raises(ConfigError) as info:
        infer_config(sd, None, "bare.pt")
    assert "convnext_base_w, convnext_base_w_320" in str(info.value) and "image size" in str(info.value)


@pytest.mark.parametrize("vision, message", [
    ({"timm_pool": "abs_attn"}, "timm_pool='abs_attn'"),
    ({"timm_proj": "none"}, "timm_proj='none'"),
    ({"depths": [3, 3, 9, 3]}, "conflicts with timm's convnext_base"),
    ({"layers": 12}, "unknown key vision_cfg.layers"),
])
def test_convnext_configs_kontrast_does_not_implement_are_refused(vision, message):
    from kontrast.config import ModelConfig
    from kontrast.errors import ConfigError

    cfg = {"embed_dim": 512, "vision_cfg": {"timm_model_name": "convnext_base", "image_size": 224, **vision},
           "text_cfg": {"width": 512, "heads": 8, "layers": 12}}
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(cfg, "open_clip_config.json")
    assert message in str(info.value) and "open_clip_config.json" in str(info.value)


def test_a_trunk_kontrast_does_not_implement_is_refused_in_one_line(tmp_path):
    import shutil

    from safetensors.torch import save_file

    import kontrast
    from kontrast.errors import KontrastError

    shutil.copy(FIXTURES / "convnext_open_clip" / "open_clip_config.json", tmp_path)
    sd = load_file(str(FIXTURES / "convnext_open_clip" / "open_clip_model.safetensors"))
    sd["visual.trunk.stages.0.blocks.0.mlp.grn.weight"] = torch.zeros(64)
    save_file(sd, str(tmp_path / "open_clip_model.safetensors"))
    with pytest.raises(KontrastError) as info:
        kontrast.load(tmp_path)
    assert "GRN" in str(info.value) and str(tmp_path) in str(info.value) and "\n" not in str(info.value)


def test_onnx_back_end_runs_a_convnext_model(tmp_path, monkeypatch):
    import kontrast

    monkeypatch.setenv("KONTRAST_CACHE", str(tmp_path / "cache"))
    expected = load_file(str(FIXTURES / "convnext_mlp_open_clip" / "expected.safetensors"))
    model, _, _ = kontrast.load(FIXTURES / "convnext_mlp_open_clip", backend="onnx")
    image = torch.as_tensor(model.encode_image(expected["pixels"]))
    text = torch.as_tensor(model.encode_text(expected["tokens"]))
    torch.testing.assert_close(image, expected["image_features"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(text, expected["text_features"], atol=1e-4, rtol=1e-4)
