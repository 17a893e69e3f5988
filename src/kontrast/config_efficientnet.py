"""Reading and writing the config of an EfficientNet-Lite image tower (``kind: "efficientnet_lite"``).

open_clip describes it as a ``TimmModel``: ``timm_model_name`` (timm's ``tf_efficientnet_lite0`` ... ``lite4``,
the TensorFlow-padded variants whose ImageNet weights come from Google's release), ``timm_pool`` (``avg``),
``timm_proj`` (``linear`` / ``mlp``) and ``timm_proj_bias``. The trunk's geometry is fixed by its name
(``kontrast.models.efficientnet_lite.LITE_VARIANTS``).
"""

from __future__ import annotations

from typing import Any

from .config import VisionConfig, _Keys, _read_image_size
from .config_convnext import read_timm_head

LITE_NAMES = tuple(f"tf_efficientnet_lite{i}" for i in range(5))
_INERT = ("timm_model_pretrained", "timm_drop", "timm_drop_path", "patch_dropout", "output_tokens")


def is_efficientnet_lite(name: str | None) -> bool:
    return str(name or "").startswith(("tf_efficientnet_lite", "efficientnet_lite"))


def read_efficientnet_lite(r: _Keys, name: str) -> VisionConfig:
    """An EfficientNet-Lite tower from open_clip's ``TimmModel`` keys; other names and pools are refused."""
    if name not in LITE_NAMES:
        raise r.refuse("timm_model_name", name, "is not supported: kontrast implements the TensorFlow-padded "
                       f"EfficientNet-Lite trunks ({', '.join(LITE_NAMES)}), not timm's PyTorch-padded ones")
    if r.get("kind", "efficientnet_lite") != "efficientnet_lite":
        raise r.refuse("kind", r.get("kind"), f"conflicts with timm_model_name={name!r} (an EfficientNet-Lite trunk)")
    pool = r.get("timm_pool", "avg")
    if pool != "avg":
        raise r.refuse("timm_pool", pool, "is not supported for EfficientNet-Lite trunks (kontrast implements 'avg')")
    proj, bias = read_timm_head(r)
    act = r.get("act", "relu6")
    if act != "relu6":
        raise r.refuse("act", act, "is not supported: EfficientNet-Lite trunks use ReLU6")
    r.get("mean")  # legacy kontrast files: the normalisation, read into the record's preprocessing config
    r.get("std")
    out = VisionConfig(kind="efficientnet_lite", image_size=_read_image_size(r), act="relu6", timm_model_name=name,
                       timm_proj=proj, timm_proj_bias=bias, inert=r.inert(_INERT))
    r.finish()
    return out


def efficientnet_lite_open_clip(v: VisionConfig) -> dict[str, Any]:
    """open_clip's ``vision_cfg`` of an EfficientNet-Lite tower (a ``TimmModel``)."""
    out: dict[str, Any] = {"timm_model_name": v.timm_model_name, "timm_model_pretrained": False, "timm_pool": "avg",
                           "timm_proj": v.timm_proj, "image_size": v.image_size}
    if v.timm_proj_bias:
        out["timm_proj_bias"] = True
    return out
