"""Saving a model whose text tower is a packaged Hugging Face encoder (the default models' all-MiniLM-L6-v2):
the package carries the weights, so only what training changed is written, and loading lays it over the package."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

import kontrast


def _text_keys(folder) -> set[str]:
    return {k for k in load_file(str(folder / "kontrast_model.safetensors")) if k.startswith("text.transformer.")}


def test_an_untouched_packaged_encoder_is_not_written(tmp_path):
    model, _, _ = kontrast.load("default-v5")
    kontrast.save(model, tmp_path / "m")
    assert _text_keys(tmp_path / "m") == set()
    trained, _, _ = kontrast.load("default")  # the sixth generation trained its last two text layers
    kontrast.save(trained, tmp_path / "t")
    assert {".".join(k.split(".")[:5]) for k in _text_keys(tmp_path / "t")} == {
        "text.transformer.encoder.layer.4", "text.transformer.encoder.layer.5"}


def test_a_partly_trained_packaged_encoder_writes_only_its_changed_tensors(tmp_path):
    model, _, tokenizer = kontrast.load("default-v5")
    key = "encoder.layer.5.output.dense.weight"
    with torch.no_grad():
        model.text.transformer.get_parameter(key).mul_(1.5)  # what training the last layer would do
        expected = model.encode_text(tokenizer(["an emoji of a red heart", "a flag"]))
    kontrast.save(model, tmp_path / "m")
    assert _text_keys(tmp_path / "m") == {f"text.transformer.{key}"}
    again, _, _ = kontrast.load(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(again.encode_text(tokenizer(["an emoji of a red heart", "a flag"])), expected)
    kontrast.save(model, tmp_path / "whole", include_text_encoder=True)
    assert len(_text_keys(tmp_path / "whole")) > 50  # every tensor of the encoder when asked for
