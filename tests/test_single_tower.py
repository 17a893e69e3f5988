"""Hugging Face one-tower CLIP classes (``CLIPVisionModelWithProjection``, ``CLIPTextModelWithProjection``).

Fixtures ``tests/fixtures/families/clip_{vision,text}_hf`` were saved and run by transformers 5.23: the tower loads
exactly (embeddings and every hidden state), the missing tower's methods say so in one line naming the class and
the folder, and an export in the Hugging Face layout loads back (in kontrast, and in transformers when installed).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import kontrast
from kontrast.cli import main
from kontrast.errors import ConfigError, KontrastError, MissingTowerError
from kontrast.models.single_tower import SingleTowerCLIP

FAMILIES = Path(__file__).parent / "fixtures" / "families"
TOWERS = {"vision": FAMILIES / "clip_vision_hf", "text": FAMILIES / "clip_text_hf"}


@pytest.fixture(scope="module")
def inputs(fixtures_dir) -> dict[str, torch.Tensor]:
    return load_file(str(fixtures_dir / "inputs.safetensors"))


def _expected(tower: str) -> dict[str, torch.Tensor]:
    return load_file(str(TOWERS[tower] / "expected.safetensors"))


@torch.no_grad()
def _check(model: SingleTowerCLIP, tower: str, inputs: dict[str, torch.Tensor]) -> None:
    exp = _expected(tower)
    if tower == "vision":
        x = inputs["pixels_64"]
        torch.testing.assert_close(model.encode_image(x), exp["image_features"], atol=1e-4, rtol=1e-4)
        states = model.encode_image(x, output="hidden_states", include_class_token=True)
        prefix = "image"
    else:
        x = inputs["tokens"]
        torch.testing.assert_close(model.encode_text(x), exp["text_features"], atol=1e-4, rtol=1e-4)
        states = model.encode_text(x, output="hidden_states")
        torch.testing.assert_close(model.encode_text(x, output="last_hidden_state"), exp["text_last_hidden_state"],
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.encode_text(x, output="tokens", layer=-2), exp["text_hidden_states.1"],
                                   atol=1e-4, rtol=1e-4)
        prefix = "text"
    assert len(states) == sum(k.startswith(f"{prefix}_hidden_states.") for k in exp)
    for i, state in enumerate(states):
        torch.testing.assert_close(state, exp[f"{prefix}_hidden_states.{i}"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_tower_loads_exactly(tower, inputs):
    model, preprocess, tokenizer = kontrast.load(TOWERS[tower])
    assert isinstance(model, SingleTowerCLIP) and model.config.tower == tower
    assert all(k.startswith("visual.") == (tower == "vision") for k in model.state_dict())  # that tower only
    _check(model, tower, inputs)
    if tower == "text":  # CLIP BPE ids at the tower's context, as the shared fixtures' tokens
        assert torch.equal(tokenizer(["a photo of a cat"]), inputs["tokens"][:1])
    else:
        assert preprocess.image_size == 64


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_missing_tower_says_so_in_one_line(tower, inputs):
    model, preprocess, tokenizer = kontrast.load(TOWERS[tower])
    cls = "CLIPVisionModelWithProjection" if tower == "vision" else "CLIPTextModelWithProjection"
    missing = "text" if tower == "vision" else "image"
    calls = [lambda: model.get_logits(inputs["pixels_64"], inputs["tokens"]), lambda: model(inputs["pixels_64"]),
             lambda: model.logit_scale]
    if tower == "vision":
        calls += [lambda: model.encode_text(inputs["tokens"]), lambda: tokenizer(["a cat"]),
                  lambda: model.transformer, lambda: model.context_length]
    else:
        calls += [lambda: model.encode_image(inputs["pixels_64"]), lambda: preprocess("cat.png"),
                  lambda: model.visual, lambda: model.image_size]
    for call in calls:
        with pytest.raises(MissingTowerError) as info:
            call()
        message = str(info.value)
        assert cls in message and str(TOWERS[tower]) in message and f"no {missing} tower" in message
        assert "\n" not in message
    assert isinstance(info.value, KontrastError) and not hasattr(model, "visual" if tower == "text" else "ln_final")
    assert not model.sigmoid and model.logit_bias is None


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_hf_round_trip(tower, inputs, tmp_path):
    model, _, _ = kontrast.load(TOWERS[tower])
    out = kontrast.export(model, tmp_path / "out", format="hf")
    written = json.loads((out / "config.json").read_text())
    original = json.loads((TOWERS[tower] / "config.json").read_text())
    assert written["architectures"] == original["architectures"] and written["model_type"] == original["model_type"]
    assert set(load_file(str(out / "model.safetensors"))) == set(load_file(str(TOWERS[tower] / "model.safetensors")))
    assert (out / "preprocessor_config.json").is_file() == (tower == "vision")
    again, _, _ = kontrast.load(out)
    assert again.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())
    assert kontrast.fingerprint(again) == kontrast.fingerprint(model)
    _check(again, tower, inputs)


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_export_loads_in_transformers(tower, inputs, tmp_path):
    transformers = pytest.importorskip("transformers")
    model, _, _ = kontrast.load(TOWERS[tower])
    out = kontrast.export(model, tmp_path / "out", format="hf")
    cls = getattr(transformers, model.config.hf_class)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = cls.from_pretrained(out).eval()
    with torch.no_grad():
        if tower == "vision":
            theirs, mine = hf(pixel_values=inputs["pixels_64"]).image_embeds, model.encode_image(inputs["pixels_64"])
        else:
            theirs, mine = hf(input_ids=inputs["tokens"]).text_embeds, model.encode_text(inputs["tokens"])
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)


def test_precision_keeps_the_fingerprint(inputs):
    fp32 = kontrast.load(TOWERS["text"])[0]
    bf16 = kontrast.load(TOWERS["text"], precision="bf16")[0]
    assert bf16.dtype == torch.bfloat16 and kontrast.fingerprint(bf16) == kontrast.fingerprint(fp32)
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(bf16.encode_text(inputs["tokens"]).float(),
                                                    fp32.encode_text(inputs["tokens"]))
    assert cos.min() > 0.99


def test_other_formats_refused(tmp_path):
    model, _, _ = kontrast.load(TOWERS["vision"])
    with pytest.raises(ConfigError, match="format 'hf' only"):
        kontrast.export(model, tmp_path / "oc", format="open_clip")
    with pytest.raises(ConfigError, match=r"format='hf'"):
        kontrast.save(model, tmp_path / "k")
    with pytest.raises(KontrastError, match="own resolution"):
        kontrast.load(TOWERS["vision"], image_size=96)


@pytest.mark.parametrize(("edit", "needle"), [
    ({"architectures": ["CLIPVisionModel"]}, "CLIPVisionModel has no projection"),
    ({"num_channels": 4}, "num_channels=4"),
    ({"use_rope": True}, "unknown key use_rope=True"),
])
def test_unsupported_configs_refused_in_one_line(tmp_path, edit, needle):
    folder = tmp_path / "tower"
    shutil.copytree(TOWERS["vision"], folder)
    raw = json.loads((folder / "config.json").read_text()) | edit
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as info:
        kontrast.load(folder)
    assert needle in str(info.value) and "config.json" in str(info.value) and "\n" not in str(info.value)


def test_text_tower_with_another_tokenizer_refused(tmp_path):
    folder = tmp_path / "tower"
    shutil.copytree(TOWERS["text"], folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    with pytest.raises(ConfigError, match="tokenizer_class='BertTokenizer'"):
        kontrast.load(folder)


def test_cli_info_shows_the_tower(capsys):
    assert main(["info", str(TOWERS["text"])]) == 0
    out = capsys.readouterr().out
    config = json.loads(out[: out.rindex("}") + 1])
    assert config["config"]["family"] == "clip_tower" and config["config"]["tower"] == "text"
    assert config["config"]["hf_class"] == "CLIPTextModelWithProjection"
    assert "vision_cfg" not in config["config"]["model_cfg"] and config["checkpoint"] == str(TOWERS["text"])


def test_cli_says_the_missing_tower_in_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KONTRAST_CACHE", str(tmp_path))
    rc = main(["classify", "/work/shared/fixtures/preprocess/rgb_64x64.png", "--labels", "cat", "dog",
               "--model", str(TOWERS["vision"]), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "has no text tower" in err[-1] and "CLIPVisionModelWithProjection" in err[-1]
