"""Strict reading and writing: every config key is understood or refused in one line (key, value, file); bare
state dicts say what they assume (activation) and refuse what they cannot know (attention heads); exports
refuse what their format cannot express instead of writing another model."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import kontrast
from kontrast import errors
from kontrast.checkpoints import convert
from kontrast.cli import main
from kontrast.config import ModelConfig
from kontrast.errors import KontrastError
from kontrast.models import CLIP

# what kontrast raises for config keys it refuses (looked up this way so the file also runs, and fails,
# against kontrast versions from before model records)
ConfigError = getattr(errors, "ConfigError", errors.CheckpointError)

FAMILIES = Path(__file__).parent / "fixtures" / "families"


def _open_clip_copy(fixtures_dir, tmp_path, edit) -> Path:
    folder = shutil.copytree(fixtures_dir / "open_clip_vit", tmp_path / "oc")
    raw = json.loads((folder / "open_clip_config.json").read_text())
    edit(raw)
    (folder / "open_clip_config.json").write_text(json.dumps(raw))
    return folder


@pytest.mark.parametrize("where,key,value", [
    ("vision_cfg", "pos_embed_type", "sin_cos_2d"),
    ("vision_cfg", "attentional_pool", True),
    ("vision_cfg", "ls_init_value", 0.1),
    ("vision_cfg", "pool_type", "none"),
    ("text_cfg", "hf_tokenizer_name", "facebook/xlm-v-base"),  # MetaCLIP-2 worldwide
    ("text_cfg", "proj_bias", True),
    ("text_cfg", "embed_cls", True),
    ("text_cfg", "tokenizer_kwargs", {"clean": "canonicalize"}),
    ("text_cfg", "some_new_key", 1),
    ("model_cfg", "nonscalar_logit_scale", True),
])
def test_unsupported_open_clip_keys_are_refused_in_one_line(fixtures_dir, tmp_path, where, key, value):
    def edit(raw):
        target = raw["model_cfg"] if where == "model_cfg" else raw["model_cfg"][where]
        target[key] = value

    folder = _open_clip_copy(fixtures_dir, tmp_path, edit)
    with pytest.raises(ConfigError) as info:
        kontrast.load(folder)
    msg = str(info.value)
    assert key in msg and repr(value)[:20] in msg and "open_clip_config.json" in msg and "\n" not in msg


def test_metaclip2_config_is_refused_not_loaded(fixtures_dir, tmp_path):
    """MetaCLIP 2 worldwide: eos pooling (implemented) + an XLM-V tokenizer (not): one line, no model."""
    def edit(raw):
        raw["model_cfg"]["text_cfg"].update({"pool_type": "eos", "eos_id": 2, "hf_tokenizer_name": "facebook/xlm-v-base"})

    folder = _open_clip_copy(fixtures_dir, tmp_path, edit)
    with pytest.raises(KontrastError, match="hf_tokenizer_name 'facebook/xlm-v-base' belongs to the MetaCLIP 2"):
        kontrast.load(folder)
    # the same text config reached without the folder check (an inline training config) is refused by the reader
    raw = json.loads((folder / "open_clip_config.json").read_text())
    with pytest.raises(ConfigError, match="hf_tokenizer_name='facebook/xlm-v-base'"):
        ModelConfig.from_dict(raw["model_cfg"], "recipe model_config")
    raw["model_cfg"]["vision_cfg"]["timm_model_name"] = "swin_base_patch4_window7_224"
    with pytest.raises(ConfigError, match="timm_model_name='swin_base_patch4_window7_224'"):
        ModelConfig.from_dict(raw["model_cfg"], "recipe model_config")


def test_cli_exits_2_with_one_line(fixtures_dir, tmp_path, capsys):
    folder = _open_clip_copy(fixtures_dir, tmp_path, lambda raw: raw["model_cfg"]["vision_cfg"].update(ls_init_value=0.1))
    assert main(["info", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "vision_cfg.ls_init_value=0.1" in err and "Traceback" not in err and "\n" not in err


def test_unknown_preprocess_and_hf_keys_are_refused(fixtures_dir, tmp_path):
    folder = _open_clip_copy(fixtures_dir, tmp_path, lambda raw: raw["preprocess_cfg"].update(crop_pct=0.9))
    with pytest.raises(ConfigError, match="crop_pct"):
        kontrast.load(folder)
    hf = shutil.copytree(fixtures_dir / "hf_vit", tmp_path / "hf")
    cfg = json.loads((hf / "config.json").read_text())
    cfg["vision_config"]["hidden_act"] = "silu"
    (hf / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="hidden_act='silu'"):
        kontrast.load(hf)
    cfg["vision_config"]["hidden_act"] = "quick_gelu"
    cfg["model_type"] = "blip"
    (hf / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="model_type='blip'"):
        kontrast.load(hf)


def test_hf_folder_with_another_tokenizer_is_refused(fixtures_dir, tmp_path):
    hf = shutil.copytree(fixtures_dir / "hf_vit", tmp_path / "hf")
    (hf / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "XLMRobertaTokenizer"}))
    with pytest.raises(ConfigError, match="tokenizer_class='XLMRobertaTokenizer'"):
        kontrast.load(hf)
    (hf / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer"}))
    kontrast.load(hf)


def test_hf_generic_keys_of_old_configs_are_understood(fixtures_dir, tmp_path):
    """transformers 4.x wrote every PretrainedConfig attribute (and text_config_dict) into CLIP configs."""
    hf = shutil.copytree(fixtures_dir / "hf_vit", tmp_path / "hf")
    cfg = json.loads((hf / "config.json").read_text())
    cfg["text_config"] |= {"add_cross_attention": False, "bad_words_ids": None, "id2label": {"0": "LABEL_0"},
                           "num_beams": 1, "torchscript": False, "_name_or_path": ""}
    cfg["text_config_dict"] = {"eos_token_id": 2}  # wins over text_config, as in transformers: argmax pooling
    (hf / "config.json").write_text(json.dumps(cfg))
    model, _, _ = kontrast.load(hf)
    assert model.config.text.pool_type == "argmax"


# ---- bare state dicts ------------------------------------------------------------------------------------
def test_bare_state_dict_says_which_activation_it_assumes(fixtures_dir, caplog):
    with caplog.at_level(logging.WARNING):
        model, _, _ = kontrast.load(fixtures_dir / "openai_vit.pt")
    assert "QuickGELU assumed" in caplog.text and "quick_gelu=False" in caplog.text
    assert model.config.text.act == "quick_gelu" and model.record.provenance.assumed
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model, _, _ = kontrast.load(fixtures_dir / "openai_vit.pt", quick_gelu=False)
    assert "assumed" not in caplog.text and model.config.vision.act == "gelu"


def test_architecture_name_settles_a_bare_state_dict(fixtures_dir, caplog):
    """open_clip's convention: an architecture name + a checkpoint file; its config says heads and activation."""
    with caplog.at_level(logging.WARNING):
        model, _, _ = kontrast.load("fixture-ViT-quickgelu", pretrained=fixtures_dir / "openai_vit.pt")
    assert "assumed" not in caplog.text and model.config.text.act == "quick_gelu"
    model, _, _ = kontrast.load("fixture-ViT", pretrained=fixtures_dir / "openai_vit.pt")
    assert model.config.text.act == "gelu"


def _meta_state_dict(cfg) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return CLIP(cfg).state_dict()


# architectures a bare OpenAI-named state dict can hold (a Hugging Face text tower cannot be one)
BARE = [n for n in kontrast.list_models() if not getattr(kontrast.get_model_config(n).text, "hf_model", None)]


@pytest.mark.parametrize("name", BARE)
def test_every_known_architecture_is_recognised_from_its_shapes(name):
    """Shapes only (meta tensors, no weights): the heads come back from the table of known architectures. A
    ConvNeXt trunk's weights do not show the image size: where two architectures share the shapes at different
    sizes (convnext_base_w and convnext_base_w_320), the state dict is refused, naming both."""
    cfg = kontrast.get_model_config(name)
    sd = _meta_state_dict(cfg)
    if getattr(cfg.vision, "kind", None) == "convnext":
        from kontrast.architectures import match_shapes

        twins = [m.name for m in match_shapes(cfg) if m.image_size != cfg.image_size]
    else:
        twins = []
    if twins:
        with pytest.raises(errors.ConfigError, match=f"image size.*{twins[0]}|{twins[0]}.*image size"):
            convert.infer_config(sd)
        return
    got = convert.infer_config(sd)
    assert (got.vision.heads, got.text.heads) == (cfg.vision.heads, cfg.text.heads)
    assert got.image_size == cfg.image_size


def test_unknown_head_width_is_refused_naming_the_missing_fact(tmp_path):
    """A tiny ViT with heads of width 80 that no known architecture has (width 320: 4 heads; width // 64 would
    give 5): without a config, kontrast must refuse instead of guessing."""
    bare = tmp_path / "hw80.safetensors"
    shutil.copy(FAMILIES / "vit_hw80_open_clip" / "open_clip_model.safetensors", bare)
    with pytest.raises(ConfigError) as info:
        kontrast.load(bare, quick_gelu=True)
    msg = str(info.value)
    assert "number of attention heads" in msg and str(bare) in msg and "pretrained=PATH" in msg and "\n" not in msg


def test_head_width_comes_from_matching_shapes(tmp_path, monkeypatch):
    """The same weights, with an architecture of these shapes known: its heads are used (4 heads of 80)."""
    from kontrast import architectures

    configs = tmp_path / "model_configs"
    configs.mkdir()
    raw = json.loads((FAMILIES / "vit_hw80_open_clip" / "open_clip_config.json").read_text())["model_cfg"]
    (configs / "hw80.json").write_text(json.dumps(raw))
    monkeypatch.setattr(architectures, "_config_dir", lambda: configs)
    bare = tmp_path / "hw80.safetensors"  # the weights alone, without their config
    shutil.copy(FAMILIES / "vit_hw80_open_clip" / "open_clip_model.safetensors", bare)
    model, _, _ = kontrast.load(bare, quick_gelu=True)
    assert (model.config.vision.heads, model.config.text.heads) == (4, 2)
    reference, _, _ = kontrast.load(FAMILIES / "vit_hw80_open_clip")
    pixels = torch.randn(2, 3, 42, 42)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(pixels), reference.encode_image(pixels), atol=1e-5, rtol=1e-5)


# ---- exports refuse what they cannot express -----------------------------------------------------------
def test_hf_export_refuses_a_logit_bias(fixtures_dir, tmp_path):
    model, _, _ = kontrast.load(fixtures_dir / "hf_vit")
    model.logit_bias = torch.nn.Parameter(torch.tensor(-10.0))
    with pytest.raises(ConfigError, match="logit bias"):
        kontrast.export(model, tmp_path / "hf", format="hf")
    assert not (tmp_path / "hf").exists()


def test_exports_refuse_what_their_format_cannot_say(fixtures_dir, tmp_path):
    model, _, _ = kontrast.load(FAMILIES / "oc_variant_a")  # bidirectional text, avg pooling
    with pytest.raises(ConfigError, match="Hugging Face CLIPModel"):
        kontrast.export(model, tmp_path / "hf", format="hf")
    base, _, _ = kontrast.load(fixtures_dir / "open_clip_vit")
    longest = replace(base.record, preprocess=replace(base.record.preprocess, resize_mode="longest"))
    base.record = longest
    with pytest.raises(ConfigError, match="longest"):
        kontrast.export(base, tmp_path / "hf2", format="hf")
    mixed, _, _ = kontrast.load(fixtures_dir / "open_clip_vit")
    mixed.config = replace(mixed.config, text=replace(mixed.config.text, act="quick_gelu"))
    with pytest.raises(ConfigError, match="one activation"):
        kontrast.export(mixed, tmp_path / "oc", format="open_clip")

