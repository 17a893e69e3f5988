"""Transformer building blocks with OpenAI's parameter names.

``ResidualAttentionBlock`` holds ``ln_1``, ``attn.in_proj_weight`` / ``attn.in_proj_bias`` /
``attn.out_proj``, ``ln_2`` and ``mlp.c_fc`` / ``mlp.c_proj``, exactly the names of OpenAI's released
checkpoints, so they load without renaming. Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` on batch-first tensors.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class QuickGELU(nn.Module):
    """OpenAI's GELU approximation ``x * sigmoid(1.702 x)``; CLIP's released weights were trained with it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: str) -> nn.Module:
    """``"quick_gelu"`` or ``"gelu"`` (exact erf form, as ``nn.GELU`` and open_clip's default)."""
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    raise ValueError(f"unknown activation {name!r}: use 'quick_gelu' or 'gelu'")


class Attention(nn.Module):
    """Multi-head self-attention with a packed q/k/v projection (``in_proj_weight`` = cat[q, k, v])."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        # [N, L, 3D] -> [N, L, 3, H, D/H] -> [3, N, H, L, D/H]
        qkv = qkv.view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: torch.Tensor, causal: bool = False, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = self.qkv(x)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal and attn_mask is None)
        # [N, H, L, D/H] -> [N, L, H, D/H] -> [N, L, D]
        out = out.transpose(1, 2).reshape(n, length, width)
        return self.out_proj(out)

    def attention_weights(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """Softmax attention probabilities ``[N, H, L, L]`` (for visualisation; not on the fast path)."""
        q, k, _ = self.qkv(x)
        scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)  # [N, H, L, L]
        if causal:
            length = x.shape[1]
            mask = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        return scores.softmax(dim=-1)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, act: str = "gelu", eps: float = 1e-5) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(
            OrderedDict(
                [("c_fc", nn.Linear(width, hidden)), ("gelu", make_activation(act)), ("c_proj", nn.Linear(hidden, width))]
            )
        )

    def forward(self, x: torch.Tensor, causal: bool = False, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal, attn_mask=attn_mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of ``ResidualAttentionBlock`` (``resblocks.N``) on batch-first ``[N, L, D]`` tensors."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, act: str = "gelu", eps: float = 1e-5):
        super().__init__()
        self.width, self.layers = width, layers
        self.grad_checkpointing = False  # trade compute for memory in training
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_ratio, act, eps) for _ in range(layers)]
        )

    def forward(
        self,
        x: torch.Tensor,
        causal: bool = False,
        attn_mask: torch.Tensor | None = None,
        hidden_states: list[torch.Tensor] | None = None,
        stop_at: int | None = None,
    ) -> torch.Tensor:
        """Run the blocks; append each block's output to ``hidden_states`` when given.

        ``stop_at`` runs only the first ``stop_at`` blocks (feature extraction from an inner layer).
        """
        blocks = self.resblocks if stop_at is None else self.resblocks[:stop_at]
        for block in blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, causal, attn_mask, use_reentrant=False)
            else:
                x = block(x, causal=causal, attn_mask=attn_mask)
            if hidden_states is not None:
                hidden_states.append(x)
        return x

    def init_weights(self) -> None:
        """open_clip / OpenAI initialisation (std scaled with width and depth)."""
        proj_std = (self.width**-0.5) * ((2 * self.layers) ** -0.5)
        attn_std = self.width**-0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj_bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.zeros_(block.mlp.c_fc.bias)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
            nn.init.zeros_(block.mlp.c_proj.bias)
