"""Reading and writing the config of a ConvNeXt image tower (``kind: "convnext"``), for ``kontrast.config``.

open_clip describes these towers as a ``TimmModel``: ``timm_model_name`` (a timm ``convnext_*`` trunk),
``timm_pool``, ``timm_proj`` (``linear`` / ``mlp``), ``timm_proj_bias`` and training-only options. kontrast's own
layout adds the trunk's geometry (``depths``, ``dims``, ``kernel_size``, ``mlp_ratio``, ``ln_eps``), so a saved
model does not depend on the table; open_clip's layout names the trunk and the table (``convnext_spec``) gives it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import VisionConfig, _Keys, _read_image_size
from .convnext_spec import HEAD_TYPES, TIMM_CONVNEXT, TRUNK_POOLS
from .errors import ConfigError

_CONVNEXT_INERT = ("timm_model_pretrained", "timm_drop", "timm_drop_path", "patch_dropout", "output_tokens")


def read_timm_head(r: _Keys) -> tuple[str, bool]:
    """open_clip's ``timm_proj`` (``linear`` / ``mlp``) and ``timm_proj_bias`` of a ``TimmModel`` tower, checked."""
    proj, bias = r.get("timm_proj", "linear"), r.get("timm_proj_bias", False)
    if proj not in HEAD_TYPES:
        raise r.refuse("timm_proj", proj, f"is not supported (kontrast implements {', '.join(HEAD_TYPES)})")
    if not isinstance(bias, bool):
        raise r.refuse("timm_proj_bias", bias, "must be true or false")
    return proj, bias


def read_convnext(r: _Keys, name: str | None) -> VisionConfig:
    """A ConvNeXt tower: open_clip's ``TimmModel`` keys (+ kontrast's geometry keys); the geometry of a trunk
    in ``TIMM_CONVNEXT`` comes from the table, of another from the config or (left empty) the weights."""
    if r.get("kind", "convnext") != "convnext":
        raise r.refuse("kind", r.get("kind"), f"conflicts with timm_model_name={name!r} (a ConvNeXt trunk)")
    pool = r.get("timm_pool", "")
    if pool not in TRUNK_POOLS:
        raise r.refuse("timm_pool", pool, "is not supported for ConvNeXt trunks (kontrast implements timm's "
                       "average pool + LayerNorm head: '' or 'avg')")
    proj, bias = read_timm_head(r)
    act = r.get("act", "gelu")
    if act != "gelu":
        raise r.refuse("act", act, "is not supported: timm's ConvNeXt blocks use the exact GELU")
    known = TIMM_CONVNEXT.get(name)
    given = {"depths": r.get("depths"), "dims": r.get("dims"), "kernel_size": r.get("kernel_size"),
             "mlp_ratio": r.get("mlp_ratio"), "eps": r.get("ln_eps")}
    geometry: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in given.items()}
    if known is not None:
        for key, value in geometry.items():
            if value is not None and value != getattr(known, key):
                raise r.refuse("ln_eps" if key == "eps" else key, value, f"conflicts with timm's {name} "
                               f"({getattr(known, key)})")
        geometry = dataclasses.asdict(known)
    elif name is None and (geometry["depths"] is None or geometry["dims"] is None):
        raise r.refuse("kind", "convnext", "needs a timm_model_name or the trunk's depths and dims")
    r.get("mean")  # legacy kontrast files: the normalisation, read into the record's preprocessing config
    r.get("std")
    out = VisionConfig(
        kind="convnext", image_size=_read_image_size(r), act="gelu",
        mlp_ratio=float(geometry["mlp_ratio"] or 4.0), ln_eps=float(geometry["eps"] or 1e-6),
        timm_model_name=name, timm_proj=proj, timm_proj_bias=bias, depths=geometry["depths"], dims=geometry["dims"],
        kernel_size=int(geometry["kernel_size"] or 7), inert=r.inert(_CONVNEXT_INERT),
    )
    r.finish()
    return out


def convnext_open_clip(v: VisionConfig) -> dict[str, Any]:
    """open_clip's ``vision_cfg`` of a ConvNeXt tower (a ``TimmModel``)."""
    if v.timm_model_name is None:
        raise ConfigError("open_clip builds ConvNeXt towers by timm trunk name; this one has none (its geometry "
                          f"{v.depths} / {v.dims} matches no timm trunk kontrast knows)")
    out: dict[str, Any] = {"timm_model_name": v.timm_model_name, "timm_model_pretrained": False, "timm_pool": "",
                           "timm_proj": v.timm_proj, "image_size": v.image_size}
    if v.timm_proj_bias:
        out["timm_proj_bias"] = True
    return out
