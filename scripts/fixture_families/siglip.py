"""SigLIP and SigLIP 2 reference fixtures: open_clip folders (timm trunk) and Hugging Face SiglipModel / Siglip2Model.

Families:
- ``siglip_open_clip``: open_clip ``local-dir`` folder, SigLIP text tower (exact GELU), timm trunk named
  ``vit_kxtest_patch16_siglip_64`` (registered here: a name kontrast cannot know, so it reads the shapes),
  T5-style ``tokenizer.json`` (SentencePiece unigram) as open_clip's hub folders carry, ``clean: canonicalize``,
  preprocessing mean/std 0.5, squash, bicubic.
- ``siglip2_open_clip``: the same with a Gemma-style BPE ``tokenizer.json`` (no bos, eos added, pad 0), text GELU
  tanh (``act_kwargs``), a patch-8 trunk with mlp ratio 3.7362 and gelu_tanh, bilinear squash preprocessing.
- ``siglip_hf``: transformers ``SiglipModel`` folder with ``spiece.model`` (``SiglipTokenizer``: lower-case,
  punctuation stripped, eos appended, padded with ``</s>``) and ``SiglipImageProcessor`` (bicubic squash).
- ``siglip2_hf``: transformers ``Siglip2Model`` (NaFlex) folder with a Gemma-style ``tokenizer.json``
  (``Siglip2Tokenizer``) and ``Siglip2ImageProcessor`` at ``max_num_patches`` = the fixed grid.
- ``timm_siglip_trunks.json`` (in ``siglip_open_clip``): timm's architecture facts for every real SigLIP trunk name.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .common import FamilyContext, family, import_open_clip, max_abs, reinit_, save_tensors
from .tokenizers_local import gemma_vocab_merges, sentencepiece_model

N_PIXEL_IMAGES = 4  # images fed through the models (the first four of ctx.image_names)
LOGIT_SCALE = 2.302585092994046  # ln(10), SigLIP's initial temperature
LOGIT_BIAS = -3.25


# ---- timm trunks ------------------------------------------------------------------------------------
def _register_timm_trunks() -> None:
    """Register the tiny trunk names (once); timm's real SigLIP names are only described, never built here."""
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    if "vit_kxtest_patch16_siglip_64" in timm.list_models("vit_kxtest*"):
        return

    def make(name: str, **kw):
        def build(pretrained: bool = False, **kwargs):
            args = dict(class_token=False, global_pool="map", **kw)
            args.update({k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")})
            model = VisionTransformer(**args)
            model.default_cfg = model.pretrained_cfg = {"architecture": name}
            return model

        build.__name__ = name
        register_model(build)

    make("vit_kxtest_patch16_siglip_64", img_size=64, patch_size=16, embed_dim=128, depth=2, num_heads=2)
    make("vit_kxtest_patch8_siglip_32", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=1,
         mlp_ratio=3.7362, act_layer="gelu_tanh")


def timm_trunk_table() -> dict[str, dict[str, Any]]:
    """Architecture facts of every real timm SigLIP ViT trunk, read from models built on the meta device."""
    import timm

    table = {}
    for name in timm.list_models("vit_*siglip*"):
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0)
        block = model.blocks[0]
        act = block.mlp.act
        table[name] = {
            "image_size": list(model.patch_embed.img_size),
            "patch_size": list(model.patch_embed.patch_size),
            "width": model.embed_dim,
            "depth": len(model.blocks),
            "heads": block.attn.num_heads,
            "mlp_hidden": block.mlp.fc1.out_features,
            "act": f"{type(act).__name__}({getattr(act, 'approximate', '')})",
            "global_pool": model.global_pool,
            "class_token": model.cls_token is not None,
            "num_prefix_tokens": model.num_prefix_tokens,
            "norm_pre": type(model.norm_pre).__name__,
            "dynamic_img_size": bool(getattr(model.patch_embed, "dynamic_img_size", False)),
            "attn_pool_heads": getattr(model.attn_pool, "num_heads", None) if model.attn_pool is not None else None,
            "attn_pool_mlp_hidden": model.attn_pool.mlp.fc1.out_features if model.attn_pool is not None else None,
        }
    return table


# ---- shared pieces ----------------------------------------------------------------------------------
def _features_entry(prefix: str, img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                    logits: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}image_features": img.float(),
        f"{prefix}text_features": txt.float(),
        f"{prefix}logit_scale": scale.reshape(()).float(),
        f"{prefix}logit_bias": bias.reshape(()).float(),
        f"{prefix}logits_per_image": logits.float(),
    }


def _check_logits(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                  logits: torch.Tensor) -> float:
    """max |library logits - (scale * cos + bias)|: the formula the README states."""
    mine = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T + bias
    return max_abs(mine, logits)


def _preprocess_all(ctx: FamilyContext, transform) -> dict[str, torch.Tensor]:
    return {f"preprocess.{name}": transform(img).float() for name, img in ctx.images().items()}


def _pixels(pre: dict[str, torch.Tensor], ctx: FamilyContext) -> torch.Tensor:
    return torch.stack([pre[f"preprocess.{n}"] for n in ctx.image_names[:N_PIXEL_IMAGES]])


# ---- open_clip --------------------------------------------------------------------------------------
def _open_clip_family(ctx: FamilyContext, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any],
                      save_tokenizer, seed: int) -> dict[str, Any]:
    """Write an open_clip local-dir folder, load it back the real way and record what open_clip computes."""
    open_clip = import_open_clip()
    _register_timm_trunks()
    (ctx.out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2) + "\n")
    save_tokenizer(ctx.out)
    built = open_clip.create_model(f"local-dir:{ctx.out}", load_weights=False)
    reinit_(built, seed)
    with torch.no_grad():
        built.logit_scale.fill_(LOGIT_SCALE)
        built.logit_bias.fill_(LOGIT_BIAS)
    save_tensors(ctx.out / "open_clip_model.safetensors", built.state_dict())

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{ctx.out}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{ctx.out}")
    tokens = tokenizer(ctx.texts)
    pre = _preprocess_all(ctx, preprocess)
    pixels = _pixels(pre, ctx)
    with torch.no_grad():
        img = model.encode_image(pixels)
        txt = model.encode_text(tokens)
        logits, _ = model.get_logits(pixels, tokens)
        trunk = model.visual.trunk
        tokens_img = trunk.forward_features(pixels)  # [N, g*g, D] after the final norm (no class token)
        scale, bias = model.logit_scale.exp(), model.logit_bias
    expected = {"tokens": tokens, "pixels": pixels, **pre, **_features_entry("", img, txt, scale, bias, logits),
                "image_tokens_final_norm": tokens_img}
    save_tensors(ctx.out / "expected.safetensors", expected)
    reloaded = {k: max_abs(v, built.state_dict()[k]) for k, v in model.state_dict().items()}
    return {
        "layout": "open_clip",
        "reference": {
            "model": "open_clip.create_model_and_transforms('local-dir:<folder>') -> encode_image / encode_text / get_logits",
            "tokens": "open_clip.get_tokenizer('local-dir:<folder>')(texts)",
            "preprocess": "the eval transform returned by create_model_and_transforms (from preprocess_cfg)",
            "image_tokens_final_norm": "model.visual.trunk.forward_features(pixels)",
        },
        "texts": ctx.texts,
        "images_for_pixels": ctx.image_names[:N_PIXEL_IMAGES],
        "tokenizer_class": type(tokenizer.tokenizer).__name__,
        "cross_checks": {
            "reload max abs over state dict": max(reloaded.values()),
            "logits vs exp(logit_scale)*cos+logit_bias": _check_logits(img, txt, scale, bias, logits),
        },
    }


def _save_t5_tokenizer(folder: Path) -> None:
    """What open_clip's SigLipTokenizer('c4-en').save_pretrained writes: a T5TokenizerFast, pad = eos = 1."""
    from transformers import T5TokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "spiece.model").write_bytes(sentencepiece_model())
        tok = T5TokenizerFast.from_pretrained(tmp, extra_ids=0, legacy=False)  # converted to tokenizer.json
    tok.pad_token = tok.convert_ids_to_tokens(1)
    tok.save_pretrained(str(folder))  # open_clip's hub folders carry tokenizer.json, no spiece.model


def _save_gemma_tokenizer_open_clip(folder: Path) -> None:
    """What open_clip's SigLipTokenizer('gemma').save_pretrained writes: GemmaTokenizerFast, no bos, eos, pad 0."""
    from transformers import GemmaTokenizerFast

    vocab, merges = gemma_vocab_merges()
    tok = GemmaTokenizerFast(vocab=vocab, merges=merges, add_bos_token=False, add_eos_token=True,
                             padding_side="right")
    tok.save_pretrained(str(folder))


def _siglip_text_cfg(vocab_size: int, width: int, heads: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = {
        "context_length": 64, "vocab_size": vocab_size, "hf_tokenizer_name": "kxtest/local",
        "tokenizer_kwargs": {"clean": "canonicalize"}, "width": width, "heads": heads, "layers": 2,
        "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6},
    }
    cfg.update(extra or {})
    return cfg


@family("siglip_open_clip")
def make_siglip_open_clip(ctx: FamilyContext) -> dict[str, Any]:
    model_cfg = {
        "embed_dim": 128, "init_logit_bias": -10, "custom_text": True,
        "vision_cfg": {"image_size": 64, "timm_model_name": "vit_kxtest_patch16_siglip_64",
                       "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": _siglip_text_cfg(300, 64, 1),
    }
    pre_cfg = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "resize_mode": "squash"}
    entry = _open_clip_family(ctx, model_cfg, pre_cfg, _save_t5_tokenizer, seed=2001)
    (ctx.out / "timm_siglip_trunks.json").write_text(json.dumps(timm_trunk_table(), indent=1) + "\n")
    return entry


@family("siglip2_open_clip")
def make_siglip2_open_clip(ctx: FamilyContext) -> dict[str, Any]:
    vocab, _ = gemma_vocab_merges()
    model_cfg = {
        "embed_dim": 64, "init_logit_bias": -10, "custom_text": True,
        "vision_cfg": {"image_size": 32, "timm_model_name": "vit_kxtest_patch8_siglip_32",
                       "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": _siglip_text_cfg(len(vocab), 64, 2, {"mlp_ratio": 3.7362, "act_kwargs": {"approximate": "tanh"}}),
    }
    pre_cfg = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear", "resize_mode": "squash"}
    return _open_clip_family(ctx, model_cfg, pre_cfg, _save_gemma_tokenizer_open_clip, seed=2002)


# ---- Hugging Face -------------------------------------------------------------------------------------
def _hf_outputs(model, pixel_kwargs: dict[str, torch.Tensor], input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        img = model.get_image_features(**pixel_kwargs).pooler_output
        txt = model.get_text_features(input_ids=input_ids).pooler_output
        out = model(input_ids=input_ids, **pixel_kwargs)
        vis = model.vision_model(**pixel_kwargs, output_hidden_states=True)
        text = model.text_model(input_ids=input_ids, output_hidden_states=True)
    result = _features_entry("", img, txt, model.logit_scale.exp(), model.logit_bias, out.logits_per_image)
    result["image_last_hidden_state"] = vis.last_hidden_state  # after post_layernorm
    for i, h in enumerate(vis.hidden_states):
        result[f"image_hidden_states.{i}"] = h
    result["text_last_hidden_state"] = text.last_hidden_state  # after final_layer_norm
    for i, h in enumerate(text.hidden_states):
        result[f"text_hidden_states.{i}"] = h
    return result


def _hf_family(ctx: FamilyContext, model, processor, tokenizer, pixel_fn, seed: int) -> dict[str, Any]:
    """Save ``model`` + processor + tokenizer with save_pretrained, reload with Auto classes, record outputs."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    reinit_(model, seed)
    with torch.no_grad():
        model.logit_scale.fill_(LOGIT_SCALE)
        model.logit_bias.fill_(LOGIT_BIAS)
    model.save_pretrained(str(ctx.out))
    processor.save_pretrained(str(ctx.out))
    tokenizer.save_pretrained(str(ctx.out))
    loaded = AutoModel.from_pretrained(str(ctx.out), attn_implementation="sdpa").eval()
    tok = AutoTokenizer.from_pretrained(str(ctx.out))
    proc = AutoImageProcessor.from_pretrained(str(ctx.out), backend="pil")
    input_ids = tok(ctx.texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt").input_ids
    pre, pixel_kwargs, extra = pixel_fn(ctx, proc)
    expected = {"tokens": input_ids, **pre, **{f"inputs.{k}": v for k, v in pixel_kwargs.items()}, **extra}
    expected.update(_hf_outputs(loaded, pixel_kwargs, input_ids))
    save_tensors(ctx.out / "expected.safetensors", expected)
    eager = AutoModel.from_pretrained(str(ctx.out), attn_implementation="eager").eval()
    eager_out = _hf_outputs(eager, pixel_kwargs, input_ids)
    return {
        "layout": "hf",
        "reference": {
            "model": f"transformers.AutoModel.from_pretrained(dir, attn_implementation='sdpa') -> {type(loaded).__name__}; "
                     "get_image_features(...).pooler_output, get_text_features(input_ids).pooler_output, "
                     "model(...).logits_per_image; vision_model / text_model(output_hidden_states=True)",
            "tokens": "AutoTokenizer.from_pretrained(dir)(texts, padding='max_length', max_length=64, truncation=True)",
            "preprocess": f"AutoImageProcessor.from_pretrained(dir, backend='pil') -> {type(proc).__name__}",
        },
        "texts": ctx.texts,
        "tokenizer_class": type(tok).__name__,
        "images_for_pixels": ctx.image_names[:N_PIXEL_IMAGES],
        "cross_checks": {
            "sdpa vs eager attention (max abs over outputs)": max(max_abs(v, expected[k]) for k, v in eager_out.items()),
            "logits vs exp(logit_scale)*cos+logit_bias": _check_logits(
                expected["image_features"], expected["text_features"], loaded.logit_scale.exp(), loaded.logit_bias,
                expected["logits_per_image"]),
        },
    }


def _siglip_pixels(ctx: FamilyContext, proc) -> tuple[dict, dict, dict]:
    pre = {f"preprocess.{n}": proc(images=img, return_tensors="pt").pixel_values[0] for n, img in ctx.images().items()}
    return pre, {"pixel_values": _pixels(pre, ctx)}, {}


@family("siglip_hf")
def make_siglip_hf(ctx: FamilyContext) -> dict[str, Any]:
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipTokenizer

    spm_path = ctx.out / "spiece.model"
    spm_path.write_bytes(sentencepiece_model())
    tokenizer = SiglipTokenizer(vocab_file=str(spm_path), model_max_length=64)
    config = SiglipConfig(
        text_config={"vocab_size": 300, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 64, "projection_size": 128},
        vision_config={"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 64, "patch_size": 16},
    )
    processor = SiglipImageProcessorPil(size={"height": 64, "width": 64})
    return _hf_family(ctx, SiglipModel(config), processor, tokenizer, _siglip_pixels, seed=2003)


def _siglip2_pixels(ctx: FamilyContext, proc) -> tuple[dict, dict, dict]:
    """NaFlex inputs: every image's patches + mask + spatial shape; the model runs on the square-grid images."""
    pre, extra = {}, {}
    for name, img in ctx.images().items():
        try:
            out = proc(images=img, return_tensors="pt")
        except ValueError:  # Siglip2ImageProcessor does not convert to RGB by default: RGBA / LA fail there
            continue
        pre[f"preprocess.{name}"] = out.pixel_values[0]
        extra[f"preprocess_mask.{name}"] = out.pixel_attention_mask[0]
        extra[f"preprocess_spatial_shapes.{name}"] = out.spatial_shapes[0]
    # The model inputs: the shared pixels of the fixed grid (square crops of the PNGs), patchified as HF does.
    fixed = []
    for name in ctx.image_names[:N_PIXEL_IMAGES]:
        img = ctx.images()[name].convert("RGB").resize((64, 64), resample=2)  # bilinear squash to the fixed grid
        x = (torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0) - 0.5) / 0.5  # [H, W, C]
        # [64, 64, 3] -> [4, 16, 4, 16, 3] -> [4, 4, 16, 16, 3] -> [16, 16*16*3] (row, col, channel order)
        fixed.append(x.reshape(4, 16, 4, 16, 3).permute(0, 2, 1, 3, 4).reshape(16, 16 * 16 * 3))
    pixel_kwargs = {
        "pixel_values": torch.stack(fixed),
        "pixel_attention_mask": torch.ones(N_PIXEL_IMAGES, 16, dtype=torch.int32),
        "spatial_shapes": torch.tensor([[4, 4]] * N_PIXEL_IMAGES, dtype=torch.int64),
    }
    return pre, pixel_kwargs, extra


@family("siglip2_hf")
def make_siglip2_hf(ctx: FamilyContext) -> dict[str, Any]:
    from transformers import Siglip2Config, Siglip2ImageProcessorPil, Siglip2Model, Siglip2Tokenizer

    vocab, merges = gemma_vocab_merges()
    tokenizer = Siglip2Tokenizer(vocab=vocab, merges=merges, model_max_length=64)
    config = Siglip2Config(
        text_config={"vocab_size": len(vocab), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 64, "projection_size": 128},
        vision_config={"hidden_size": 128, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "num_patches": 16, "patch_size": 16},
    )
    processor = Siglip2ImageProcessorPil(patch_size=16, max_num_patches=16)
    entry = _hf_family(ctx, Siglip2Model(config), processor, tokenizer, _siglip2_pixels, seed=2004)
    entry["note"] = ("model inputs: PIL bilinear squash of the first four PNGs to 64x64, mean/std 0.5, patchified in "
                     "(row, column, channel) order as Siglip2ImageProcessor does, mask all ones, spatial_shapes (4, 4); "
                     "preprocess.* is Siglip2ImageProcessor itself (aspect-preserving NaFlex grids) per image")
    return entry
