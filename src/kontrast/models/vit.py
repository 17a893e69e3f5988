"""Vision Transformer image tower (OpenAI CLIP layout: ``conv1``, ``class_embedding``,
``positional_embedding``, ``ln_pre``, ``transformer``, ``ln_post``, ``proj``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Transformer, _onednn_ok, linear_params


def interpolate_pos_embed(pos: torch.Tensor, new_grid: int) -> torch.Tensor:
    """Resize ViT position embeddings ``[1 + g*g, D]`` to ``[1 + new_grid**2, D]`` (bicubic, as open_clip).

    The class-token row is kept; at the original size the result equals the input exactly.
    """
    cls, grid_pos = pos[:1], pos[1:]
    old_grid = round(math.sqrt(grid_pos.shape[0]))
    if old_grid * old_grid != grid_pos.shape[0]:
        raise ValueError(f"position embedding of {pos.shape[0]} rows is not 1 + a square grid")
    if old_grid == new_grid:
        return pos.clone()
    dim = grid_pos.shape[1]
    # [g*g, D] -> [1, g, g, D] -> [1, D, g, g]
    grid = grid_pos.reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    # [1, D, g', g'] -> [1, g', g', D] -> [g'*g', D]
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, dim).to(pos.dtype)
    return torch.cat([cls, grid], dim=0)


class VisionTransformer(nn.Module):
    """ViT with a class token; the embedding is ``ln_post(cls) @ proj``."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        layers: int,
        heads: int,
        output_dim: int,
        mlp_ratio: float = 4.0,
        act: str = "gelu",
        eps: float = 1e-5,
        pool_type: str = "tok",
        final_ln_after_pool: bool = False,
        no_ln_pre: bool = False,
    ) -> None:
        super().__init__()
        if pool_type not in ("tok", "avg"):
            raise ValueError(f"pool_type must be 'tok' or 'avg', not {pool_type!r}")
        self.pool_type, self.final_ln_after_pool = pool_type, final_ln_after_pool
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size = image_size, patch_size
        self.grid_size = image_size // patch_size
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size**2 + 1, width))
        self.ln_pre = nn.Identity() if no_ln_pre else nn.LayerNorm(width, eps=eps)
        self.transformer = Transformer(width, layers, heads, mlp_ratio, act, eps)
        self.ln_post = nn.LayerNorm(width, eps=eps)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def init_weights(self) -> None:
        width = self.class_embedding.shape[0]
        nn.init.normal_(self.class_embedding, std=width**-0.5)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.proj, std=width**-0.5)
        self.transformer.init_weights()

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding (the ``conv1`` convolution), batch-first: ``[N, 3, H, W] -> [N, g*g, D]``.

        At inference on CPU the stride-p, p x p convolution runs as one matrix multiply over the
        non-overlapping patches, about twice as fast as the convolution kernel; same numbers to rounding.
        """
        n, c, h, w = x.shape
        p, weight = self.patch_size, self.conv1.weight
        if type(self.conv1) is nn.Conv2d and h % p == 0 and w % p == 0 and _onednn_ok(x, weight):
            gh, gw = h // p, w // p
            # [N, C, gh*p, gw*p] -> [N, C, gh, p, gw, p] -> [N, gh, gw, C, p, p] -> [N, gh*gw, C*p*p]
            patches = x.reshape(n, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, c * p * p)
            # [D, C, p, p] -> [D, C*p*p], the same (channel, row, column) order as the patches
            return linear_params(patches, weight.reshape(weight.shape[0], -1), self.conv1.bias)
        x = self.conv1(x)  # [N, D, gh, gw]
        return x.flatten(2).transpose(1, 2)  # [N, D, gh, gw] -> [N, gh*gw, D]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patchify, prepend the class token, add positions, ``ln_pre``: ``[N, 3, H, W] -> [N, 1+g*g, D]``."""
        x = self.patchify(x.to(self.conv1.weight.dtype))  # [N, g*g, D]
        n, width = x.shape[0], x.shape[2]
        cls = self.class_embedding.to(x.dtype).expand(n, 1, width)  # [N, 1, D]
        x = torch.cat([cls, x], dim=1)  # [N, 1+g*g, D]
        pos = self.positional_embedding
        if pos.shape[0] != x.shape[1]:  # another input size than the model's: interpolate on the fly
            pos = interpolate_pos_embed(pos, round(math.sqrt(x.shape[1] - 1)))
        x = x + pos.to(x.dtype)
        return self.ln_pre(x)

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pool (class token, or mean of the patch tokens) and project: ``[N, L, D] -> [N, E]``.

        ``ln_post`` normalises every token before pooling (open_clip's default) or, with
        ``final_ln_after_pool``, the pooled vector; the two agree for the class token.
        """
        if self.pool_type == "tok":
            return self.ln_post(tokens[:, 0]) @ self.proj
        if self.final_ln_after_pool:
            return self.ln_post(tokens[:, 1:].mean(dim=1)) @ self.proj  # [N, g*g, D] -> [N, D]
        return self.ln_post(tokens[:, 1:]).mean(dim=1) @ self.proj  # [N, g*g, D] -> [N, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``[N, E]``: ``head(transformer(embed(x)))``; with class-token pooling the last block is
        computed for the class token only (the other rows of its output are never read)."""
        if self.pool_type != "tok":
            return self.head(self.transformer(self.embed(x)))
        cls = self.transformer.forward_pooled(self.embed(x), 0)  # [N, 1+g*g, D] -> [N, D]
        return self.ln_post(cls) @ self.proj

    def forward_features(
        self,
        x: torch.Tensor,
        output: str = "tokens",
        layer: int = -1,
        include_class_token: bool = False,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor | tuple[torch.Tensor, ...]]:
        """Token features for multimodal models (LLaVA-style).

        ``output="tokens"``: hidden state after block ``layer`` (Hugging Face indexing: 0 is the input of
        the first block after ``ln_pre``, ``-1`` the last block, ``-2`` the penultimate), ``[N, g*g(+1), D]``.
        ``output="hidden_states"``: a tuple of ``layers + 1`` such tensors.
        ``return_attention=True`` adds the last block's attention probabilities ``[N, H, L, L]``.
        """
        hidden: list[torch.Tensor] = []
        emb = self.embed(x)
        hidden.append(emb)
        n_layers = len(self.transformer.resblocks)
        index = layer if layer >= 0 else n_layers + 1 + layer
        if output == "tokens" and not 0 <= index <= n_layers:
            raise ValueError(
                f"layer {layer} out of range for a {n_layers}-layer vision tower (0..{n_layers} or -1..-{n_layers + 1})"
            )
        if output == "tokens" and not return_attention:
            self.transformer(emb, hidden_states=hidden, stop_at=index)
        else:
            self.transformer(emb, hidden_states=hidden)
        states = tuple(h if include_class_token else h[:, 1:] for h in hidden)
        if output == "tokens":
            result: torch.Tensor | tuple[torch.Tensor, ...] = states[index]
        elif output == "hidden_states":
            result = states
        else:
            raise ValueError(f"output must be 'embedding', 'tokens' or 'hidden_states', not {output!r}")
        if return_attention:
            last = self.transformer.resblocks[-1]
            attn = last.attn.attention_weights(last.ln_1(hidden[-2]))
            return {"features": result, "attention": attn}
        return result
