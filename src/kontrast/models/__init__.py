"""Pure ``nn.Module`` definitions (no I/O)."""

from typing import Any

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
    "model_for_record",
]


def model_for_record(record: Any) -> Any:
    """A fresh model of the class a record's architecture needs: ``CLIP``, ``siglip.SigLIP`` (a ``SigLIPConfig``) or
    ``single_tower.SingleTowerCLIP`` (a ``TowerConfig``)."""
    from .siglip import SigLIP, SigLIPConfig
    from .single_tower import SingleTowerCLIP, TowerConfig

    if isinstance(record.arch, SigLIPConfig):
        return SigLIP(record)
    if isinstance(record.arch, TowerConfig):
        return SingleTowerCLIP(record)
    return CLIP(record)
