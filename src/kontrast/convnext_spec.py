"""What a ConvNeXt image tower is, as data: the geometry of timm's ``convnext_*`` trunks that open_clip names.

A low module (no torch): ``kontrast.config`` reads ConvNeXt configs with it and ``kontrast.models.convnext``
builds the tower from it. The facts come from timm 1.0's ``convnext.py`` (checked against timm by
``tests/test_convnext.py::test_trunk_table_is_timms``, whose oracle the reference-fixture script writes).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConvNeXtGeometry:
    """What a ConvNeXt trunk is: blocks per stage, channels per stage, depthwise kernel, MLP ratio, LayerNorm eps."""

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    kernel_size: int = 7
    mlp_ratio: float = 4.0
    eps: float = 1e-6


# timm's ConvNeXt trunks that open_clip's configs name (timm 1.0 ``convnext.py``; eps from its ``norm_eps``).
TIMM_CONVNEXT: dict[str, ConvNeXtGeometry] = {
    "convnext_tiny": ConvNeXtGeometry((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ConvNeXtGeometry((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": ConvNeXtGeometry((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": ConvNeXtGeometry((3, 3, 27, 3), (192, 384, 768, 1536)),
    "convnext_xlarge": ConvNeXtGeometry((3, 3, 27, 3), (256, 512, 1024, 2048)),
    "convnext_xxlarge": ConvNeXtGeometry((3, 4, 30, 3), (384, 768, 1536, 3072), eps=1e-5),
}
HEAD_TYPES = ("linear", "mlp")  # open_clip's timm_proj values kontrast implements
TRUNK_POOLS = ("", "avg", None)  # open_clip's timm_pool values that keep timm's average pool + LayerNorm head


def timm_name_of(geometry: ConvNeXtGeometry) -> str | None:
    """The timm trunk name whose depths, dims, kernel and MLP ratio are ``geometry``'s (eps aside), or None."""
    for name, known in TIMM_CONVNEXT.items():
        if (known.depths, known.dims, known.kernel_size, known.mlp_ratio) == (
                geometry.depths, geometry.dims, geometry.kernel_size, geometry.mlp_ratio):
            return name
    return None
