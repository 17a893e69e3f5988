"""The known architectures (one JSON per architecture in ``model_configs/``), looked up by name or by shapes.

``get_model_config("ViT-B-32")`` reads a config strictly (``ModelConfig.from_dict``); an ``-quickgelu`` suffix
gives the same architecture with QuickGELU, as open_clip's ``*-quickgelu`` configs do.

``match_shapes(cfg)`` settles what a bare state dict cannot say: the tensors give every size (widths, depths,
patch, grid, MLP, vocabulary, context) but not how a width splits into attention heads. The known
architectures whose sizes are the same say it (ViT-H-14: 16 heads of width 80; ViT-g-14: 88; ViT-bigG-14: 104;
OpenAI's models: 64). Where none matches, or matching ones disagree, the caller must be told instead of
guessing (``checkpoints.convert.infer_config`` raises, naming the head count as the missing fact).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from importlib import resources
from typing import Any

from .config import ModelConfig
from .errors import UnknownModelError

QUICKGELU_SUFFIX = "-quickgelu"


def _config_dir():
    return resources.files("kontrast") / "model_configs"


def list_models() -> list[str]:
    """Names of the architectures kontrast knows (one JSON each in ``model_configs/``)."""
    return sorted(p.name[: -len(".json")] for p in _config_dir().iterdir() if p.name.endswith(".json"))


def canonical_name(name: str) -> str | None:
    """``ViT-B/32``, ``vit-b-32`` -> ``ViT-B-32`` (an ``-quickgelu`` suffix is kept); ``None`` if unknown."""
    wanted = name.replace("/", "-").lower()
    suffix = ""
    if wanted.endswith(QUICKGELU_SUFFIX):
        wanted, suffix = wanted[: -len(QUICKGELU_SUFFIX)], QUICKGELU_SUFFIX
    for known in list_models():
        if known.lower() == wanted:
            return known + suffix
    return None


def get_model_config(name: str) -> ModelConfig:
    """Config of a known architecture; unknown names list the nearest known ones."""
    known = canonical_name(name)
    if known is None:
        from . import families
        from .checkpoints.hub import family_of_architecture

        family = family_of_architecture(name)
        if family is not None:  # a pretrained architecture of a family kontrast does not implement
            families.require_supported(family, f"architecture {name!r}")
        near = difflib.get_close_matches(name.replace("/", "-"), list_models(), n=4, cutoff=0.4)
        hint = f"; nearest: {', '.join(near)}" if near else f"; known: {', '.join(list_models())}"
        raise UnknownModelError(f"unknown model {name!r}{hint} (or pass a checkpoint path)")
    base = known.removesuffix(QUICKGELU_SUFFIX)
    path = _config_dir() / f"{base}.json"
    cfg = ModelConfig.from_dict(json.loads(path.read_text()), source=f"model_configs/{base}.json")
    if known != base:
        cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, act="quick_gelu"),
                                  text=dataclasses.replace(cfg.text, act="quick_gelu"))
    cfg.name = known
    return cfg


def shape_signature(cfg: ModelConfig) -> tuple[Any, ...]:
    """Everything about an architecture that its tensors' shapes show (not heads, activation, eps, pooling)."""
    v, t = cfg.vision, cfg.text
    if v.is_resnet:
        vision: tuple[Any, ...] = ("resnet", tuple(v.layers), v.width, v.image_size // 32)
    elif v.kind == "convnext":  # a convolutional trunk's weights do not show the image size
        vision = ("convnext", v.depths, v.dims, v.kernel_size, v.mlp_ratio, v.timm_proj, v.timm_proj_bias)
    elif v.kind == "efficientnet_lite":
        vision = ("efficientnet_lite", v.timm_model_name, v.timm_proj, v.timm_proj_bias)
    else:
        vision = (v.kind, int(v.layers), v.width, v.patch_size, v.image_size // int(v.patch_size),
                  int(v.width * v.mlp_ratio))
    text = (t.kind, t.layers, t.width, t.context_length, t.vocab_size, int(t.width * t.mlp_ratio))
    return cfg.embed_dim, vision, text


def match_shapes(cfg: ModelConfig) -> list[ModelConfig]:
    """The known architectures with the same ``shape_signature`` as ``cfg``."""
    wanted = shape_signature(cfg)
    out = []
    for name in list_models():
        known = get_model_config(name)
        if shape_signature(known) == wanted:
            out.append(known)
    return out
