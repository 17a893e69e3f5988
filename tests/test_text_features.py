"""Text token features: ``encode_text(ids, output="tokens" | "hidden_states" | "last_hidden_state", layer=...)``.

Indexing follows Hugging Face's ``CLIPTextModel(output_hidden_states=True)``: ``hidden_states[0]`` = token + position
embeddings, ``[i]`` = block i's output, ``[-2]`` = the penultimate layer diffusion pipelines condition on;
``last_hidden_state`` = the last block after the final LayerNorm. Checked against transformers on the shared
``hf_vit`` fixture, and (without transformers) against the ``clip_text_hf`` reference outputs in
``tests/test_single_tower.py``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file

import kontrast


@pytest.fixture(scope="module")
def tokens(fixtures_dir) -> torch.Tensor:
    return load_file(str(fixtures_dir / "inputs.safetensors"))["tokens"]


@pytest.fixture(scope="module")
def hf_vit(fixtures_dir):
    return kontrast.load(fixtures_dir / "hf_vit")[0]


@torch.no_grad()
def test_hidden_states_match_transformers_exactly(fixtures_dir, hf_vit, tokens):
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.CLIPModel.from_pretrained(fixtures_dir / "hf_vit").eval()
    ref = hf.text_model(input_ids=tokens, output_hidden_states=True)
    states = hf_vit.encode_text(tokens, output="hidden_states")
    assert len(states) == len(ref.hidden_states) == hf_vit.config.text.layers + 1
    for mine, theirs in zip(states, ref.hidden_states):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(hf_vit.encode_text(tokens, output="last_hidden_state"), ref.last_hidden_state,
                               atol=1e-5, rtol=0)
    penultimate = hf_vit.encode_text(tokens, output="tokens", layer=-2)  # Stable Diffusion 2 / "clip skip"
    torch.testing.assert_close(penultimate, ref.hidden_states[-2], atol=1e-5, rtol=0)
    torch.testing.assert_close(hf_vit.encode_text(tokens, output="tokens", layer=0), ref.hidden_states[0])


@torch.no_grad()
def test_last_hidden_state_read_at_end_of_text_is_the_embedding(hf_vit, tokens):
    last = hf_vit.encode_text(tokens, output="last_hidden_state")  # [N, 77, W], every position
    assert last.shape == (len(tokens), 77, hf_vit.config.text.width)
    index = hf_vit.text_pool_index(tokens)
    pooled = last[torch.arange(len(tokens)), index] @ hf_vit.text_projection
    torch.testing.assert_close(pooled, hf_vit.encode_text(tokens), atol=1e-5, rtol=0)


@torch.no_grad()
def test_layers_and_outputs_checked(hf_vit, tokens):
    layers = hf_vit.config.text.layers
    with pytest.raises(ValueError, match="out of range for a 2-layer text tower"):
        hf_vit.encode_text(tokens, output="tokens", layer=layers + 1)
    with pytest.raises(ValueError, match="out of range"):
        hf_vit.encode_text(tokens, output="tokens", layer=-(layers + 2))
    with pytest.raises(ValueError, match="output must be"):
        hf_vit.encode_text(tokens, output="pooled")
    assert torch.equal(hf_vit.encode_text(tokens, output="tokens", layer=-1),
                       hf_vit.encode_text(tokens, output="hidden_states")[-1])


@torch.no_grad()
def test_hugging_face_text_tower_gives_its_encoders_hidden_states():
    """The default model's MiniLM tower: the encoder's own hidden states with the padding mask its pooling uses."""
    transformers = pytest.importorskip("transformers")
    model, _, tokenizer = kontrast.load("default")
    ids = tokenizer(["a red heart", "a dog running on the beach at sunset"])
    states = model.encode_text(ids, output="hidden_states")
    encoder = model.text.transformer
    assert len(states) == encoder.config.num_hidden_layers + 1
    assert states[-1].shape == (2, ids.shape[1], encoder.config.hidden_size)
    mask = (ids != model.text.pad_token_id).long()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = transformers.AutoModel.from_pretrained(model.text.folder).eval()
    ref.load_state_dict(model.text.transformer.state_dict())  # the default's two fine-tuned layers over the package's
    theirs = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for mine, other in zip(states, theirs):
        torch.testing.assert_close(mine, other, atol=1e-4, rtol=1e-4)  # oneDNN linears vs plain ones
    # mean over the real tokens of the last layer, projected, is the embedding
    last = model.encode_text(ids, output="last_hidden_state")
    pooled = (last * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(model.text.proj(pooled), model.encode_text(ids), atol=1e-5, rtol=0)
    penultimate = model.encode_text(ids, output="tokens", layer=-2)
    torch.testing.assert_close(penultimate, states[-2], atol=0, rtol=0)


@torch.no_grad()
def test_siglip_tokens_are_every_patch():
    """SigLIP's image tower has no class token: token features are the g*g patches (multimodal LLMs read them)."""
    from pathlib import Path

    model, _, tokenizer = kontrast.load(Path(__file__).parent / "fixtures" / "families" / "siglip_hf")
    x = torch.randn(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    grid = model.image_size // model.visual.patch_size
    tokens = model.encode_image(x, output="tokens", layer=-2)
    assert tokens.shape == (2, grid * grid, model.visual.output_dim)
    assert model.encode_image(x, output="tokens", layer=-2, include_class_token=True).shape == tokens.shape
    text = model.encode_text(tokenizer(["a cat"]), output="tokens", layer=-2)
    assert text.shape == (1, model.context_length, model.config.text.width)
