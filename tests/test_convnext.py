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
