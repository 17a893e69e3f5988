"""The embedded models: ``default`` (sixth generation), ``default-v5``, ``default-v4``, ``default-v3``, ``default-v2`` and ``default-v1``
(kept for comparison) load by name, differ, and each carries the record of what it was trained on."""

from __future__ import annotations

import json

import pytest
import torch

import kontrast
from kontrast import api, demo


@pytest.mark.parametrize("name", ["default", "default-v5", "default-v4", "default-v3", "default-v2", "default-v1"])
def test_embedded_model_loads_with_its_training_record(name: str) -> None:
    model, preprocess, _ = kontrast.load(name)
    record = demo.training_record(model)
    assert record is not None and record["concepts"] and record["styles"]
    assert "openmoji" not in record["styles"]
    f = model.encode_image(preprocess(demo.load_sample()[0].data)[None], normalize=True)
    assert f.shape == (1, model.embed_dim)


def test_the_six_default_models_differ() -> None:
    names = ("default", "default-v5", "default-v4", "default-v3", "default-v2", "default-v1")
    models = {name: kontrast.load(name)[0] for name in names}
    assert len({api.fingerprint(m) for m in models.values()}) == 6
    lite = {models[n].config.vision.kind for n in ("default", "default-v5", "default-v4", "default-v3")}
    assert lite == {"efficientnet_lite"}
    assert models["default-v2"].config.vision.kind == models["default-v1"].config.vision.kind == "vit"
    records = {name: json.loads((api.default_model_path(name) / demo.TRAINING_RECORD).read_text())
               for name in models}
    styles_old, styles_new = records["default-v1"]["styles"], records["default"]["styles"]
    assert len(styles_old) == 3 and len(styles_new) >= 20 and set(styles_old) <= set(styles_new)
    assert records["default-v4"]["styles"] == records["default-v3"]["styles"] == records["default-v2"]["styles"]  # same data
    # the sixth trained on the fifth's data (further, with the text tower's last two layers unlocked)
    assert {k: v for k, v in records["default"].items() if k != "pretrained"} == \
        {k: v for k, v in records["default-v5"].items() if k != "pretrained"}
    assert "last two layers fine-tuned" in records["default"]["pretrained"]["text_tower"]
    flags = records["default"]["flags"]  # the fifth adds the country flags of four flag sets, nothing else
    assert set(styles_new) == set(records["default-v4"]["styles"]) | set(flags["styles"])
    assert flags["samples"] == sum(flags["styles"].values()) and set(flags["styles"]) == set(flags["sets"])
    assert records["default"]["concepts"] == records["default-v4"]["concepts"] == records["default-v3"]["concepts"]
    assert "ImageNet" in records["default"]["pretrained"]["image_tower"]
    assert models["default"].record.preprocess.mean == (0.5, 0.5, 0.5)


def test_the_sixth_ships_its_two_trained_text_layers_and_no_other() -> None:
    from safetensors.torch import load_file

    sd = load_file(str(api.default_model_path("default") / "kontrast_model.safetensors"))
    layers = {".".join(k.split(".")[:5]) for k in sd if k.startswith("text.transformer.")}
    assert layers == {"text.transformer.encoder.layer.4", "text.transformer.encoder.layer.5"}
    assert not any(k.startswith("text.transformer.") for k in load_file(
        str(api.default_model_path("default-v5") / "kontrast_model.safetensors")))
    new, old = kontrast.load("default")[0], kontrast.load("default-v5")[0]
    key = "encoder.layer.5.output.dense.weight"
    assert not torch.equal(new.text.transformer.get_parameter(key), old.text.transformer.get_parameter(key))
    key = "encoder.layer.3.output.dense.weight"  # a locked layer: the package's weights in both
    assert torch.equal(new.text.transformer.get_parameter(key), old.text.transformer.get_parameter(key))
