"""Pure state-dict -> state-dict converters and architecture inference from tensor shapes.

OpenAI names are kontrast's own; Hugging Face ``CLIPModel`` names are converted by rename tables plus
the split/merge of OpenAI's packed ``in_proj_weight`` (= cat[q, k, v]) and the transposes of the
projections (OpenAI multiplies ``x @ proj``, HF applies ``Linear``: ``x @ W.T``).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from ..config import ModelConfig, TextConfig, VisionConfig

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
    if "visual.conv1.weight" not in sd or "visual.class_embedding" not in sd:
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


def hf_config_to_model_config(hf: dict[str, Any]) -> ModelConfig:
    """``CLIPConfig`` (config.json) -> ``ModelConfig``."""
    v, t = hf.get("vision_config", {}), hf.get("text_config", {})
    v_width, t_width = v.get("hidden_size", 768), t.get("hidden_size", 512)
    v_heads = v.get("num_attention_heads", 12)
    vision = VisionConfig(
        image_size=v.get("image_size", 224),
        layers=v.get("num_hidden_layers", 12),
        width=v_width,
        patch_size=v.get("patch_size", 32),
        head_width=v_width // v_heads,
        mlp_ratio=v.get("intermediate_size", 4 * v_width) / v_width,
        act=_hf_act(v.get("hidden_act", "quick_gelu")),
        ln_eps=v.get("layer_norm_eps", 1e-5),
    )
    text = TextConfig(
        context_length=t.get("max_position_embeddings", 77),
        vocab_size=t.get("vocab_size", 49408),
        width=t_width,
        heads=t.get("num_attention_heads", 8),
        layers=t.get("num_hidden_layers", 12),
        mlp_ratio=t.get("intermediate_size", 4 * t_width) / t_width,
        act=_hf_act(t.get("hidden_act", "quick_gelu")),
        ln_eps=t.get("layer_norm_eps", 1e-5),
    )
    return ModelConfig(embed_dim=hf.get("projection_dim", 512), vision=vision, text=text,
                       init_logit_scale=hf.get("logit_scale_init_value", 2.6592))


def model_config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """``ModelConfig`` -> a ``CLIPConfig`` dict that ``transformers.CLIPModel.from_pretrained`` reads."""
    v, t = cfg.vision, cfg.text
    if v.is_resnet:
        raise ValueError("Hugging Face CLIPModel has no ResNet image tower; export a ViT model")
    act = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": cfg.init_logit_scale,
        "initializer_factor": 1.0,
        "text_config": {
            "model_type": "clip_text_model", "vocab_size": t.vocab_size, "max_position_embeddings": t.context_length,
            "hidden_size": t.width, "num_attention_heads": t.heads, "num_hidden_layers": t.layers,
            "intermediate_size": int(t.width * t.mlp_ratio), "hidden_act": act[t.act], "layer_norm_eps": t.ln_eps,
            "projection_dim": cfg.embed_dim, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "image_size": v.image_size, "patch_size": v.patch_size,
            "hidden_size": v.width, "num_attention_heads": v.heads, "num_hidden_layers": v.layers,
            "intermediate_size": int(v.width * v.mlp_ratio), "hidden_act": act[v.act], "layer_norm_eps": v.ln_eps,
            "projection_dim": cfg.embed_dim, "num_channels": 3,
        },
    }


def _hf_act(name: str) -> str:
    return {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}.get(
        name, name
    )


def infer_config(sd: dict[str, torch.Tensor], act: str = "quick_gelu") -> ModelConfig:
    """Architecture from an OpenAI-named state dict's tensor shapes (no config file needed).

    Text heads follow OpenAI's rule ``width // 64``; the activation cannot be seen in the weights, so
    it defaults to QuickGELU, which every OpenAI release uses.
    """
    try:
        embed_dim = sd["text_projection"].shape[1]
        t_width = sd["ln_final.weight"].shape[0]
        text = TextConfig(
            context_length=sd["positional_embedding"].shape[0],
            vocab_size=sd["token_embedding.weight"].shape[0],
            width=t_width,
            heads=max(1, t_width // 64),
            layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}),
            mlp_ratio=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / t_width,
            act=act,
        )
        if "visual.proj" in sd:  # ViT
            width = sd["visual.conv1.weight"].shape[0]
            patch = sd["visual.conv1.weight"].shape[-1]
            grid = round(math.sqrt(sd["visual.positional_embedding"].shape[0] - 1))
            vision = VisionConfig(
                image_size=patch * grid,
                layers=len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")}),
                width=width,
                patch_size=patch,
                head_width=64,
                mlp_ratio=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
                act=act,
            )
        else:  # modified ResNet
            counts = [len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{i}.")}) for i in (1, 2, 3, 4)]
            width = sd["visual.layer1.0.conv1.weight"].shape[0]
            spatial = round(math.sqrt(sd["visual.attnpool.positional_embedding"].shape[0] - 1))
            vision = VisionConfig(image_size=spatial * 32, layers=tuple(counts), width=width, patch_size=None, act=act)
    except KeyError as exc:
        raise KeyError(f"cannot infer the architecture: tensor {exc.args[0]!r} is missing") from exc
    except (IndexError, ValueError, ZeroDivisionError) as exc:  # a tensor of the wrong rank or size
        shapes = ", ".join(f"{k} {tuple(sd[k].shape)}" for k in ("text_projection", "ln_final.weight",
                                                                 "positional_embedding") if k in sd)
        raise KeyError(f"cannot infer the architecture: tensor shapes do not fit a CLIP model ({shapes})") from exc
    return ModelConfig(embed_dim=embed_dim, vision=vision, text=text)
