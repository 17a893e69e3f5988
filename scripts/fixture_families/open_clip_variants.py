"""open_clip config keys that change the computation without changing shapes, and open_clip's preprocessing modes.

``oc_preprocess``: open_clip 3.3.0 ``image_transform(..., is_train=False)`` outputs for resize modes, interpolations,
fill colours and normalisations other than OpenAI's default, on the shared PNGs (RGB, RGBA, L, P).

``oc_variant_{a,b,c}``: tiny random open_clip models whose configs use ``pool_type``, ``no_causal_mask``,
``final_ln_after_pool``, ``no_ln_pre``, ``norm_kwargs.eps``, ``act_kwargs``, ``quick_gelu``, ``custom_text``
(CustomTextCLIP weight names), ``patch_dropout``; saved in open_clip's hub layout, with open_clip's features.
"""

from __future__ import annotations

import copy
import json

import torch

from .common import FamilyContext, family, import_open_clip, max_abs, reinit_, save_tensors

PRE_SIZE = 48
# name -> open_clip image_transform arguments
PRE_MODES = {
    "shortest_bilinear_half": {"resize_mode": "shortest", "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3},
    "squash_bicubic": {"resize_mode": "squash", "interpolation": "bicubic"},
    "squash_bilinear_half": {"resize_mode": "squash", "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3},
    "longest_bicubic": {"resize_mode": "longest", "interpolation": "bicubic"},
    "longest_bilinear_fill255": {"resize_mode": "longest", "interpolation": "bilinear", "fill_color": 255},
    "longest_bicubic_fill128_half": {"resize_mode": "longest", "interpolation": "bicubic", "fill_color": 128,
                                         "mean": (0.5,) * 3, "std": (0.5,) * 3},
}


@family("oc_preprocess")
def make_oc_preprocess(ctx: FamilyContext) -> dict:
    open_clip = import_open_clip()
    images = ctx.images()
    out = {}
    for mode, kwargs in PRE_MODES.items():
        transform = open_clip.image_transform(PRE_SIZE, is_train=False, **kwargs)
        for name, img in images.items():
            out[f"{mode}.{name}"] = transform(img)
    save_tensors(ctx.out / "expected.safetensors", out)
    modes = {m: {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()} for m, kw in PRE_MODES.items()}
    return {"size": PRE_SIZE, "modes": modes, "images": ctx.image_names,
            "reference": "open_clip.image_transform(size, is_train=False, **mode)(PIL.Image.open(png))"}


VOCAB, CONTEXT, EOT = 1000, 16, 999
VARIANTS = {
    "oc_variant_a": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32,
                       "pool_type": "avg", "norm_kwargs": {"eps": 1e-6}, "act_kwargs": {"approximate": "tanh"}},
        "text_cfg": {"context_length": CONTEXT, "vocab_size": VOCAB, "width": 32, "heads": 2, "layers": 2,
                     "pool_type": "last", "no_causal_mask": True, "norm_kwargs": {"eps": 1e-6},
                     "act_kwargs": {"approximate": "tanh"}},
    },
    "oc_variant_b": {
        "embed_dim": 32, "quick_gelu": True, "custom_text": True,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16,
                       "pool_type": "avg", "final_ln_after_pool": True, "no_ln_pre": True},
        "text_cfg": {"context_length": CONTEXT, "vocab_size": VOCAB, "width": 32, "heads": 4, "layers": 2,
                     "pool_type": "eos", "eos_id": 2},
    },
    "oc_variant_c": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "final_ln_after_pool": True,
                       "patch_dropout": 0.5},
        "text_cfg": {"context_length": CONTEXT, "vocab_size": VOCAB, "width": 32, "heads": 2, "layers": 2,
                     "pool_type": "first", "final_ln_after_pool": True},
    },
}


def _tokens() -> torch.Tensor:
    """Ids [5, CONTEXT]: random words, an end-of-text id (999, the largest) and an ``eos_id`` 2 at varying places,
    zero padding after it (so argmax, first eos, first and last positions all differ)."""
    gen = torch.Generator().manual_seed(7)
    ids = torch.zeros(5, CONTEXT, dtype=torch.long)
    for row, end in enumerate((3, 6, 9, 15, 1)):
        ids[row, 0] = 998
        ids[row, 1:end] = torch.randint(3, 990, (end - 1,), generator=gen)
        ids[row, end] = EOT
        ids[row, min(end + 1, CONTEXT - 1) if row % 2 else max(end - 1, 1)] = 2
    return ids


def _make_variant(ctx: FamilyContext, name: str, seed: int) -> dict:
    open_clip = import_open_clip()
    cfg = copy.deepcopy(VARIANTS[name])
    build = {k: v for k, v in cfg.items() if k != "custom_text"}
    klass = open_clip.CustomTextCLIP if cfg.get("custom_text") else open_clip.CLIP
    model = klass(**copy.deepcopy(build)).eval()
    reinit_(model, seed)
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    preprocess_cfg = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "resize_mode": "squash"}
    (ctx.out / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess_cfg},
                                                              indent=2))
    save_tensors(ctx.out / "open_clip_model.safetensors", model.state_dict())
    reloaded = open_clip.create_model(f"local-dir:{ctx.out}", device="cpu").eval()
    gen = torch.Generator().manual_seed(seed + 1)
    pixels = torch.randn(3, 3, 32, 32, generator=gen)
    tokens = _tokens()
    with torch.no_grad():
        img, txt = reloaded.encode_image(pixels), reloaded.encode_text(tokens)
        img0, txt0 = model.encode_image(pixels), model.encode_text(tokens)
    save_tensors(ctx.out / "expected.safetensors", {"pixels": pixels, "tokens": tokens, "image_features": img,
                                                    "text_features": txt, "logit_scale": reloaded.logit_scale.exp()})
    return {"model_cfg": cfg, "class": klass.__name__,
            "reference": "open_clip.create_model('local-dir:<folder>'); encode_image(pixels), encode_text(tokens)",
            "cross_checks": {"reloaded vs built (max abs)": max(max_abs(img, img0), max_abs(txt, txt0))}}


@family("oc_variant_a")
def make_oc_variant_a(ctx: FamilyContext) -> dict:
    return _make_variant(ctx, "oc_variant_a", 2101)


@family("oc_variant_b")
def make_oc_variant_b(ctx: FamilyContext) -> dict:
    return _make_variant(ctx, "oc_variant_b", 2102)


@family("oc_variant_c")
def make_oc_variant_c(ctx: FamilyContext) -> dict:
    return _make_variant(ctx, "oc_variant_c", 2103)
