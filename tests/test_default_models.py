"""The embedded models: ``default`` (second generation) and ``default-v1`` (kept for comparison) load by name,
differ, and each carries the record of what it was trained on."""

from __future__ import annotations

import json

import pytest

import kontrast
from kontrast import api, demo


@pytest.mark.parametrize("name", ["default", "default-v1"])
def test_embedded_model_loads_with_its_training_record(name: str) -> None:
    model, preprocess, _ = kontrast.load(name)
    record = demo.training_record(model)
    assert record is not None and record["concepts"] and record["styles"]
    assert "openmoji" not in record["styles"]
    f = model.encode_image(preprocess(demo.load_sample()[0].data)[None], normalize=True)
    assert f.shape == (1, model.embed_dim)


def test_the_two_default_models_differ() -> None:
    a, _, _ = kontrast.load("default")
    b, _, _ = kontrast.load("default-v1")
    assert api.fingerprint(a) != api.fingerprint(b)
    styles_new = json.loads((api.default_model_path("default") / demo.TRAINING_RECORD).read_text())["styles"]
    styles_old = json.loads((api.default_model_path("default-v1") / demo.TRAINING_RECORD).read_text())["styles"]
    assert len(styles_old) == 3 and len(styles_new) >= 20 and set(styles_old) <= set(styles_new)
