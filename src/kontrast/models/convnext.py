"""ConvNeXt image tower with open_clip's parameter names (a timm ``convnext_*`` trunk plus a projection head).

open_clip builds these towers as ``TimmModel``: ``visual.trunk`` is timm's ConvNeXt with its classifier removed
and ``visual.head`` projects the pooled features to the joint space. kontrast writes the same computation
natively (no timm, no torchvision) with the same module names, so open_clip state dicts load without renaming:

- ``trunk.stem.0``: 4x4 stride-4 convolution; ``trunk.stem.1``: LayerNorm over channels;
- ``trunk.stages.N.downsample.{0,1}`` (stages 1-3): LayerNorm over channels, 2x2 stride-2 convolution;
- ``trunk.stages.N.blocks.M``: depthwise 7x7 convolution ``conv_dw`` -> LayerNorm ``norm`` (channels last) ->
  ``mlp.fc1`` -> exact GELU -> ``mlp.fc2`` -> layer scale ``gamma`` -> + input;
- ``trunk.head.norm``: LayerNorm of the global average pool (timm's ``NormMlpClassifierHead`` without classifier);
- ``head.proj`` (``timm_proj: linear``) or ``head.mlp.fc1`` -> GELU -> ``head.mlp.fc2`` (``timm_proj: mlp``, hidden
  ``2 * embed_dim``); biases only where open_clip has them (``fc1`` always, ``proj`` / ``fc2`` with ``timm_proj_bias``).

LayerNorm epsilon is timm's 1e-6, except ``convnext_xxlarge`` (1e-5). The geometry of every ConvNeXt trunk that
open_clip names is in ``kontrast.convnext_spec.TIMM_CONVNEXT``; ``geometry_from_state_dict`` reads it from weights
for other names.

Inference fast path (CPU, no autograd): the feature maps stay channels-last, so the depthwise convolution runs on
oneDNN's NHWC kernels and each block's permute to (N, H, W, C) is a free view; the two MLP matrix multiplies run
through ``layers.linear`` (oneDNN, GELU fused; swapped-in modules such as quantised linears are called as they
are). Same numbers as the plain path to float rounding.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ..convnext_spec import HEAD_TYPES, TIMM_CONVNEXT, ConvNeXtGeometry, timm_name_of
from .layers import _onednn_ok, linear, map_features

__all__ = ["TIMM_CONVNEXT", "ConvNeXtGeometry", "ConvNeXtTower", "geometry_from_state_dict", "timm_name_of"]


def geometry_from_state_dict(sd: dict[str, torch.Tensor], prefix: str = "visual.trunk.") -> ConvNeXtGeometry:
    """Depths, dims, kernel and MLP ratio of a ConvNeXt trunk read from its tensors (eps cannot be seen: 1e-6).

    Raises ``ValueError`` naming what does not fit the trunk kontrast implements (convolutional MLPs, GRN).
    """
    pattern = re.compile(re.escape(prefix) + r"stages\.(\d+)\.blocks\.(\d+)\.")
    blocks: dict[int, set[int]] = {}
    for key in sd:
        m = pattern.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if sorted(blocks) != list(range(len(blocks))) or not blocks:
        raise ValueError(f"no ConvNeXt stages under {prefix}stages.N.blocks.M")
    unsupported = [k for k in sd if k.startswith(prefix) and (".grn." in k or "norm_pre" in k)]
    if unsupported:
        raise ValueError(f"{unsupported[0]}: ConvNeXt-V2 (GRN) / pre-head norm trunks are not implemented")
    fc1 = sd[f"{prefix}stages.0.blocks.0.mlp.fc1.weight"]
    if fc1.ndim != 2:
        raise ValueError(f"{prefix}stages.0.blocks.0.mlp.fc1.weight is a convolution: conv_mlp ConvNeXt trunks "
                         "(atto ... nano) are not implemented")
    if f"{prefix}stem.0.weight" not in sd or sd[f"{prefix}stem.0.weight"].shape[-1] != 4:
        raise ValueError(f"{prefix}stem.0.weight: only the 4x4 patch stem is implemented")
    depths = tuple(len(blocks[i]) for i in range(len(blocks)))
    dims = tuple(int(sd[f"{prefix}stages.{i}.blocks.0.conv_dw.weight"].shape[0]) for i in range(len(blocks)))
    kernel = int(sd[f"{prefix}stages.0.blocks.0.conv_dw.weight"].shape[-1])
    return ConvNeXtGeometry(depths, dims, kernel, fc1.shape[0] / fc1.shape[1])


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an ``[N, C, H, W]`` map (timm's ``LayerNorm2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # [N, C, H, W] -> [N, H, W, C]
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` on the last dimension (timm's ``Mlp`` names)."""

    def __init__(self, width: int, hidden: int, out: int | None = None, bias2: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out or width, bias=bias2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(linear(x, self.fc1, self.act), self.fc2)  # GELU fused into fc1 on the oneDNN path


class ConvNeXtBlock(nn.Module):
    """Depthwise conv -> LayerNorm -> MLP -> layer scale, plus the input."""

    def __init__(self, dim: int, kernel_size: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(mlp_ratio * dim))
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)  # [N, C, H, W] -> [N, H, W, C] (a view when x is channels-last)
        y = self.mlp(self.norm(y)) * self.gamma
        return y.permute(0, 3, 1, 2) + x  # [N, H, W, C] -> [N, C, H, W]


class ConvNeXtStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth: int, geometry: ConvNeXtGeometry) -> None:
        super().__init__()
        if in_dim != dim:
            self.downsample = nn.Sequential(LayerNorm2d(in_dim, eps=geometry.eps),
                                            nn.Conv2d(in_dim, dim, kernel_size=2, stride=2))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(
            *[ConvNeXtBlock(dim, geometry.kernel_size, geometry.mlp_ratio, geometry.eps) for _ in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class _TrunkHead(nn.Module):
    """What open_clip keeps of timm's classifier head: the LayerNorm after global average pooling."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3), keepdim=True)  # [N, C, H, W] -> [N, C, 1, 1]
        return self.norm(pooled).flatten(1)  # [N, C, 1, 1] -> [N, C]


class ConvNeXtTrunk(nn.Module):
    def __init__(self, geometry: ConvNeXtGeometry) -> None:
        super().__init__()
        g = geometry
        self.stem = nn.Sequential(nn.Conv2d(3, g.dims[0], kernel_size=4, stride=4), LayerNorm2d(g.dims[0], eps=g.eps))
        dims_in = (g.dims[0], *g.dims[:-1])
        self.stages = nn.Sequential(*[ConvNeXtStage(i, o, d, g) for i, o, d in zip(dims_in, g.dims, g.depths)])
        self.head = _TrunkHead(g.dims[-1], g.eps)


class ProjectionHead(nn.Module):
    """open_clip's ``TimmModel.head``: ``proj`` (linear) or ``mlp`` (hidden ``2 * out``, GELU)."""

    def __init__(self, dim: int, out: int, kind: str = "linear", bias: bool = False) -> None:
        super().__init__()
        if kind not in HEAD_TYPES:
            raise ValueError(f"ConvNeXt head {kind!r} is not one of {', '.join(HEAD_TYPES)}")
        if kind == "linear":
            self.proj = nn.Linear(dim, out, bias=bias)
        else:
            self.mlp = Mlp(dim, 2 * out, out, bias2=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.proj) if hasattr(self, "proj") else self.mlp(x)


class ConvNeXtTower(nn.Module):
    """The image tower: ``trunk`` (stem, four stages, pooled LayerNorm) and ``head`` to ``output_dim``."""

    def __init__(self, geometry: ConvNeXtGeometry, output_dim: int, image_size: int = 224,
                 head: str = "linear", head_bias: bool = False) -> None:
        super().__init__()
        if image_size % 32:
            raise ValueError(f"image_size {image_size} is not a multiple of 32 (a ConvNeXt reduces by 32)")
        self.geometry, self.image_size, self.output_dim = geometry, image_size, output_dim
        self.trunk = ConvNeXtTrunk(geometry)
        self.head = ProjectionHead(geometry.dims[-1], output_dim, head, head_bias)

    def init_weights(self) -> None:
        """timm's ConvNeXt initialisation (truncated normal 0.02, zero biases, layer scale 1e-6)."""
        for module in self.trunk.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, ConvNeXtBlock):
                nn.init.constant_(module.gamma, 1e-6)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the stem and the four stages (``[N, C, H, W]`` each, channels-last at CPU inference)."""
        x = x.to(self.trunk.stem[0].weight.dtype)
        if _onednn_ok(x, self.trunk.stem[0].weight):  # NHWC: oneDNN's depthwise kernels, free permutes
            x = x.contiguous(memory_format=torch.channels_last)  # same shape, channels-last memory layout
        x = self.trunk.stem(x)
        maps = [x]
        for stage in self.trunk.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``[N, E]``."""
        return self.head(self.trunk.head(self.feature_maps(x)[-1]))

    def forward_features(self, x: torch.Tensor, output: str = "tokens", layer: int = -1,
                         include_class_token: bool = False, return_attention: bool = False):
        """Spatial tokens of a stage, ``[N, H*W, C]`` (``hidden_states``: stem + 4 stages)."""
        return map_features(self.feature_maps, x, output, layer, return_attention)
