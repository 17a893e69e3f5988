"""Feature API for multimodal models: token shapes, hidden states, attention maps, position-embedding interpolation.

Conventions checked against Hugging Face ``CLIPVisionModel`` (``hidden_states[0]`` is the input of the
first block after ``pre_layrnorm``; LLaVA takes ``hidden_states[-2][:, 1:]``).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import kontrast
from kontrast.models.vit import interpolate_pos_embed


@pytest.fixture(scope="module")
def vit(fixtures_dir):
    return kontrast.load(fixtures_dir / "openai_vit.pt")[0]


def _pixels(n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def test_token_shapes(vit):
    v = vit.config.vision
    grid, width, layers = v.image_size // int(v.patch_size), v.width, int(v.layers)
    x = _pixels()
    tokens = vit.encode_image(x, output="tokens", layer=-2)
    assert tokens.shape == (2, grid * grid, width)
    with_cls = vit.encode_image(x, output="tokens", layer=-2, include_class_token=True)
    assert with_cls.shape == (2, grid * grid + 1, width)
    torch.testing.assert_close(with_cls[:, 1:], tokens, rtol=0, atol=0)
    hidden = vit.encode_image(x, output="hidden_states", include_class_token=True)
    assert isinstance(hidden, tuple) and len(hidden) == layers + 1
    assert all(h.shape == (2, grid * grid + 1, width) for h in hidden)
    # layer indices count like Hugging Face hidden_states: -2 is the penultimate block's output, 0 the input
    torch.testing.assert_close(hidden[-2], with_cls, rtol=0, atol=0)
    torch.testing.assert_close(vit.encode_image(x, output="tokens", layer=0, include_class_token=True), hidden[0])
    with pytest.raises(ValueError, match="out of range"):
        vit.encode_image(x, output="tokens", layer=layers + 1)
    with pytest.raises(ValueError, match="out of range"):
        vit.encode_image(x, output="tokens", layer=-(layers + 2), return_attention=True)


@torch.no_grad()
def test_last_hidden_state_through_head_is_the_embedding(vit):
    x = _pixels()
    hidden = vit.encode_image(x, output="hidden_states", include_class_token=True)
    head = vit.visual.ln_post(hidden[-1][:, 0]) @ vit.visual.proj
    torch.testing.assert_close(head, vit.encode_image(x), rtol=0, atol=1e-6)


@torch.no_grad()
def test_attention_maps(vit):
    v = vit.config.vision
    grid = v.image_size // int(v.patch_size)
    out = vit.encode_image(_pixels(), output="tokens", layer=-2, return_attention=True)
    attn = out["attention"]
    seq = grid * grid + 1
    assert attn.shape == (2, v.heads, seq, seq)
    torch.testing.assert_close(attn.sum(dim=-1), torch.ones(2, v.heads, seq))
    assert (attn >= 0).all()
    assert out["features"].shape == (2, grid * grid, v.width)


@torch.no_grad()
def test_matches_hugging_face_hidden_states_and_attention(fixtures_dir):
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.CLIPModel.from_pretrained(fixtures_dir / "hf_vit", attn_implementation="eager").eval()
    model = kontrast.load(fixtures_dir / "hf_vit")[0]
    x = _pixels()
    ref = hf.vision_model(pixel_values=x, output_hidden_states=True, output_attentions=True)
    out = model.encode_image(x, output="hidden_states", include_class_token=True, return_attention=True)
    assert len(out["features"]) == len(ref.hidden_states)
    for mine, theirs in zip(out["features"], ref.hidden_states):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=0, atol=2e-5)
    torch.testing.assert_close(out["attention"], ref.attentions[-1], rtol=0, atol=2e-6)
    llava = model.encode_image(x, output="tokens", layer=-2)  # LLaVA: hidden_states[-2] without the class token
    torch.testing.assert_close(llava, ref.hidden_states[-2][:, 1:], rtol=0, atol=2e-5)


@torch.no_grad()
def test_resnet_feature_maps(fixtures_dir):
    rn = kontrast.load(fixtures_dir / "openai_rn.pt")[0]
    hidden = rn.encode_image(_pixels(), output="hidden_states")
    assert len(hidden) == 5  # stem + 4 stages, each [N, H*W, C]
    assert all(h.ndim == 3 and h.shape[0] == 2 for h in hidden)
    assert hidden[-1].shape[1] == (64 // 32) ** 2
    with pytest.raises(ValueError, match="Vision Transformer"):
        rn.encode_image(_pixels(), output="tokens", return_attention=True)


# ---- position embeddings at another resolution -------------------------------------------------------
def test_interpolation_at_the_original_size_is_exact(fixtures_dir, vit):
    pos = vit.visual.positional_embedding.detach()
    grid = vit.visual.grid_size
    assert torch.equal(interpolate_pos_embed(pos, grid), pos)
    same = kontrast.load(fixtures_dir / "openai_vit.pt", image_size=vit.image_size)[0]
    x = _pixels()
    with torch.no_grad():
        assert torch.equal(same.encode_image(x), vit.encode_image(x))
    assert torch.equal(same.visual.positional_embedding, vit.visual.positional_embedding)


def test_interpolation_to_a_larger_size(fixtures_dir, vit):
    big = kontrast.load(fixtures_dir / "openai_vit.pt", image_size=128)[0]
    v = vit.config.vision
    old, new = vit.visual.grid_size, 128 // int(v.patch_size)
    assert big.image_size == 128 and big.visual.positional_embedding.shape == (new * new + 1, v.width)
    pos = vit.visual.positional_embedding.detach()
    # class row kept; grid rows are a bicubic resize of the [g, g, D] grid
    assert torch.equal(big.visual.positional_embedding[0], pos[0])
    grid = pos[1:].reshape(1, old, old, v.width).permute(0, 3, 1, 2)  # [g*g, D] -> [1, D, g, g]
    want = torch.nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    want = want.permute(0, 2, 3, 1).reshape(new * new, v.width)  # [1, D, g', g'] -> [g'*g', D]
    torch.testing.assert_close(big.visual.positional_embedding[1:].detach(), want)
    with torch.no_grad():
        tokens = big.encode_image(_pixels(1, 128), output="tokens", layer=-2)
        assert tokens.shape == (1, new * new, v.width)
        assert big.encode_image(_pixels(1, 128)).shape == (1, vit.embed_dim)
    rn = kontrast.load(fixtures_dir / "openai_rn.pt", image_size=128)[0]
    with torch.no_grad():
        assert rn.encode_image(_pixels(1, 128)).shape == (1, rn.embed_dim)
