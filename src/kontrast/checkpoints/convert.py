"""Pure state-dict -> state-dict converters and architecture inference from tensor shapes.

``infer_config`` reads what a bare state dict shows (every size) and takes from the known architectures
(``kontrast.architectures.match_shapes``) what it does not show (the attention heads); where no known
architecture has these shapes it refuses, naming the head count as the missing fact. The activation is not
in the weights either: unless told (``quick_gelu=``), QuickGELU is assumed, as in every OpenAI release, with a
warning (open_clip-trained checkpoints mostly use GELU).

OpenAI names are kontrast's own; Hugging Face ``CLIPModel`` names are converted by rename tables plus
the split/merge of OpenAI's packed ``in_proj_weight`` (= cat[q, k, v]) and the transposes of the
projections (OpenAI multiplies ``x @ proj``, HF applies ``Linear``: ``x @ W.T``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re

import torch

from ..architectures import match_shapes
from ..config import ModelConfig, TextConfig, VisionConfig
from ..errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

# (HF name, OpenAI name) pairs for one transformer block, relative to the block prefix.
_BLOCK_RENAMES = [
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    ("self_attn.out_proj", "attn.out_proj"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
]
# Tensors outside the blocks: (HF name, OpenAI name, transpose?)
_TOP_RENAMES = [
    ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight", False),
    ("vision_model.embeddings.class_embedding", "visual.class_embedding", False),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding", False),
    ("vision_model.pre_layrnorm.weight", "visual.ln_pre.weight", False),
    ("vision_model.pre_layrnorm.bias", "visual.ln_pre.bias", False),
    ("vision_model.post_layernorm.weight", "visual.ln_post.weight", False),
    ("vision_model.post_layernorm.bias", "visual.ln_post.bias", False),
    ("visual_projection.weight", "visual.proj", True),
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight", False),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding", False),
    ("text_model.final_layer_norm.weight", "ln_final.weight", False),
    ("text_model.final_layer_norm.bias", "ln_final.bias", False),
    ("text_projection.weight", "text_projection", True),
    ("logit_scale", "logit_scale", False),
]
_TOWERS = [("vision_model.encoder.layers", "visual.transformer.resblocks"), ("text_model.encoder.layers", "transformer.resblocks")]
_HF_IGNORED = re.compile(r".*(position_ids|num_batches_tracked)$")


def hf_to_openai(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``CLIPModel`` state dict -> OpenAI naming."""
    out: dict[str, torch.Tensor] = {}
    for hf, oa, transpose in _TOP_RENAMES:
        if hf in sd:
            out[oa] = sd[hf].T.contiguous() if transpose else sd[hf]
    for hf_prefix, oa_prefix in _TOWERS:
        pattern = re.compile(re.escape(hf_prefix) + r"\.(\d+)\.")
        blocks = sorted({int(m.group(1)) for k in sd for m in [pattern.match(k)] if m})
        for i in blocks:
            src, dst = f"{hf_prefix}.{i}.", f"{oa_prefix}.{i}."
            for part in ("weight", "bias"):
                q, k, v = (sd[f"{src}self_attn.{n}_proj.{part}"] for n in ("q", "k", "v"))
                out[f"{dst}attn.in_proj_{part}"] = torch.cat([q, k, v], dim=0)
                for hf_name, oa_name in _BLOCK_RENAMES:
                    out[f"{dst}{oa_name}.{part}"] = sd[f"{src}{hf_name}.{part}"]
    known = {hf for hf, _, _ in _TOP_RENAMES}
    leftovers = [k for k in sd if k not in known and not k.startswith(tuple(p for p, _ in _TOWERS))]
    leftovers = [k for k in leftovers if not _HF_IGNORED.match(k)]
    for k in leftovers:  # keep unknown tensors so the strict load reports them by name
        out[k] = sd[k]
    return out


def openai_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI naming -> Hugging Face ``CLIPModel`` state dict (ViT image towers only)."""
    vision = any(k.startswith("visual.") for k in sd)  # a text tower alone has none (CLIPTextModelWithProjection)
    if vision and ("visual.conv1.weight" not in sd or "visual.class_embedding" not in sd):
        raise ValueError("Hugging Face CLIPModel has no ResNet image tower; export a ViT model")
    out: dict[str, torch.Tensor] = {}
    for hf, oa, transpose in _TOP_RENAMES:
        if oa in sd:
            out[hf] = sd[oa].T.contiguous() if transpose else sd[oa]
    for hf_prefix, oa_prefix in _TOWERS:
        pattern = re.compile(re.escape(oa_prefix) + r"\.(\d+)\.")
        blocks = sorted({int(m.group(1)) for k in sd for m in [pattern.match(k)] if m})
        for i in blocks:
            src, dst = f"{oa_prefix}.{i}.", f"{hf_prefix}.{i}."
            for part in ("weight", "bias"):
                q, k, v = sd[f"{src}attn.in_proj_{part}"].chunk(3, dim=0)
                for name, t in zip(("q", "k", "v"), (q, k, v)):
                    out[f"{dst}self_attn.{name}_proj.{part}"] = t.contiguous()
                for hf_name, oa_name in _BLOCK_RENAMES:
                    out[f"{dst}{hf_name}.{part}"] = sd[f"{src}{oa_name}.{part}"]
    return out


def custom_text_to_openai(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip ``CustomTextCLIP`` names (``text.token_embedding``, ``text.transformer``, ...) -> OpenAI names, for a
    CLIP text tower (a Hugging Face tower keeps ``text.transformer`` / ``text.proj``, which are kontrast's names)."""
    if "text.token_embedding.weight" not in sd:
        return sd
    return {k.removeprefix("text."): v for k, v in sd.items()}


def text_shapes(sd: dict[str, torch.Tensor], act: str) -> TextConfig:
    """The CLIP text tower's sizes from its tensors (heads: OpenAI's width // 64 until known architectures say)."""
    t_width = sd["ln_final.weight"].shape[0]
    return TextConfig(
        context_length=sd["positional_embedding"].shape[0], vocab_size=sd["token_embedding.weight"].shape[0],
        width=t_width, heads=max(1, t_width // 64),
        layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}),
        mlp_ratio=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / t_width, act=act,
    )


def _shapes_config(sd: dict[str, torch.Tensor], act: str) -> ModelConfig:
    """Every size the tensors show; heads follow OpenAI's width // 64 until the known architectures say otherwise."""
    embed_dim = sd["text_projection"].shape[1]
    text = text_shapes(sd, act)
    if "visual.proj" in sd:  # ViT
        width = sd["visual.conv1.weight"].shape[0]
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round(math.sqrt(sd["visual.positional_embedding"].shape[0] - 1))
        vision = VisionConfig(
            kind="vit", image_size=patch * grid,
            layers=len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")}),
            width=width, patch_size=patch, head_width=64,
            mlp_ratio=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width, act=act,
            no_ln_pre="visual.ln_pre.weight" not in sd,
        )
    else:  # modified ResNet
        counts = [len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{i}.")}) for i in (1, 2, 3, 4)]
        width = sd["visual.layer1.0.conv1.weight"].shape[0]
        spatial = round(math.sqrt(sd["visual.attnpool.positional_embedding"].shape[0] - 1))
        vision = VisionConfig(kind="resnet", image_size=spatial * 32, layers=tuple(counts), width=width,
                              patch_size=None, act=act)
    return ModelConfig(embed_dim=embed_dim, vision=vision, text=text)


def infer_config(sd: dict[str, torch.Tensor], quick_gelu: bool | None = None, source: str = "state dict",
                 assumed: list[str] | None = None) -> ModelConfig:
    """Architecture of an OpenAI-named state dict without a config (see the module docstring).

    ``assumed`` (if given) receives one line per assumption made. Raises ``CheckpointError`` for tensors that
    are missing and ``ConfigError`` when the heads cannot be settled.
    """
    if "visual.trunk.stem.0.weight" in sd:  # an open_clip ConvNeXt tower
        from .convnext_convert import infer_convnext

        return infer_convnext(sd, quick_gelu, source, assumed)
    if "visual.trunk.conv_stem.weight" in sd:  # an open_clip EfficientNet-Lite tower
        return _infer_efficientnet_lite(sd, quick_gelu, source, assumed)
    act = "gelu" if quick_gelu is False else "quick_gelu"
    try:
        cfg = _shapes_config(sd, act)
    except KeyError as exc:
        raise CheckpointError(f"{source}: cannot infer the architecture: tensor {exc.args[0]!r} is missing; "
                              "is this a CLIP checkpoint?") from exc
    except (IndexError, ValueError, ZeroDivisionError) as exc:  # a tensor of the wrong rank or size
        shapes = ", ".join(f"{k} {tuple(sd[k].shape)}" for k in ("text_projection", "ln_final.weight",
                                                                 "positional_embedding") if k in sd)
        raise CheckpointError(f"{source}: cannot infer the architecture: tensor shapes do not fit a CLIP model "
                              f"({shapes})") from exc
    matches = match_shapes(cfg)
    heads = {(m.vision.head_width, m.text.heads) for m in matches}
    v, t = cfg.vision, cfg.text
    shapes = f"vision width {v.width}, text width {t.width}"
    if not matches:
        raise ConfigError(
            f"{source}: the weights do not tell the number of attention heads ({shapes}) and no known architecture "
            "has these shapes; name the architecture (kontrast.load('ARCH', pretrained=PATH)) or load a checkpoint "
            "with its config")
    if len(heads) > 1:
        names = ", ".join(m.name or "?" for m in matches)
        raise ConfigError(f"{source}: the weights do not tell the number of attention heads ({shapes}) and the "
                          f"architectures with these shapes disagree ({names}); name one: "
                          "kontrast.load('ARCH', pretrained=PATH)")
    head_width, text_heads = heads.pop()
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(v, head_width=head_width),
                              text=dataclasses.replace(t, heads=text_heads))
    log.info("%s: shapes of %s: %d vision heads, %d text heads", source, matches[0].name, cfg.vision.heads, text_heads)
    if quick_gelu is None:
        line = ("activation: QuickGELU assumed (the weights cannot tell; OpenAI's released checkpoints use QuickGELU, "
                "open_clip-trained ones mostly GELU); pass quick_gelu=False, or an architecture name, if it was GELU")
        log.warning("%s: %s", source, line)
        if assumed is not None:
            assumed.append(line)
    return cfg


def _infer_efficientnet_lite(sd: dict[str, torch.Tensor], quick_gelu: bool | None, source: str,
                             assumed: list[str] | None) -> ModelConfig:
    """A bare open_clip state dict with a timm ``tf_efficientnet_lite*`` trunk: the name from the blocks per stage
    and the stage widths; the image size cannot be seen (the ImageNet size of that trunk is assumed)."""
    from ..models.efficientnet_lite import LITE_VARIANTS, lite_geometry
    from .convnext_convert import timm_head

    blocks = sorted({tuple(int(p) for p in k.split(".")[3:5]) for k in sd if k.startswith("visual.trunk.blocks.")})
    per_stage = [sum(1 for s, _ in blocks if s == i) for i in range(1 + max((s for s, _ in blocks), default=-1))]
    widths = [int(sd[f"visual.trunk.blocks.{i}.0.bn{2 if i == 0 else 3}.weight"].shape[0])
              for i in range(len(per_stage)) if f"visual.trunk.blocks.{i}.0.bn{2 if i == 0 else 3}.weight" in sd]
    name = next((n for n in LITE_VARIANTS if [s.repeats for s in lite_geometry(n)] == per_stage
                 and [s.out for s in lite_geometry(n)] == widths), None)
    if name is None:
        raise CheckpointError(f"{source}: an EfficientNet trunk (visual.trunk.conv_stem) whose stages ({per_stage} "
                              f"blocks, widths {widths}) match no EfficientNet-Lite kontrast implements")
    head, bias = timm_head(sd, source, "EfficientNet-Lite")
    try:
        text = text_shapes(sd, "quick_gelu" if quick_gelu else "gelu")
        embed_dim = int(sd["text_projection"].shape[1])
    except KeyError as exc:
        raise CheckpointError(f"{source}: cannot infer the architecture: tensor {exc.args[0]!r} is missing") from None
    size = LITE_VARIANTS[name][2]
    if assumed is not None:
        assumed.append(f"EfficientNet-Lite trunk {name} read from the weights; image size {size} assumed (its "
                       "ImageNet size: convolutional weights do not show it)")
    vision = VisionConfig(kind="efficientnet_lite", image_size=size, act="relu6", timm_model_name=name,
                          timm_proj=head, timm_proj_bias=bias)
    return ModelConfig(embed_dim=embed_dim, vision=vision, text=text)
