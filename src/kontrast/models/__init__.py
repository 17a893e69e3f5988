"""Pure ``nn.Module`` definitions (no I/O)."""

from .clip import CLIP, build_visual
from .layers import QuickGELU, ResidualAttentionBlock, Transformer
from .resnet import ModifiedResNet
from .vit import VisionTransformer, interpolate_pos_embed

__all__ = [
    "CLIP",
    "ModifiedResNet",
    "QuickGELU",
    "ResidualAttentionBlock",
    "Transformer",
    "VisionTransformer",
    "build_visual",
    "interpolate_pos_embed",
]
