"""Transformer building blocks with OpenAI's parameter names.

``ResidualAttentionBlock`` holds ``ln_1``, ``attn.in_proj_weight`` / ``attn.in_proj_bias`` /
``attn.out_proj``, ``ln_2`` and ``mlp.c_fc`` / ``mlp.c_proj``, exactly the names of OpenAI's released
checkpoints, so they load without renaming. Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` on batch-first tensors.

Inference fast path (CPU, no autograd, no autocast): linear layers call oneDNN directly
(``torch.ops.mkldnn._linear_pointwise``) with the GELU or the residual add fused into the matrix
multiply. On this project's CPUs oneDNN's fp32 GEMM runs about 2x MKL's (which ``F.linear`` uses), and
the fusions save a pass over the activations. Everything else (training, autocast, GPUs, swapped-in
modules such as quantised linears) takes the plain ``F.linear`` path; both give the same numbers to
float rounding. What the CPU's oneDNN can run is asked, not assumed (``kontrast.cpu.onednn_runs``): where
it has no bf16 kernels (a CPU without AVX512_BF16/AMX, or ``ONEDNN_MAX_CPU_ISA=AVX2``) bf16 tensors are
multiplied in float32 instead of crashing.
"""

from __future__ import annotations

import sys
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..cpu import onednn_runs


class QuickGELU(nn.Module):
    """OpenAI's GELU approximation ``x * sigmoid(1.702 x)``; CLIP's released weights were trained with it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def tracing() -> bool:
    """True while a tracer, exporter or compiler records the graph: no private kernels, no data-dependent shapes."""
    onnx = sys.modules.get("torch.onnx")  # not imported unless an export is running
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or (onnx is not None and onnx.is_in_onnx_export())


def onednn_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype in which oneDNN computes ``x @ weight.T`` directly, or ``None`` for the plain PyTorch path.

    CPU fp32/bf16 inference only (no autograd, no autocast, no tracing). ``x.dtype`` where this oneDNN runs
    it; ``float32`` for bf16 tensors on a CPU whose oneDNN has no bf16 kernels (it refuses them at run time,
    see ``kontrast.cpu.onednn_runs``): there fp32 products are both correct and ~10x faster than PyTorch's
    emulated bf16.
    """
    if not (
        x.device.type == "cpu"
        and x.dtype == weight.dtype
        and x.dtype in (torch.float32, torch.bfloat16)
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not tracing()
    ):
        return None
    if onednn_runs(x.dtype):
        return x.dtype
    return torch.float32 if onednn_runs(torch.float32) else None


def _onednn_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``linear_params`` takes the oneDNN path for these tensors (see ``onednn_dtype``)."""
    return onednn_dtype(x, weight) is not None


def linear_params(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    act: nn.Module | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``residual + act(x @ weight.T + bias)`` (each part optional); ``[..., in] -> [..., out]``.

    On the oneDNN path an exact or tanh GELU and the residual add run inside the GEMM's epilogue and a
    QuickGELU runs in place; elsewhere this is ``F.linear`` followed by plain PyTorch ops.
    """
    compute = onednn_dtype(x, weight)
    if compute is None:
        out = F.linear(x, weight, bias)
        if act is not None:
            out = act(out)
        return out if residual is None else residual + out
    if compute != x.dtype:  # bf16 without bf16 kernels: float32 products, result rounded back to bf16
        out = linear_params(x.to(compute), weight.to(compute), None if bias is None else bias.to(compute), act,
                            None if residual is None else residual.to(compute))
        return out.to(x.dtype)
    op = torch.ops.mkldnn._linear_pointwise
    if bias is not None and bias.dtype != weight.dtype:
        bias = bias.to(weight.dtype)
    if act is None:
        if residual is not None and residual.dtype == x.dtype:
            return op.binary(x, residual.contiguous(), weight, bias, "add")
        out = op(x, weight, bias, "none", [], "")
    elif type(act) is nn.GELU:
        out = op(x, weight, bias, "gelu", [], act.approximate)
    elif type(act) is QuickGELU:
        out = op(x, weight, bias, "none", [], "")
        gate = out * 1.702
        out.mul_(gate.sigmoid_())  # x * sigmoid(1.702 x) with one temporary
    else:
        out = act(op(x, weight, bias, "none", [], ""))
    return out if residual is None else residual + out


def linear(
    x: torch.Tensor, layer: nn.Module, act: nn.Module | None = None, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """``residual + act(layer(x))`` for an ``nn.Linear`` (fused, see ``linear_params``); any other
    module (a quantised or adapted linear) is called as is."""
    if type(layer) is nn.Linear:
        return linear_params(x, layer.weight, layer.bias, act, residual)
    out = layer(x)
    if act is not None:
        out = act(out)
    return out if residual is None else residual + out


class FusedLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters and state-dict names) that runs through ``linear_params``, i.e. oneDNN at
    CPU inference. ``use_fused_linears`` switches the linears of a third-party module (a Hugging Face encoder)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_params(x, self.weight, self.bias)


def use_fused_linears(module: nn.Module) -> nn.Module:
    """Turn every plain ``nn.Linear`` inside ``module`` into a ``FusedLinear`` in place (weights untouched)."""
    for child in module.modules():
        if type(child) is nn.Linear:
            child.__class__ = FusedLinear
    return module


def make_activation(name: str) -> nn.Module:
    """``"quick_gelu"`` or ``"gelu"`` (exact erf form, as ``nn.GELU`` and open_clip's default)."""
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    raise ValueError(f"unknown activation {name!r}: use 'quick_gelu' or 'gelu'")


FEATURE_OUTPUTS = ("tokens", "hidden_states", "last_hidden_state")  # encode_*(output=...) besides "embedding"


def check_feature_output(output: str) -> None:
    """``ValueError`` for an ``output=`` that is neither ``"embedding"`` nor one of ``FEATURE_OUTPUTS``."""
    if output not in FEATURE_OUTPUTS:
        raise ValueError(f"output must be 'embedding', {', '.join(repr(o) for o in FEATURE_OUTPUTS)}, not {output!r}")


def map_features(feature_maps, x: torch.Tensor, output: str, layer: int, return_attention: bool):
    """``forward_features`` of a convolutional tower from its ``feature_maps(x)`` (``[N, C, H, W]`` each): the
    maps as tokens ``[N, H*W, C]``, one (``tokens``, ``layer``) or all (``hidden_states``)."""
    if return_attention:
        raise ValueError("attention maps are available for Vision Transformer towers only")
    maps = [m.flatten(2).transpose(1, 2) for m in feature_maps(x)]  # [N, C, H, W] -> [N, H*W, C]
    if output == "hidden_states":
        return tuple(maps)
    if output == "tokens":
        return maps[layer]
    raise ValueError(f"output must be 'embedding', 'tokens' or 'hidden_states', not {output!r}")


def hidden_state_index(layer: int, n_layers: int, tower: str = "text") -> int:
    """Position of ``layer`` in a tower's ``hidden_states`` (Hugging Face indexing: ``n_layers + 1`` entries, 0 = the
    embeddings, -1 = the last block, -2 = the penultimate); ``ValueError`` outside them."""
    index = layer if layer >= 0 else n_layers + 1 + layer
    if not 0 <= index <= n_layers:
        raise ValueError(f"layer {layer} out of range for a {n_layers}-layer {tower} tower "
                         f"(0..{n_layers} or -1..-{n_layers + 1})")
    return index


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
        qkv = linear_params(x, self.in_proj_weight, self.in_proj_bias)
        # [N, L, 3D] -> [N, L, 3, H, D/H] -> [3, N, H, L, D/H]
        qkv = qkv.view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(
        self,
        x: torch.Tensor,
        causal: bool = False,
        attn_mask: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[N, L, D] -> [N, L, D]``; ``residual`` is added to the output (fused into ``out_proj``)."""
        n, length, width = x.shape
        q, k, v = self.qkv(x)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal and attn_mask is None)
        # [N, H, L, D/H] -> [N, L, H, D/H] -> [N, L, D]
        out = out.transpose(1, 2).reshape(n, length, width)
        return linear(out, self.out_proj, residual=residual)

    def forward_rows(
        self, x: torch.Tensor, index: int | torch.Tensor, causal: bool = False, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attention output at one query position per sample, ``[N, L, D] -> [N, D]``.

        ``index`` is one position for every sample (an int) or one per sample (a LongTensor ``[N]``).
        Keys and values come from all positions (up to the query's own with ``causal``); only the query
        rows are projected, which is all a pooled embedding reads from the last block.
        """
        n, length, width = x.shape
        heads, head_dim = self.heads, width // self.heads
        rows = x[:, index] if isinstance(index, int) else x[torch.arange(n, device=x.device), index]  # [N, D]
        q = linear_params(rows, self.in_proj_weight[:width], self.in_proj_bias[:width])
        q = q.view(n, 1, heads, head_dim).transpose(1, 2)  # [N, D] -> [N, 1, H, D/H] -> [N, H, 1, D/H]
        kv = linear_params(x, self.in_proj_weight[width:], self.in_proj_bias[width:])
        # [N, L, 2D] -> [N, L, 2, H, D/H] -> [2, N, H, L, D/H]
        kv = kv.view(n, length, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
        mask = None
        if causal:
            positions = torch.arange(length, device=x.device)
            last = torch.as_tensor(index, device=x.device).reshape(-1, 1)  # [N or 1, 1]
            mask = (positions <= last).view(last.shape[0], 1, 1, length)  # [N, 1, 1, L], True = attend
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)  # [N, H, 1, D/H]
        out = out.reshape(n, width)  # [N, H, 1, D/H] -> [N, D]
        return linear(out, self.out_proj, residual=residual)

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
        x = self.attn(self.ln_1(x), causal=causal, attn_mask=attn_mask, residual=x)
        return self._mlp(self.ln_2(x), residual=x)

    def forward_rows(self, x: torch.Tensor, index: int | torch.Tensor, causal: bool = False) -> torch.Tensor:
        """The block's output at one position per sample (see ``Attention.forward_rows``): ``[N, L, D] -> [N, D]``."""
        rows = x[:, index] if isinstance(index, int) else x[torch.arange(x.shape[0], device=x.device), index]
        rows = self.attn.forward_rows(self.ln_1(x), index, causal=causal, residual=rows)
        return self._mlp(self.ln_2(rows), residual=rows)

    def _mlp(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + c_proj(act(c_fc(h)))``, with the activation and the add fused where possible."""
        mlp = self.mlp
        if not all(hasattr(mlp, name) for name in ("c_fc", "gelu", "c_proj")):  # a replaced MLP: run it as is
            return residual + mlp(h)
        return linear(linear(h, mlp.c_fc, act=mlp.gelu), mlp.c_proj, residual=residual)


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

    def forward_pooled(self, x: torch.Tensor, index: int | torch.Tensor, causal: bool = False) -> torch.Tensor:
        """``forward(x)`` read at one position per sample (``[N, L, D] -> [N, D]``), computing in the last
        block only the rows that are read: the class token of a ViT, the end-of-text token of a text tower."""
        if not len(self.resblocks):
            return x[:, index] if isinstance(index, int) else x[torch.arange(x.shape[0], device=x.device), index]
        x = self.forward(x, causal=causal, stop_at=len(self.resblocks) - 1)
        last = self.resblocks[-1]
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(last.forward_rows, x, index, causal, use_reentrant=False)
        return last.forward_rows(x, index, causal=causal)

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
