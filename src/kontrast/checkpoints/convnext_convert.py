"""ConvNeXt towers from weights: a config naming a trunk outside the table, and bare state dicts.

open_clip stores a ConvNeXt CLIP with kontrast's own names (``visual.trunk.*``, ``visual.head.*``, the text tower
as OpenAI names it), so no renaming is needed; what the weights cannot say is settled here:

- ``complete_convnext``: an open_clip config naming a ``convnext_*`` trunk kontrast's table does not know gets its
  depths, dims, kernel and MLP ratio from the weights; LayerNorm eps 1e-6 (timm's default) is assumed, with a
  warning that says so.
- ``infer_convnext``: a bare state dict shows the trunk, the head and the text tower's sizes, but not the image
  size (convolutions and a global pool fit any size) nor the text heads: the known architectures with the same
  shapes say them, or the loader refuses and asks for the architecture's name. The activation defaults to GELU
  (every open_clip ConvNeXt CLIP was trained with it), with a warning.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from ..architectures import match_shapes
from ..config import ModelConfig, VisionConfig
from ..convnext_spec import TIMM_CONVNEXT, ConvNeXtGeometry, timm_name_of
from ..errors import CheckpointError, ConfigError
from ..models.convnext import geometry_from_state_dict
from .convert import text_shapes

log = logging.getLogger(__name__)


def _geometry(sd: dict[str, torch.Tensor], source: str) -> ConvNeXtGeometry:
    try:
        return geometry_from_state_dict(sd, "visual.trunk.")
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{source}: not a ConvNeXt trunk kontrast implements: {exc}") from None


def complete_convnext(cfg: ModelConfig, sd: dict[str, torch.Tensor], source: str,
                      assumed: list[str] | None = None) -> ModelConfig:
    """``cfg`` with the trunk geometry read from ``sd`` when the config names a trunk outside the table."""
    v = cfg.vision
    if v.kind != "convnext" or v.depths is not None:
        return cfg
    g = _geometry(sd, source)
    line = (f"ConvNeXt trunk {v.timm_model_name!r} is not in kontrast's table ({', '.join(TIMM_CONVNEXT)}): depths "
            f"{list(g.depths)}, dims {list(g.dims)}, kernel {g.kernel_size} and MLP ratio {g.mlp_ratio:g} read from the "
            f"weights; LayerNorm eps {g.eps:g} (timm's default) assumed")
    log.warning("%s: %s", source, line)
    if assumed is not None:
        assumed.append(line)
    vision = dataclasses.replace(v, depths=g.depths, dims=g.dims, kernel_size=g.kernel_size, mlp_ratio=g.mlp_ratio,
                                 ln_eps=g.eps)
    return dataclasses.replace(cfg, vision=vision)


def timm_head(sd: dict[str, torch.Tensor], source: str, trunk: str = "ConvNeXt") -> tuple[str, bool]:
    """open_clip's ``TimmModel`` head of a bare state dict: (``linear`` / ``mlp``, has a bias)."""
    if "visual.head.proj.weight" in sd:
        return "linear", "visual.head.proj.bias" in sd
    if "visual.head.mlp.fc1.weight" in sd:
        return "mlp", "visual.head.mlp.fc2.bias" in sd
    raise CheckpointError(f"{source}: a {trunk} trunk without visual.head.proj or visual.head.mlp (open_clip's "
                          "'linear' / 'mlp' heads); kontrast implements those two")


def infer_convnext(sd: dict[str, torch.Tensor], quick_gelu: bool | None, source: str,
                   assumed: list[str] | None = None) -> ModelConfig:
    """The architecture of a bare open_clip ConvNeXt state dict (see the module docstring)."""
    g = _geometry(sd, source)
    head, bias = timm_head(sd, source)
    name = timm_name_of(g)
    try:
        text = text_shapes(sd, "quick_gelu" if quick_gelu else "gelu")
        embed_dim = sd["text_projection"].shape[1]
    except KeyError as exc:
        raise CheckpointError(f"{source}: cannot infer the architecture: tensor {exc.args[0]!r} is missing") from None
    vision = VisionConfig(kind="convnext", act="gelu", timm_model_name=name, timm_proj=head, timm_proj_bias=bias,
                          depths=g.depths, dims=g.dims, kernel_size=g.kernel_size, mlp_ratio=g.mlp_ratio,
                          ln_eps=TIMM_CONVNEXT[name].eps if name else g.eps)
    cfg = ModelConfig(embed_dim=int(embed_dim), vision=vision, text=text)
    matches = match_shapes(cfg)
    options = {(m.vision.image_size, m.text.heads) for m in matches}
    if len(options) != 1:
        names = ", ".join(m.name or "?" for m in matches) or "none"
        raise ConfigError(
            f"{source}: a ConvNeXt state dict does not tell its image size and text heads, and the known "
            f"architectures with its shapes ({names}) do not settle them; name the architecture: "
            "kontrast.load('ARCH', pretrained=PATH)")
    size, heads = options.pop()
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(vision, image_size=size),
                              text=dataclasses.replace(text, heads=heads))
    if quick_gelu is None:
        line = ("activation: GELU assumed for the text tower (the weights cannot tell; open_clip's ConvNeXt CLIPs "
                "were all trained with GELU); pass quick_gelu=True if it was QuickGELU")
        log.warning("%s: %s", source, line)
        if assumed is not None:
            assumed.append(line)
    log.info("%s: shapes of %s: image size %d, %d text heads", source, matches[0].name, size, heads)
    return cfg
