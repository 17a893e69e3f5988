"""OpenAI's modified ResNet image tower: 3-conv stem, anti-aliased strided bottlenecks
(average pooling before strided convolutions), attention pooling instead of global average pooling."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .layers import _onednn_ok, map_features


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        # all convs have stride 1; an avgpool does the striding after the second conv (anti-aliasing)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.relu3(out + identity)


class AttentionPool2d(nn.Module):
    """One attention step over the feature map, queried by the mean token (OpenAI's ``attnpool``)."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W] -> [N, 1+H*W, C]``: mean token first, positions added."""
        x = x.flatten(2).transpose(1, 2)  # [N, C, H, W] -> [N, H*W, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # [N, 1+H*W, C]
        pos = self.positional_embedding
        if pos.shape[0] != x.shape[1]:
            from .vit import interpolate_pos_embed

            pos = interpolate_pos_embed(pos, round((x.shape[1] - 1) ** 0.5))
        return x + pos.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokens(x)
        n, length, c = x.shape
        heads, hd = self.num_heads, c // self.num_heads
        q = self.q_proj(x[:, :1]).view(n, 1, heads, hd).transpose(1, 2)  # [N, 1, C] -> [N, H, 1, C/H]
        k = self.k_proj(x).view(n, length, heads, hd).transpose(1, 2)  # [N, L, C] -> [N, H, L, C/H]
        v = self.v_proj(x).view(n, length, heads, hd).transpose(1, 2)  # [N, L, C] -> [N, H, L, C/H]
        out = F.scaled_dot_product_attention(q, k, v)  # [N, H, 1, C/H]
        out = out.transpose(1, 2).reshape(n, c)  # [N, H, 1, C/H] -> [N, 1, H, C/H] -> [N, C]
        return self.c_proj(out)


class ModifiedResNet(nn.Module):
    def __init__(self, layers: tuple[int, ...], output_dim: int, heads: int, image_size: int = 224, width: int = 64):
        super().__init__()
        self.image_size, self.output_dim = image_size, output_dim
        # 3-layer stem
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        embed_dim = width * 32  # the ResNet feature dimension
        self.attnpool = AttentionPool2d(image_size // 32, embed_dim, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def init_weights(self) -> None:
        std = self.attnpool.c_proj.in_features**-0.5
        for lin in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(lin.weight, std=std)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for name, param in stage.named_parameters():
                if name.endswith("bn3.weight"):
                    nn.init.zeros_(param)  # each residual branch starts as identity

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the stem and the four stages (``[N, C, H, W]`` each)."""
        x = x.to(self.conv1.weight.dtype)
        if _onednn_ok(x, self.conv1.weight):  # CPU inference: oneDNN's convolutions run ~1.4x faster on NHWC
            x = x.contiguous(memory_format=torch.channels_last)  # same shape, channels-last memory layout
        x = self.stem(x)
        maps = [x]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attnpool(self.feature_maps(x)[-1])

    def forward_features(
        self, x: torch.Tensor, output: str = "tokens", layer: int = -1, include_class_token: bool = False,
        return_attention: bool = False,
    ):
        """Spatial tokens of a stage, ``[N, H*W, C]`` (``hidden_states``: stem + 4 stages)."""
        return map_features(self.feature_maps, x, output, layer, return_attention)
