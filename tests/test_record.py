"""The model record: preprocessing and tokenizer travel with the model; strict configs; computation keys
implemented exactly (against open_clip 3.3.0 outputs in tests/fixtures/families, made by
scripts/make_reference_fixtures.py); save / export / load round trips keep the record."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import kontrast
from kontrast.preprocess import Preprocess

FAMILIES = Path(__file__).parent / "fixtures" / "families"
MANIFEST = json.loads((FAMILIES / "manifest.json").read_text())["families"]


# ---- preprocessing modes, bit-exact with open_clip ------------------------------------------------------
@pytest.mark.parametrize("mode", sorted(MANIFEST["oc_preprocess"]["modes"]))
def test_preprocess_modes_match_open_clip(mode, fixtures_dir):
    spec = MANIFEST["oc_preprocess"]
    kw = dict(spec["modes"][mode])
    if "fill_color" in kw:
        kw["fill"] = kw.pop("fill_color")
    pre = Preprocess(spec["size"], **kw)
    expected = load_file(str(FAMILIES / "oc_preprocess" / "expected.safetensors"))
    for name in spec["images"]:
        with Image.open(fixtures_dir / "preprocess" / f"{name}.png") as img:
            got = pre(img)
        torch.testing.assert_close(got, expected[f"{mode}.{name}"], atol=1e-6, rtol=0, msg=f"{mode} {name}")


def test_preprocess_config_round_trips_through_the_transform():
    from kontrast.record import PreprocessConfig

    cfg = PreprocessConfig(mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", resize_mode="longest", fill=7)
    assert Preprocess.from_config(cfg, 40).config == cfg
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg


# ---- computation keys against open_clip -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["oc_variant_a", "oc_variant_b", "oc_variant_c"])
def test_open_clip_computation_keys(name):
    """pool_type (avg / last / eos / first), no_causal_mask, final_ln_after_pool, no_ln_pre, norm eps,
    GELU-tanh, QuickGELU, CustomTextCLIP names: kontrast reproduces open_clip on such configs."""
    folder = FAMILIES / name
    exp = load_file(str(folder / "expected.safetensors"))
    model, preprocess, _ = kontrast.load(folder)
    with torch.no_grad():
        img = model.encode_image(exp["pixels"])
        txt = model.encode_text(exp["tokens"])
    torch.testing.assert_close(img, exp["image_features"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(txt, exp["text_features"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.logit_scale.exp().detach(), exp["logit_scale"], atol=0, rtol=1e-6)
    # the folder's preprocess_cfg (mean/std 0.5, bilinear, squash) is what load builds
    assert (preprocess.mean, preprocess.resize_mode, preprocess.interpolation) == ((0.5,) * 3, "squash", "bilinear")


def test_variant_keys_survive_open_clip_and_kontrast_round_trips(tmp_path):
    model, _, _ = kontrast.load(FAMILIES / "oc_variant_a")
    exp = load_file(str(FAMILIES / "oc_variant_a" / "expected.safetensors"))
    for out, write in ((tmp_path / "oc", lambda d: kontrast.export(model, d, format="open_clip")),
                       (tmp_path / "k", lambda d: kontrast.save(model, d))):
        loaded, _, _ = kontrast.load(write(out))
        assert loaded.record.arch.vision == model.record.arch.vision
        assert loaded.record.arch.text == model.record.arch.text
        assert loaded.record.preprocess == model.record.preprocess
        with torch.no_grad():
            torch.testing.assert_close(loaded.encode_text(exp["tokens"]), exp["text_features"], atol=1e-4, rtol=1e-4)


def test_kontrast_file_keeps_variant_c_inert_keys(tmp_path):
    model, _, _ = kontrast.load(FAMILIES / "oc_variant_c")
    assert model.config.vision.inert == {"patch_dropout": 0.5}
    out = kontrast.export(model, tmp_path / "oc", format="open_clip")
    written = json.loads((out / "open_clip_config.json").read_text())["model_cfg"]
    assert written["vision_cfg"]["patch_dropout"] == 0.5 and written["text_cfg"]["pool_type"] == "first"


# ---- the record travels with the model -------------------------------------------------------------------
def test_model_carries_its_record(fixtures_dir):
    from kontrast.record import build_preprocess

    model, preprocess, tokenizer = kontrast.load(fixtures_dir / "open_clip_vit")
    record = model.record
    assert record.arch is model.config
    assert record.provenance.format == "open_clip" and record.provenance.source.endswith("open_clip_vit")
    assert repr(build_preprocess(record)) == repr(preprocess)
    assert record.tokenizer.kind == "clip_bpe" and tokenizer.context_length == record.tokenizer.context_length


def test_default_model_reads_its_old_config_and_keeps_its_fingerprint():
    """The first default model's kontrast_config.json still loads with its tokenizer and preprocessing (the
    current default uses the ImageNet mean/std 0.5 of its pretrained tower: tests/test_default_models.py)."""
    model, preprocess, tokenizer = kontrast.load("default-v1")
    assert model.record.tokenizer.kind == "hf_tokenizer_json" and tokenizer(["a cat"]).shape == (1, 77)
    assert preprocess.mean == (0.48145466, 0.4578275, 0.40821073)


# Fingerprints computed by kontrast before model records existed: caches and indexes built then stay valid.
# hf_vit changed on purpose: its text pooling is now transformers' (first eos_token_id 49407), which is part of it.
OLD_FINGERPRINTS = {"openai_vit.pt": "78b47227a2df5f95", "openai_vit.jit.pt": "78b47227a2df5f95",
                    "openai_rn.pt": "bd540c79e9c150cf", "open_clip_vit": "551875a89dc68892"}


@pytest.mark.parametrize("name", sorted(OLD_FINGERPRINTS))
def test_fingerprints_of_existing_checkpoints_are_unchanged(name, fixtures_dir):
    model, _, _ = kontrast.load(fixtures_dir / name)
    assert kontrast.fingerprint(model) == OLD_FINGERPRINTS[name]


def test_fingerprint_covers_the_preprocessing(fixtures_dir):
    model, _, _ = kontrast.load(fixtures_dir / "open_clip_vit")
    before = kontrast.fingerprint(model)
    model.record = replace(model.record, preprocess=replace(model.record.preprocess, interpolation="bilinear"))
    assert kontrast.fingerprint(model) != before


def test_record_of_plain_objects_is_the_default_record(fixtures_dir):
    from kontrast.record import ModelRecord, PreprocessConfig, record_of

    model, _, _ = kontrast.load(fixtures_dir / "openai_vit.pt")
    assert isinstance(record_of(model), ModelRecord)
    fresh = kontrast.create_model("tiny-ViT")
    assert fresh.record.provenance.format == "new" and fresh.record.preprocess == PreprocessConfig()


def test_checkpoint_tokenizer_folder_moves_with_the_record(tmp_path):
    folder = shutil.copytree(FAMILIES / "siglip_open_clip", tmp_path / "s")
    model, _, tokenizer = kontrast.load(folder)
    assert model.record.tokenizer.kind == "hf_tokenizer_json" and model.record.tokenizer.path == str(folder)
    assert torch.equal(kontrast.build_tokenizer(model.record)(["a cat"]), tokenizer(["a cat"]))


def test_half_mean_bilinear_squash_survives_finetune_save_export_load(fixtures_dir, data_dir, tmp_path):
    """load -> fine-tune one step -> save -> export hf / open_clip -> load each: the same preprocessing and outputs."""
    from kontrast.record import PreprocessConfig
    from kontrast.train.config import TrainConfig
    from kontrast.train.loop import Trainer, _decoder

    folder = shutil.copytree(fixtures_dir / "open_clip_vit", tmp_path / "start")
    raw = json.loads((folder / "open_clip_config.json").read_text())
    raw["preprocess_cfg"] = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "resize_mode": "squash"}
    (folder / "open_clip_config.json").write_text(json.dumps(raw))
    want = PreprocessConfig(mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", resize_mode="squash")

    cfg = TrainConfig.from_dict({"model": str(folder), "train_data": str(data_dir / "emoji_sample" / "captions.csv"),
                                 "batch_size": 8, "steps": 1, "lr": 1e-3, "warmup": 1, "precision": "fp32", "threads": 1,
                                 "output": str(tmp_path / "run"), "tensorboard": False,
                                 "save_model": str(tmp_path / "tuned")})
    trainer = Trainer(cfg)
    assert trainer.model.record.preprocess == want
    decoder = _decoder(trainer.model, cfg)  # training normalises with the model's own statistics
    assert (decoder.mean, decoder.std) == ((0.5,) * 3, (0.5,) * 3)
    trainer.run()
    tuned, tuned_pre, tuned_tok = kontrast.load(tmp_path / "tuned")
    assert tuned.record.preprocess == want
    start, _, _ = kontrast.load(folder)
    assert kontrast.fingerprint(tuned) != kontrast.fingerprint(start)

    images = [fixtures_dir / "preprocess" / f"{n}.png" for n in ("rgb_300x200", "rgba_161x160", "palette_130x170")]
    pixels = torch.stack([tuned_pre(p) for p in images])
    reference = Preprocess(64, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash", interpolation="bilinear")
    torch.testing.assert_close(pixels, torch.stack([reference(p) for p in images]), atol=0, rtol=0)
    ids = tuned_tok(["a photo of a cat", "an emoji of a red heart"])
    with torch.no_grad():
        ref = tuned.encode_image(pixels), tuned.encode_text(ids)
    for fmt in ("hf", "open_clip"):
        loaded, pre, tok = kontrast.load(kontrast.export(tuned, tmp_path / fmt, format=fmt))
        assert loaded.record.preprocess == want, fmt
        torch.testing.assert_close(torch.stack([pre(p) for p in images]), pixels, atol=0, rtol=0)
        assert torch.equal(tok(["a photo of a cat", "an emoji of a red heart"]), ids)
        with torch.no_grad():
            torch.testing.assert_close(loaded.encode_image(pixels), ref[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(loaded.encode_text(ids), ref[1], atol=1e-4, rtol=1e-4)


def test_evaluation_of_a_model_object_uses_its_record(tmp_path, fixtures_dir):
    """evaluate(model) without a preprocess: the model's own normalisation and resize mode, not OpenAI's."""
    from kontrast.evaluate.runner import _resolve_model

    folder = shutil.copytree(fixtures_dir / "open_clip_vit", tmp_path / "m")
    raw = json.loads((folder / "open_clip_config.json").read_text())
    raw["preprocess_cfg"] = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "resize_mode": "squash"}
    (folder / "open_clip_config.json").write_text(json.dumps(raw))
    model, preprocess, _ = kontrast.load(folder)
    _, derived, _, _ = _resolve_model(model, None, None, None)
    image = fixtures_dir / "preprocess" / "rgb_300x200.png"
    assert torch.equal(derived(image), preprocess(image))
