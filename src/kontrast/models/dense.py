"""Dense (per-patch) image features in the joint embedding space, for zero-shot localisation.

An image tower pools its tokens into one vector; to ask *where* a text is, each patch needs a vector in the
same space as the text. Three ways, chosen by ``method``:

- ``"maskclip"`` (Zhou et al., *Extract Free Dense Labels from CLIP*, 2022): the last pooling step's VALUE path
  applied to every token, without the query/key mixing. For a CLIP ViT the last block becomes
  ``out_proj(v(ln_1(x)))`` per token (no residual, no MLP), then ``ln_post`` and ``proj``; for a modified
  ResNet, ``c_proj(v_proj(token + position))`` from the attention pool; for SigLIP's attention-pool head,
  ``y = out_proj(v(token)); y + mlp(ln(y))``. Each is exactly the pooled embedding with attention weight 1
  on one token, which is what the pooling computes a weighted mean of. A ConvNeXt tower pools by a plain mean,
  so both dense methods give its head (LayerNorm, projection) applied at each cell of the last feature map.
- ``"clearclip"`` (Lan et al., *ClearCLIP*, 2024): as ``"maskclip"``, but each token first mixes with the tokens
  whose QUERIES resemble its own (query-query attention in the last pooling step: self-similar regions pool
  together, which smooths the per-patch noise without the class token's global mixing); still no residual, no MLP
  in a ViT's last block.
- ``"tokens"``: what a naive reading gives: a CLIP ViT's last-block patch tokens through ``ln_post`` and
  ``proj``; for attention-pool towers (ResNet, SigLIP), the pool run once per token with that token as the
  query. Known to localise poorly (the last block mixes global context into every token).
- ``"crops"``: the sliding-window baseline of the "zero-shot detection with CLIP" recipes: crops of the input
  (windows of whole patch cells, two sizes, stride one cell) are embedded as images, and each cell gets the
  mean similarity of the windows that cover it. Needs ``text`` (it scores, it has no features per cell).

Functions here take pixels ``[N, 3, H, W]`` (normalised as the model's preprocessing does, any size that is a
multiple of the patch size: position embeddings are interpolated) and return ``[N, gh, gw, E]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .convnext import ConvNeXtTower
from .efficientnet_lite import EfficientNetLiteTower
from .layers import linear, linear_params
from .resnet import ModifiedResNet
from .siglip import MAPHead, SigLIPVisionTransformer
from .vit import VisionTransformer, interpolate_pos_embed

METHODS = ("maskclip", "clearclip", "tokens", "crops")
DENSE_METHODS = METHODS[:3]
DEFAULT_METHOD = "clearclip"  # the best of the dense methods in benchmarks/pointing.py (see README, "Where")


def dense_features(visual: torch.nn.Module, pixels: torch.Tensor, method: str = DEFAULT_METHOD) -> torch.Tensor:
    """Per-patch features ``[N, gh, gw, E]`` (unnormalised) of an image tower (``"maskclip"``, ``"clearclip"`` or
    ``"tokens"``)."""
    if method not in DENSE_METHODS:
        raise ValueError(f"dense features come from method {', '.join(DENSE_METHODS)}, not {method!r}")
    if isinstance(visual, VisionTransformer):
        return _vit_dense(visual, pixels, method)
    if isinstance(visual, ModifiedResNet):
        return _resnet_dense(visual, pixels, method)
    if isinstance(visual, SigLIPVisionTransformer):
        return _siglip_dense(visual, pixels, method)
    if isinstance(visual, ConvNeXtTower):
        return _convnext_dense(visual, pixels)
    if isinstance(visual, EfficientNetLiteTower):
        return _lite_dense(visual, pixels)
    raise ValueError(f"localisation is not implemented for a {type(visual).__name__} image tower "
                     "(ViT, modified ResNet, SigLIP, ConvNeXt and EfficientNet-Lite towers are)")


def grid_shape(visual: torch.nn.Module, height: int, width: int) -> tuple[int, int]:
    """The patch grid ``(gh, gw)`` an input of ``height x width`` pixels gives."""
    if isinstance(visual, (ModifiedResNet, ConvNeXtTower)):
        return height // 32, width // 32
    if isinstance(visual, EfficientNetLiteTower):  # TensorFlow SAME padding: every stride-2 step rounds up
        return math.ceil(height / 32), math.ceil(width / 32)
    patch = int(visual.patch_size)
    return height // patch, width // patch


# ---- ViT (OpenAI CLIP layout) ----------------------------------------------------------------------------
def _vit_dense(visual: VisionTransformer, pixels: torch.Tensor, method: str) -> torch.Tensor:
    n, _, h, w = pixels.shape
    gh, gw = grid_shape(visual, h, w)
    if gh != gw:
        raise ValueError(f"ViT localisation needs a square input, got {h}x{w}")
    x = visual.embed(pixels)  # [N, 1+g*g, D]; positions interpolated for other sizes
    blocks = visual.transformer.resblocks
    if method == "tokens":
        x = visual.transformer(x)  # [N, 1+g*g, D]
        tokens = visual.ln_post(x[:, 1:]) @ visual.proj  # [N, g*g, E]
    else:
        x = visual.transformer(x, stop_at=len(blocks) - 1)  # every block but the last
        last = blocks[-1]
        h = last.ln_1(x[:, 1:])  # [N, g*g, D]
        if method == "maskclip":
            width = h.shape[-1]
            v = linear_params(h, last.attn.in_proj_weight[2 * width:], last.attn.in_proj_bias[2 * width:])
            y = linear(v, last.attn.out_proj)  # [N, g*g, D]: the last attention with weight 1 on each token
        else:
            y = _query_query(last.attn, h)
        tokens = visual.ln_post(y) @ visual.proj  # [N, g*g, E]
    return tokens.reshape(n, gh, gw, -1)  # [N, g*g, E] -> [N, gh, gw, E]


def _query_query(attn, h: torch.Tensor) -> torch.Tensor:
    """ClearCLIP's attention: queries against queries, then the values and the output projection, ``[N, L, D]``."""
    n, length, width = h.shape
    heads = attn.heads
    qkv = linear_params(h, attn.in_proj_weight, attn.in_proj_bias)
    qkv = qkv.view(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)  # [N, L, 3D] -> [3, N, H, L, D/H]
    out = F.scaled_dot_product_attention(qkv[0], qkv[0], qkv[2])  # [N, H, L, D/H]
    out = out.transpose(1, 2).reshape(n, length, width)  # [N, H, L, D/H] -> [N, L, H, D/H] -> [N, L, D]
    return linear(out, attn.out_proj)


# ---- modified ResNet --------------------------------------------------------------------------------------
def _resnet_dense(visual: ModifiedResNet, pixels: torch.Tensor, method: str) -> torch.Tensor:
    fmap = visual.feature_maps(pixels)[-1]  # [N, C, gh, gw]
    n, c, gh, gw = fmap.shape
    pool = visual.attnpool
    x = pool.tokens(fmap.contiguous())  # [N, 1+gh*gw, C]: mean token first, positions added
    if method == "maskclip":
        return pool.c_proj(pool.v_proj(x[:, 1:])).reshape(n, gh, gw, -1)  # [N, gh*gw, E] -> [N, gh, gw, E]
    heads, hd = pool.num_heads, c // pool.num_heads
    length = x.shape[1]
    q = pool.q_proj(x[:, 1:]).view(n, gh * gw, heads, hd).transpose(1, 2)  # [N, L-1, C] -> [N, H, L-1, C/H]
    if method == "clearclip":  # queries against the other cells' queries, values of the cells
        v = pool.v_proj(x[:, 1:]).view(n, gh * gw, heads, hd).transpose(1, 2)  # [N, L-1, C] -> [N, H, L-1, C/H]
        out = F.scaled_dot_product_attention(q, q, v)  # [N, H, L-1, C/H]
    else:
        k = pool.k_proj(x).view(n, length, heads, hd).transpose(1, 2)  # [N, L, C] -> [N, H, L, C/H]
        v = pool.v_proj(x).view(n, length, heads, hd).transpose(1, 2)  # [N, L, C] -> [N, H, L, C/H]
        out = F.scaled_dot_product_attention(q, k, v)  # [N, H, L-1, C/H]: the pool queried by every token
    out = out.transpose(1, 2).reshape(n, gh * gw, c)  # [N, H, L-1, C/H] -> [N, L-1, H, C/H] -> [N, L-1, C]
    return pool.c_proj(out).reshape(n, gh, gw, -1)  # [N, L-1, E] -> [N, gh, gw, E]


# ---- SigLIP (no class token, attention-pool head) ----------------------------------------------------------
def _siglip_tokens(visual: SigLIPVisionTransformer, pixels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """``ln_post`` of the last block's tokens ``[N, g*g, D]``, with positions interpolated for other sizes."""
    _, _, h, w = pixels.shape
    gh, gw = grid_shape(visual, h, w)
    x = visual.patchify(pixels.to(visual.conv1.weight.dtype))  # [N, g*g, D]
    pos = visual.positional_embedding
    if pos.shape[0] != x.shape[1]:
        if gh != gw:
            raise ValueError(f"SigLIP localisation at another size needs a square input, got {h}x{w}")
        # interpolate_pos_embed keeps a leading class row: give it a dummy one and drop it again
        pos = interpolate_pos_embed(torch.cat([pos[:1], pos]), gh)[1:]
    x = visual.transformer(x + pos.to(x.dtype))
    return visual.ln_post(x), gh, gw


def _map_value_path(head: MAPHead, tokens: torch.Tensor) -> torch.Tensor:
    """The attention-pool head with all attention on one token, for every token: ``[N, L, D] -> [N, L, D]``."""
    width = tokens.shape[-1]
    attn = head.attn
    v = linear_params(tokens, attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:])
    y = linear(v, attn.out_proj)
    return linear(linear(head.ln(y), head.mlp.c_fc, act=head.mlp.gelu), head.mlp.c_proj, residual=y)


def _map_per_token_query(head: MAPHead, tokens: torch.Tensor, query_query: bool = False) -> torch.Tensor:
    """The attention-pool head queried by each token instead of the probe (keys: the tokens, or with
    ``query_query`` their queries, ClearCLIP's way): ``[N, L, D] -> [N, L, D]``."""
    n, length, width = tokens.shape
    heads = head.attn.heads
    qkv = linear_params(tokens, head.attn.in_proj_weight, head.attn.in_proj_bias)
    # [N, L, 3D] -> [N, L, 3, H, D/H] -> [3, N, H, L, D/H]
    qkv = qkv.view(n, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(qkv[0], qkv[0] if query_query else qkv[1], qkv[2])  # [N, H, L, D/H]
    out = out.transpose(1, 2).reshape(n, length, width)  # [N, H, L, D/H] -> [N, L, H, D/H] -> [N, L, D]
    y = linear(out, head.attn.out_proj)
    return linear(linear(head.ln(y), head.mlp.c_fc, act=head.mlp.gelu), head.mlp.c_proj, residual=y)


def _siglip_dense(visual: SigLIPVisionTransformer, pixels: torch.Tensor, method: str) -> torch.Tensor:
    tokens, gh, gw = _siglip_tokens(visual, pixels)
    if method == "maskclip":
        out = _map_value_path(visual.attn_pool, tokens)
    else:
        out = _map_per_token_query(visual.attn_pool, tokens, query_query=method == "clearclip")
    return out.reshape(tokens.shape[0], gh, gw, -1)  # [N, g*g, D] -> [N, gh, gw, D]


# ---- ConvNeXt ---------------------------------------------------------------------------------------------
def _convnext_dense(visual: ConvNeXtTower, pixels: torch.Tensor) -> torch.Tensor:
    """The tower's pooled LayerNorm and head at every cell of the last feature map: ``[N, gh, gw, E]``."""
    fmap = visual.feature_maps(pixels)[-1]  # [N, C, gh, gw]
    norm = visual.trunk.head.norm
    cells = F.layer_norm(fmap.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    return visual.head(cells.contiguous())  # [N, gh, gw, C] -> [N, gh, gw, E]


# ---- EfficientNet-Lite ------------------------------------------------------------------------------------
def _lite_dense(visual: EfficientNetLiteTower, pixels: torch.Tensor) -> torch.Tensor:
    """The head at every cell of the last feature map (the tower pools by a plain mean): ``[N, gh, gw, E]``."""
    fmap = visual.feature_maps(pixels)[-1]  # [N, 1280, gh, gw]
    return visual.head(fmap.permute(0, 2, 3, 1).contiguous())  # [N, 1280, gh, gw] -> [N, gh, gw, E]


# ---- sliding-window crops (baseline) -------------------------------------------------------------------
def crop_scores(
    model: torch.nn.Module, pixels: torch.Tensor, text_features: torch.Tensor, batch_size: int = 64
) -> torch.Tensor:
    """Cosine similarity per grid cell ``[N, T, gh, gw]`` from sliding windows embedded as whole images.

    Windows span ``ceil(g/2)`` and ``ceil(g/3)`` cells (stride one cell); each is resized (bilinear, on the
    normalised pixels) to the model's input size and embedded; a cell's score is the mean over the windows
    covering it. ``text_features`` ``[T, E]`` must be unit vectors.
    """
    visual = model.visual
    n, _, h, w = pixels.shape
    gh, gw = grid_shape(visual, h, w)
    cell_h, cell_w = h // gh, w // gw
    size = model.image_size
    windows: list[tuple[int, int, int, int]] = []  # (row, col, rows, cols) in cells
    for span in sorted({max(1, math.ceil(gh / 2)), max(1, math.ceil(gh / 3))}):
        span_w = max(1, round(span * gw / gh))
        windows += [(r, c, span, span_w) for r in range(gh - span + 1) for c in range(gw - span_w + 1)]
    total = torch.zeros(n, text_features.shape[0], gh, gw, dtype=torch.float32)
    count = torch.zeros(gh, gw, dtype=torch.float32)
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        crops = [pixels[:, :, r * cell_h:(r + rows) * cell_h, c * cell_w:(c + cols) * cell_w] for r, c, rows, cols in chunk]
        crops = torch.cat([F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False) for crop in crops])
        emb = F.normalize(model.encode_image(crops).float(), dim=-1)  # [len(chunk)*N, E], window-major
        scores = (emb @ text_features.float().T).view(len(chunk), n, -1)  # [len(chunk)*N, T] -> [W, N, T]
        for (r, c, rows, cols), score in zip(chunk, scores):
            total[:, :, r:r + rows, c:c + cols] += score[:, :, None, None]
            count[r:r + rows, c:c + cols] += 1
    return total / count.clamp(min=1)
