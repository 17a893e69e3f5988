"""The pretrained registry against open_clip 3.3's own list, the families, and refusing what kontrast does not implement.

The oracle is ``tests/fixtures/families/open_clip_architectures/open_clip_architectures.json``, written by
``scripts/make_reference_fixtures.py --only open_clip_architectures`` with the real open_clip: its pretrained list
(hub repository, QuickGELU, preprocessing per pair) and every plain ViT / ResNet / ConvNeXt architecture built at
full size on the meta device (parameters, state-dict layout, image-tower heads and MLP width).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kontrast
from kontrast import families
from kontrast.checkpoints import hub
from kontrast.errors import KontrastError

ORACLE = Path(__file__).parent / "fixtures" / "families" / "open_clip_architectures" / "open_clip_architectures.json"
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]


@pytest.fixture(scope="module")
def oracle() -> dict:
    return json.loads(ORACLE.read_text())


def shape_digest(sd: dict[str, torch.Tensor]) -> str:
    lines = "".join(f"{k}:{tuple(v.shape)}\n" for k, v in sorted(sd.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


# ---- the registry is open_clip's list ------------------------------------------------------------------
def test_registry_lists_every_open_clip_pair_in_order(oracle):
    theirs = [(p["architecture"], p["tag"]) for p in oracle["pretrained"]]
    ours = [(t.architecture, t.tag) for t in kontrast.list_pretrained()]
    assert len(theirs) == 196
    assert sorted(ours) == sorted(theirs)
    base = [p for p in theirs if not p[0].endswith("-quickgelu")]
    assert ours[: len(base)] == base  # open_clip's order, aliases after


def test_registry_entries_match_open_clip_repos_quickgelu_and_preprocessing(oracle):
    for p in oracle["pretrained"]:
        e = hub.get_pretrained_entry(p["architecture"], p["tag"])
        parts = p["hf_hub"].strip("/").split("/")
        assert e["hf_repo"] == "/".join(parts[:2]), p
        if len(parts) > 2:  # a file named in open_clip's hub path
            assert e["weights"] == ["/".join(parts[2:])]
        assert e["quick_gelu"] == p["quick_gelu"], p
        assert e.get("mean", OPENAI_MEAN) == p["mean"], p
        assert e.get("interpolation", "bicubic") == p["interpolation"], p
        assert e.get("resize_mode", "shortest") == p["resize_mode"], p


def test_the_96_openai_style_pairs_are_supported(oracle):
    plain = [t for t in kontrast.list_pretrained() if t.family in ("ViT", "ResNet")]
    assert len(plain) == 96 and all(t.supported for t in plain)
    new = {"ViT-H-14", "ViT-H-14-378", "ViT-g-14", "ViT-bigG-14", "ViT-B-16-plus-240", "ViT-B-32-256"}
    new |= {f"{a}-quickgelu" for a in new}
    assert len([t for t in plain if t.architecture in new]) == 16
    assert hub.get_pretrained_entry("ViT-bigG-14", "laion2b_s39b_b160k")["hf_repo"] == \
        "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
    assert hub.get_pretrained_entry("ViT-H-14-378-quickgelu", "dfn5b")["resize_mode"] == "squash"


def test_list_pretrained_filters_by_family():
    eva = kontrast.list_pretrained("eva")
    assert eva and {t.family for t in eva} == {"EVA"} and not any(t.supported for t in eva)
    assert ("EVA02-B-16", "merged2b_s8b_b131k") in [(t.architecture, t.tag) for t in eva]


# ---- every supported architecture is open_clip's, at full size ---------------------------------------
def test_every_pretrained_architecture_has_a_config():
    for t in kontrast.list_pretrained():
        if t.supported and t.family in ("ViT", "ResNet"):
            cfg = kontrast.get_model_config(t.architecture)
            if t.architecture.endswith("-quickgelu"):
                assert cfg.vision.act == cfg.text.act == "quick_gelu", t


def test_configs_build_open_clips_architectures_at_full_size(oracle):
    """Parameters, state-dict layout, image heads and MLP width equal open_clip's for every plain architecture
    (ViT-H-14: 16 heads of 80; ViT-g-14: 16 of 88 and MLP 6144; ViT-bigG-14: 16 of 104 and MLP 8192)."""
    checked = 0
    for name, ref in oracle["architectures"].items():  # every plain open_clip architecture, -quickgelu ones too
        if "timm_model_name" in ref and not families.is_supported("ConvNeXt"):
            continue
        cfg = kontrast.get_model_config(name)
        with torch.device("meta"):
            model = kontrast.create_model(cfg)
        sd = model.state_dict()
        assert sum(p.numel() for p in model.parameters()) == ref["params"], name
        assert shape_digest(sd) == ref["layout_sha256"], name
        assert (cfg.vision.act == "quick_gelu") == ref["quick_gelu"], name
        if "image_heads" in ref:
            block = model.visual.transformer.resblocks[0]
            assert (block.attn.heads, block.mlp.c_fc.out_features) == (ref["image_heads"], ref["image_mlp_hidden"]), name
        checked += 1
    assert checked >= 41


# ---- unsupported families are refused by name, before any download -------------------------------------
@pytest.fixture()
def no_downloads(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a refused model must not be downloaded")

    monkeypatch.setattr(hub, "_Session", fail)


def test_every_unsupported_pretrained_pair_is_refused_in_one_line_naming_its_family(no_downloads):
    refused = 0
    for t in kontrast.list_pretrained():
        if t.supported:
            continue
        with pytest.raises(KontrastError) as info:
            kontrast.load(t.architecture, pretrained=t.tag)
        msg = str(info.value)
        assert f"the {t.family} family" in msg and t.architecture in msg and "\n" not in msg, msg
        refused += 1
    assert refused >= 50  # EVA, PE, MobileCLIP, CoCa, CLIPA, ViTamin, NLLB, RoBERTa, MetaCLIP 2, ...


@pytest.mark.parametrize("name", ["EVA02-B-16", "coca_ViT-B-32", "MobileCLIP-S1", "PE-Core-B-16", "ViTamin-S",
                                  "xlm-roberta-base-ViT-B-32", "nllb-clip-base"])
def test_unsupported_architecture_names_are_refused_naming_the_family(name, no_downloads):
    family = hub.family_of_architecture(name)
    for call in (lambda: kontrast.load(name), lambda: kontrast.create_model(name),
                 lambda: hub.resolve_pretrained(name, hub.list_pretrained(name)[0][1])):
        with pytest.raises(KontrastError) as info:
            call()
        assert f"the {family} family" in str(info.value) and "\n" not in str(info.value)


def test_hf_hub_repository_of_an_unsupported_family_is_refused(no_downloads):
    with pytest.raises(KontrastError, match="the EVA family"):
        kontrast.load("hf-hub:timm/eva02_base_patch16_clip_224.merged2b_s8b_b131k")


@pytest.mark.parametrize("model_cfg, family, evidence", [
    ({"embed_dim": 512, "vision_cfg": {"timm_model_name": "eva02_base_patch16_clip_224"}, "text_cfg": {}},
     "EVA", "vision_cfg.timm_model_name 'eva02_base_patch16_clip_224'"),
    ({"embed_dim": 512, "multimodal_cfg": {"width": 512}, "vision_cfg": {}, "text_cfg": {}}, "CoCa", "multimodal_cfg"),
    ({"embed_dim": 512, "vision_cfg": {"width": 768},
      "text_cfg": {"hf_model_name": "xlm-roberta-base", "hf_pooler_type": "mean_pooler"}},
     "XLM-RoBERTa", "text_cfg.hf_model_name 'xlm-roberta-base'"),
    ({"embed_dim": 512, "vision_cfg": {"timm_model_name": "fastvit_mci1"}, "text_cfg": {}}, "MobileCLIP", "fastvit"),
    ({"embed_dim": 512, "vision_cfg": {"timm_model_name": "swin_base_patch4_window7_224"}, "text_cfg": {}}, "timm",
     "swin_base"),
])
def test_open_clip_folders_of_unsupported_families_are_refused(tmp_path, model_cfg, family, evidence):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"not read")
    with pytest.raises(KontrastError) as info:
        kontrast.load(tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "open_clip_config.json") in msg and f"the {family} family" in msg and evidence in msg
    assert "\n" not in msg


def test_family_of_config_reads_open_clips_configs(oracle):
    """Spot checks on the families the registry generator read from open_clip's configs."""
    assert families.family_of_config({"vision_cfg": {"layers": [3, 4, 6, 3]}, "text_cfg": {}}) == "ResNet"
    assert families.family_of_config({"vision_cfg": {"timm_model_name": "convnext_base"}}) == "ConvNeXt"
    assert families.family_of_config({"vision_cfg": {"timm_model_name": "vit_base_patch16_siglip_224"},
                                      "text_cfg": {"hf_tokenizer_name": "timm/ViT-B-16-SigLIP2"}}) == "SigLIP 2"
    assert families.family_of_config({"vision_cfg": {"no_ln_pre": True},
                                      "text_cfg": {"hf_tokenizer_name": "bert-base-uncased"}}) == "CLIPA"
    # the switches alone are implemented (tests/test_record.py): such a config is a ViT
    assert families.family_of_config({"vision_cfg": {"no_ln_pre": True}, "text_cfg": {}}) == "ViT"
    assert hub.get_pretrained_entry("MobileCLIP2-L-14", "dfndr2b")["family"] == "MobileCLIP"
    assert hub.get_pretrained_entry("nllb-clip-base-siglip", "v1")["family"] == "NLLB-CLIP"


# ---- kontrast info ----------------------------------------------------------------------------------------
def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kontrast", *argv], capture_output=True, text=True,
                          timeout=300, check=False)


def test_info_lists_architectures_with_family_support_and_tags():
    proc = _cli("info")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert "ViT" in rows["ViT-bigG-14"] and "yes" in rows["ViT-bigG-14"] and "laion2b_s39b_b160k" in rows["ViT-bigG-14"]
    assert "metaclip_fullcc" in rows["ViT-bigG-14-quickgelu"]
    assert " EVA " in rows["EVA02-B-16"] and " no " in rows["EVA02-B-16"]
    assert "ViT-e-14" in rows and "tiny-ViT" in rows  # configs without pretrained tags are listed too
    only = _cli("info", "--family", "coca")
    assert only.returncode == 0 and {line.split()[0] for line in only.stdout.splitlines()[1:]} == \
        {"coca_ViT-B-32", "coca_ViT-L-14"}
    bad = _cli("info", "--family", "nope")
    assert bad.returncode == 2 and "nope" in bad.stderr and bad.stderr.strip().count("\n") == 0
