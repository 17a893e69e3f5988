"""Hugging Face single-tower CLIP folders: ``CLIPVisionModelWithProjection`` and ``CLIPTextModelWithProjection``.

Inputs are the shared fixtures' ``pixels_64`` and ``tokens`` (``shared/fixtures/inputs.safetensors``: OpenAI
preprocessing at 64 px, the CLIP BPE ids of six texts, context 77), so the tests need no preprocessing here.
"""

from __future__ import annotations

from typing import Any

import torch

from .common import SHARED, FamilyContext, family, max_abs, reinit_, save_tensors


def _shared_inputs() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(SHARED / "fixtures" / "inputs.safetensors"))


@family("clip_vision_hf")
def make_clip_vision_hf(ctx: FamilyContext) -> dict[str, Any]:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                              image_size=64, patch_size=16, projection_dim=48, hidden_act="quick_gelu")
    model = CLIPVisionModelWithProjection(config)
    reinit_(model, 2101)
    model.save_pretrained(str(ctx.out))
    loaded = type(model).from_pretrained(str(ctx.out)).eval()
    pixels = _shared_inputs()["pixels_64"]
    with torch.no_grad():
        out = loaded(pixel_values=pixels, output_hidden_states=True)
    expected = {"image_features": out.image_embeds, "image_last_hidden_state": out.last_hidden_state}
    expected.update({f"image_hidden_states.{i}": h for i, h in enumerate(out.hidden_states)})
    save_tensors(ctx.out / "expected.safetensors", expected)
    return {
        "layout": "hf",
        "reference": {"model": f"{type(loaded).__name__}.from_pretrained(dir); "
                               "model(pixel_values=pixels_64, output_hidden_states=True).image_embeds",
                      "inputs": "shared/fixtures/inputs.safetensors pixels_64"},
        "cross_checks": {"reload max abs over state dict": max(
            max_abs(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())},
    }


@family("clip_text_hf")
def make_clip_text_hf(ctx: FamilyContext) -> dict[str, Any]:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=48, hidden_act="gelu",
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
    model = CLIPTextModelWithProjection(config)
    reinit_(model, 2102)
    model.save_pretrained(str(ctx.out))
    loaded = type(model).from_pretrained(str(ctx.out)).eval()
    tokens = _shared_inputs()["tokens"]
    with torch.no_grad():
        out = loaded(input_ids=tokens, output_hidden_states=True)
    expected = {"text_features": out.text_embeds, "text_last_hidden_state": out.last_hidden_state}
    expected.update({f"text_hidden_states.{i}": h for i, h in enumerate(out.hidden_states)})
    save_tensors(ctx.out / "expected.safetensors", expected)
    return {
        "layout": "hf",
        "reference": {"model": f"{type(loaded).__name__}.from_pretrained(dir); "
                               "model(input_ids=tokens, output_hidden_states=True).text_embeds",
                      "inputs": "shared/fixtures/inputs.safetensors tokens"},
        "cross_checks": {"reload max abs over state dict": max(
            max_abs(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())},
    }
