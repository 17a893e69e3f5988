"""Read and write SigLIP / SigLIP 2 checkpoints: open_clip folders (timm trunk) and Hugging Face Siglip(2)Model folders.

``read_open_clip`` / ``read_hf`` turn a folder's config and weights into a ``SigLIPConfig``, kontrast-named weights
and the preprocessing / tokenizer settings the folder declares; ``write_open_clip`` / ``write_hf`` do the reverse so a
save -> load round trip keeps everything. Anything kontrast does not implement (another timm pool or projection,
a trunk that is not a SigLIP ViT, NaFlex grids other than the fixed one) is refused in one line naming the key,
the value and the file.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..models.siglip import SigLIPConfig, SigLIPTowerConfig
from . import siglip_convert

log = logging.getLogger(__name__)

# timm SigLIP ViT trunks with the attention-pool head (the ones open_clip names), read from timm 1.0.31 (see
# tests/fixtures/families/siglip_open_clip/timm_siglip_trunks.json): image size, patch, width, depth, heads,
# MLP width, activation.
TIMM_SIGLIP_TRUNKS: dict[str, tuple[int, int, int, int, int, int, str]] = {
    "vit_base_patch16_siglip_224": (224, 16, 768, 12, 12, 3072, "gelu"),
    "vit_base_patch16_siglip_256": (256, 16, 768, 12, 12, 3072, "gelu"),
    "vit_base_patch16_siglip_384": (384, 16, 768, 12, 12, 3072, "gelu"),
    "vit_base_patch16_siglip_512": (512, 16, 768, 12, 12, 3072, "gelu"),
    "vit_base_patch32_siglip_256": (256, 32, 768, 12, 12, 3072, "gelu_tanh"),
    "vit_giantopt_patch16_siglip_256": (256, 16, 1536, 40, 16, 6144, "gelu_tanh"),
    "vit_giantopt_patch16_siglip_384": (384, 16, 1536, 40, 16, 6144, "gelu_tanh"),
    "vit_large_patch16_siglip_256": (256, 16, 1024, 24, 16, 4096, "gelu"),
    "vit_large_patch16_siglip_384": (384, 16, 1024, 24, 16, 4096, "gelu"),
    "vit_large_patch16_siglip_512": (512, 16, 1024, 24, 16, 4096, "gelu_tanh"),
    "vit_so400m_patch14_siglip_224": (224, 14, 1152, 27, 16, 4304, "gelu"),
    "vit_so400m_patch14_siglip_378": (378, 14, 1152, 27, 16, 4304, "gelu"),
    "vit_so400m_patch14_siglip_384": (384, 14, 1152, 27, 16, 4304, "gelu"),
    "vit_so400m_patch16_siglip_256": (256, 16, 1152, 27, 16, 4304, "gelu_tanh"),
    "vit_so400m_patch16_siglip_384": (384, 16, 1152, 27, 16, 4304, "gelu_tanh"),
    "vit_so400m_patch16_siglip_512": (512, 16, 1152, 27, 16, 4304, "gelu_tanh"),
}
# open_clip vision_cfg / text_cfg keys of SigLIP configs and the values kontrast implements (None: any value).
_OPEN_CLIP_VISION_KEYS = {"image_size": None, "timm_model_name": None, "timm_model_pretrained": None,
                          "timm_pool": ("map",), "timm_proj": ("none", None, ""), "timm_proj_bias": (False,),
                          "timm_drop": None, "timm_drop_path": None}
_OPEN_CLIP_TEXT_KEYS = {"context_length": None, "vocab_size": None, "hf_tokenizer_name": None, "tokenizer_kwargs": None,
                        "width": None, "heads": None, "layers": None, "mlp_ratio": None, "no_causal_mask": (True,),
                        "proj_bias": (True,), "pool_type": ("last",), "norm_kwargs": None, "act_kwargs": None,
                        "tokenizer_mode": (None,), "embed_cls": (False,), "pad_id": None, "final_ln_after_pool": (False,),
                        "proj_type": ("linear",), "ls_init_value": (None,), "output_tokens": (False,)}
_OPEN_CLIP_TOP_KEYS = {"embed_dim", "init_logit_bias", "init_logit_scale", "custom_text", "vision_cfg", "text_cfg",
                       "quick_gelu", "cast_dtype"}


def is_siglip_open_clip(model_cfg: dict[str, Any]) -> bool:
    """Whether an open_clip ``model_cfg`` describes a SigLIP model (a timm trunk with the ``map`` pool)."""
    vision = model_cfg.get("vision_cfg") or {}
    return bool(vision.get("timm_model_name")) and "siglip" in str(vision.get("timm_model_name"))


def _check_keys(section: dict[str, Any], allowed: dict[str, Any], where: str, path: Path) -> None:
    for key, value in section.items():
        if key not in allowed:
            raise CheckpointError(f"{path}: {where}.{key} = {value!r} is not supported for SigLIP models by kontrast")
        if allowed[key] is not None and value not in allowed[key]:
            raise CheckpointError(f"{path}: {where}.{key} = {value!r} is not supported (kontrast implements "
                                  f"{', '.join(repr(v) for v in allowed[key] if v is not None)})")


def _trunk(name: str, sd: dict[str, torch.Tensor], image_size: int, path: Path) -> tuple[SigLIPTowerConfig, int, int]:
    """(tower config, image size, patch) of a timm trunk: from the table, or read from the weights with a warning."""
    try:
        width = sd["visual.conv1.weight"].shape[0]
        patch = sd["visual.conv1.weight"].shape[-1]
        layers = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
        hidden = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        grid = round(math.sqrt(sd["visual.positional_embedding"].shape[0]))
    except KeyError as exc:
        raise CheckpointError(f"{path}: tensor visual.trunk.{exc.args[0]} is missing; is this a SigLIP trunk?") from exc
    if name in TIMM_SIGLIP_TRUNKS:
        size, t_patch, t_width, depth, heads, t_hidden, act = TIMM_SIGLIP_TRUNKS[name]
        if (t_patch, t_width, depth, t_hidden, size // t_patch) != (patch, width, layers, hidden, grid):
            raise CheckpointError(
                f"{path}: the weights (patch {patch}, width {width}, depth {layers}, mlp {hidden}, grid {grid}) do not fit "
                f"timm trunk {name} (patch {t_patch}, width {t_width}, depth {depth}, mlp {t_hidden}, grid {size // t_patch})")
        return SigLIPTowerConfig(width, layers, heads, hidden, act), image_size or size, patch
    heads = max(1, width // 64)
    log.warning("%s: timm trunk %r is not in kontrast's table of SigLIP trunks; read width %d, depth %d, patch %d, "
                "grid %d from the weights and assumed heads = width / 64 = %d and exact GELU", path, name, width, layers,
                patch, grid, heads)
    return SigLIPTowerConfig(width, layers, heads, hidden, "gelu"), image_size or grid * patch, patch


def read_open_clip(raw: dict[str, Any], sd: dict[str, torch.Tensor], path: Path) -> tuple[SigLIPConfig, dict[str, torch.Tensor]]:
    """``SigLIPConfig`` and kontrast-named weights of an open_clip SigLIP folder (``raw``: open_clip_config.json)."""
    cfg = dict(raw.get("model_cfg", raw))
    for key, value in cfg.items():
        if key not in _OPEN_CLIP_TOP_KEYS:
            raise CheckpointError(f"{path}: model_cfg.{key} = {value!r} is not supported for SigLIP models by kontrast")
    vision, text = dict(cfg.get("vision_cfg") or {}), dict(cfg.get("text_cfg") or {})
    _check_keys(vision, _OPEN_CLIP_VISION_KEYS, "vision_cfg", path)
    _check_keys(text, _OPEN_CLIP_TEXT_KEYS, "text_cfg", path)
    if cfg.get("quick_gelu"):
        raise CheckpointError(f"{path}: quick_gelu = true is not supported for SigLIP models (timm trunks use GELU)")
    ksd = siglip_convert.open_clip_to_kontrast(sd)
    tower, image_size, patch = _trunk(str(vision["timm_model_name"]), ksd, int(vision.get("image_size") or 0), path)
    width = int(text.get("width", 512))
    act = text.get("act_kwargs") or {}
    if set(act) - {"approximate"} or act.get("approximate", "none") not in ("none", "tanh"):
        raise CheckpointError(f"{path}: text_cfg.act_kwargs = {act!r} is not supported (only approximate: tanh)")
    norm = text.get("norm_kwargs") or {}
    if set(norm) - {"eps"}:
        raise CheckpointError(f"{path}: text_cfg.norm_kwargs = {norm!r} is not supported (only eps)")
    hidden = ksd["text.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] if "text.transformer.resblocks.0.mlp.c_fc.weight" in ksd \
        else int(width * float(text.get("mlp_ratio", 4.0)))
    text_tower = SigLIPTowerConfig(width, int(text.get("layers", 12)), int(text.get("heads", 8)), hidden,
                                   "gelu_tanh" if act.get("approximate") == "tanh" else "gelu", float(norm.get("eps", 1e-5)))
    config = SigLIPConfig(tower, text_tower, image_size, patch, int(text.get("vocab_size", 49408)),
                          int(text.get("context_length", 77)), int(cfg.get("embed_dim", tower.width)),
                          init_logit_scale=float(cfg.get("init_logit_scale", math.log(10.0))),
                          init_logit_bias=float(cfg.get("init_logit_bias", -10.0)))
    return config, ksd


def write_open_clip_config(config: SigLIPConfig, trunk_name: str | None = None) -> dict[str, Any]:
    """open_clip ``model_cfg`` of a SigLIP model (a timm trunk from the table when one fits, else a descriptive name)."""
    v, t = config.vision, config.text
    name = trunk_name or _table_name(config)
    text: dict[str, Any] = {"context_length": config.context_length, "vocab_size": config.vocab_size, "width": t.width,
                            "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_hidden / t.width,
                            "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": t.ln_eps}}
    if t.act == "gelu_tanh":
        text["act_kwargs"] = {"approximate": "tanh"}
    del v
    return {"embed_dim": config.embed_dim, "init_logit_bias": config.init_logit_bias, "custom_text": True,
            "vision_cfg": {"image_size": config.image_size, "timm_model_name": name, "timm_model_pretrained": False,
                           "timm_pool": "map", "timm_proj": "none"},
            "text_cfg": text}


def _table_name(config: SigLIPConfig) -> str:
    v = config.vision
    for name, (size, patch, width, depth, heads, hidden, act) in TIMM_SIGLIP_TRUNKS.items():
        if (size, patch, width, depth, heads, hidden, act) == (config.image_size, config.patch_size, v.width, v.layers,
                                                              v.heads, v.mlp_hidden, v.act):
            return name
    # Not a timm model: kontrast reads it back from the weights; heads = width / 64 must then hold.
    if v.heads != max(1, v.width // 64) or v.act != "gelu":
        raise CheckpointError(f"this SigLIP image tower (width {v.width}, {v.heads} heads, {v.act}) matches no timm "
                              "trunk, so open_clip could not build it; export format='hf' instead")
    return f"vit_custom_patch{config.patch_size}_siglip_{config.image_size}"


# ---- Hugging Face ---------------------------------------------------------------------------------------
_HF_TOWER_KEYS = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
                  "layer_norm_eps", "attention_dropout", "model_type", "image_size", "patch_size", "num_channels",
                  "vocab_size", "max_position_embeddings", "pad_token_id", "bos_token_id", "eos_token_id",
                  "projection_size", "vision_use_head", "num_patches", "dtype", "torch_dtype", "_name_or_path",
                  "architectures", "transformers_version", "initializer_range", "initializer_factor", "tie_word_embeddings",
                  "output_hidden_states", "output_attentions", "return_dict", "chunk_size_feed_forward", "is_decoder",
                  "add_cross_attention", "problem_type", "id2label", "label2id", "tokenizer_class", "prefix",
                  "sep_token_id", "decoder_start_token_id", "task_specific_params", "cross_attention_hidden_size",
                  "is_encoder_decoder", "finetuning_task", "tf_legacy_loss", "use_bfloat16", "pruned_heads"}
_HF_ACTS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}


def is_siglip_hf(raw: dict[str, Any]) -> bool:
    return raw.get("model_type") in ("siglip", "siglip2")


def _hf_tower(section: dict[str, Any], where: str, path: Path) -> SigLIPTowerConfig:
    for key, value in section.items():
        if key not in _HF_TOWER_KEYS:
            raise CheckpointError(f"{path}: {where}.{key} = {value!r} is not supported by kontrast's SigLIP reader")
    act = section.get("hidden_act", "gelu_pytorch_tanh")
    if act not in _HF_ACTS:
        raise CheckpointError(f"{path}: {where}.hidden_act = {act!r} is not supported (gelu, gelu_pytorch_tanh)")
    if section.get("vision_use_head") is False:
        raise CheckpointError(f"{path}: {where}.vision_use_head = false (no attention-pool head) is not supported")
    width = int(section.get("hidden_size", 768))
    return SigLIPTowerConfig(width, int(section.get("num_hidden_layers", 12)), int(section.get("num_attention_heads", 12)),
                             int(section.get("intermediate_size", 3072)), _HF_ACTS[act], float(section.get("layer_norm_eps", 1e-6)))


def read_hf(raw: dict[str, Any], sd: dict[str, torch.Tensor], path: Path) -> tuple[SigLIPConfig, dict[str, torch.Tensor]]:
    """``SigLIPConfig`` and kontrast-named weights of a Hugging Face ``SiglipModel`` / ``Siglip2Model`` folder."""
    known_top = {"model_type", "architectures", "text_config", "vision_config", "dtype", "torch_dtype",
                 "transformers_version", "initializer_factor", "_name_or_path", "tie_word_embeddings", "output_hidden_states",
                 "output_attentions", "return_dict"}
    for key, value in raw.items():
        if key not in known_top:
            raise CheckpointError(f"{path}: config.json {key} = {value!r} is not supported by kontrast's SigLIP reader")
    naflex = raw.get("model_type") == "siglip2"
    vraw, traw = dict(raw.get("vision_config") or {}), dict(raw.get("text_config") or {})
    vision, text = _hf_tower(vraw, "vision_config", path), _hf_tower(traw, "text_config", path)
    patch = int(vraw.get("patch_size", 16))
    if naflex:
        rows = int(vraw.get("num_patches", 256))
        grid = round(math.sqrt(rows))
        if grid * grid != rows:
            raise CheckpointError(f"{path}: vision_config.num_patches = {rows} is not a square grid")
        image_size = grid * patch
    else:
        image_size = int(vraw.get("image_size", 224))
    projection = int(traw.get("projection_size") or text.width)
    if projection != vision.width:
        raise CheckpointError(f"{path}: text_config.projection_size = {projection} differs from the image width "
                              f"{vision.width}; SigLIP compares them directly")
    ksd = siglip_convert.hf_to_kontrast(sd, patch_size=patch)
    scale = float(ksd["logit_scale"]) if "logit_scale" in ksd else math.log(10.0)
    bias = float(ksd["logit_bias"]) if "logit_bias" in ksd else -10.0
    config = SigLIPConfig(vision, text, image_size, patch, int(traw.get("vocab_size", 32000)),
                          int(traw.get("max_position_embeddings", 64)), projection, scale, bias, naflex=naflex)
    return config, ksd


def write_hf_config(config: SigLIPConfig) -> dict[str, Any]:
    """``config.json`` of a ``SiglipModel`` (or ``Siglip2Model`` for NaFlex-born weights) for transformers."""
    v, t = config.vision, config.text
    acts = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}
    vision: dict[str, Any] = {"hidden_size": v.width, "intermediate_size": v.mlp_hidden, "num_hidden_layers": v.layers,
                              "num_attention_heads": v.heads, "hidden_act": acts[v.act], "layer_norm_eps": v.ln_eps,
                              "patch_size": config.patch_size, "num_channels": 3}
    if config.naflex:
        vision.update(model_type="siglip2_vision_model", num_patches=(config.image_size // config.patch_size) ** 2)
    else:
        vision.update(model_type="siglip_vision_model", image_size=config.image_size)
    text = {"model_type": "siglip2_text_model" if config.naflex else "siglip_text_model", "hidden_size": t.width,
            "intermediate_size": t.mlp_hidden, "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
            "hidden_act": acts[t.act], "layer_norm_eps": t.ln_eps, "vocab_size": config.vocab_size,
            "max_position_embeddings": config.context_length, "projection_size": config.embed_dim}
    kind = "Siglip2Model" if config.naflex else "SiglipModel"
    return {"architectures": [kind], "model_type": "siglip2" if config.naflex else "siglip",
            "vision_config": vision, "text_config": text}


def naflex_patch_size(raw: dict[str, Any]) -> int | None:
    """Patch size of a Siglip2 (NaFlex) config, for the patch-embedding conversion."""
    return int((raw.get("vision_config") or {}).get("patch_size", 16)) if raw.get("model_type") == "siglip2" else None


