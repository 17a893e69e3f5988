"""The embedded models: ``default`` (fourth generation), ``default-v3``, ``default-v2`` and ``default-v1`` (kept for
comparison) load
by name, differ, and each carries the record of what it was trained on."""

from __future__ import annotations

import json

import pytest

import kontrast
from kontrast import api, demo


@pytest.mark.parametrize("name", ["default", "default-v3", "default-v2", "default-v1"])
def test_embedded_model_loads_with_its_training_record(name: str) -> None:
    model, preprocess, _ = kontrast.load(name)
    record = demo.training_record(model)
    assert record is not None and record["concepts"] and record["styles"]
    assert "openmoji" not in record["styles"]
    f = model.encode_image(preprocess(demo.load_sample()[0].data)[None], normalize=True)
    assert f.shape == (1, model.embed_dim)


def test_the_four_default_models_differ() -> None:
    models = {name: kontrast.load(name)[0] for name in ("default", "default-v3", "default-v2", "default-v1")}
    assert len({api.fingerprint(m) for m in models.values()}) == 4
    assert models["default"].config.vision.kind == models["default-v3"].config.vision.kind == "efficientnet_lite"
    assert models["default-v2"].config.vision.kind == models["default-v1"].config.vision.kind == "vit"
    records = {name: json.loads((api.default_model_path(name) / demo.TRAINING_RECORD).read_text())
               for name in models}
    styles_old, styles_new = records["default-v1"]["styles"], records["default"]["styles"]
    assert len(styles_old) == 3 and len(styles_new) >= 20 and set(styles_old) <= set(styles_new)
    assert records["default"]["styles"] == records["default-v3"]["styles"] == records["default-v2"]["styles"]  # same data
    assert records["default"]["concepts"] == records["default-v3"]["concepts"]
    assert "ImageNet" in records["default"]["pretrained"]["image_tower"]
    assert models["default"].record.preprocess.mean == (0.5, 0.5, 0.5)
