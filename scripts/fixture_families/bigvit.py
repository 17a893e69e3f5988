"""Reference fixtures for the big plain ViTs (head widths 80 / 88 / 104, odd MLP ratios) and ConvNeXt towers.

Families:
- ``vit_hw80_open_clip``, ``vit_hw88_open_clip``, ``vit_hw104_open_clip``: open_clip ``local-dir`` folders of plain
  ViT CLIPs whose image towers have ViT-H-14's head width 80 (+ QuickGELU and DFN's squash preprocessing),
  ViT-g-14's 88 (MLP ratio 4.3637) and ViT-bigG-14's 104 (MLP ratio 4.9231). Widths are chosen so that the 64-wide
  head rule gives another head count (320 / 80 = 4 heads, not 5; 264 / 88 = 3, not 4; 312 / 104 = 3, not 4).
  Weights are stored in float16 (as many released checkpoints are), computed in float32.
- ``convnext_open_clip``: open_clip ``TimmModel`` tower with a tiny timm ConvNeXt trunk registered here
  (``convnext_kxtest``: depths 1-1-2-1, dims 16-24-32-40) and the ``linear`` head; ``convnext_mlp_open_clip``: the
  same trunk shape with the ``mlp`` head and ``timm_proj_bias``.
- ``open_clip_architectures``: for every plain ViT / ResNet / ConvNeXt architecture open_clip 3.3 has a config for,
  the full-size model built on the meta device: parameter count, sha256 of its state-dict layout, image-tower
  heads and MLP width; timm's facts for the ConvNeXt trunks; and open_clip's pretrained list with each pair's
  hub repository, QuickGELU flag and preprocessing.

The text towers use a 1000-id vocabulary to keep the files small: ``tokens`` are open_clip's tokenizer ids of the
shared texts with ``<start_of_text>`` -> 998, ``<end_of_text>`` -> 999 (still the largest id: argmax pooling) and
every other id taken modulo 997 (padding stays 0).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from .common import FamilyContext, family, import_open_clip, max_abs, reinit_, save_tensors

N_PIXEL_IMAGES = 4
LOGIT_SCALE = 3.4011974334716797  # ln(30)
SMALL_VOCAB = 1000
PLAIN_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}


def small_tokens(open_clip, texts: list[str]) -> torch.Tensor:
    """open_clip's CLIP token ids mapped into a 1000-id vocabulary (see the module docstring)."""
    ids = open_clip.get_tokenizer("ViT-B-32")(texts)
    small = ids % 997
    small[ids == 49406] = 998
    small[ids == 49407] = 999
    small[ids == 0] = 0
    return small


def _text_cfg() -> dict[str, Any]:
    return {"context_length": 77, "vocab_size": SMALL_VOCAB, "width": 32, "heads": 2, "layers": 1}


def _run_open_clip_folder(ctx: FamilyContext, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any], seed: int,
                          dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Write an open_clip local-dir folder (weights in ``dtype``), load it the real way, record what it computes."""
    open_clip = import_open_clip()
    (ctx.out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2) + "\n")
    built = open_clip.create_model(f"local-dir:{ctx.out}", load_weights=False)
    reinit_(built, seed)
    with torch.no_grad():
        built.logit_scale.fill_(LOGIT_SCALE)
    save_tensors(ctx.out / "open_clip_model.safetensors", {k: v.to(dtype) if v.is_floating_point() else v
                                                           for k, v in built.state_dict().items()})
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{ctx.out}")
    model.eval()
    pre = {f"preprocess.{name}": preprocess(img).float() for name, img in ctx.images().items()}
    pixels = torch.stack([pre[f"preprocess.{n}"] for n in ctx.image_names[:N_PIXEL_IMAGES]])
    tokens = small_tokens(open_clip, ctx.texts)
    with torch.no_grad():
        img = model.encode_image(pixels)
        txt = model.encode_text(tokens)
        logits, _ = model.get_logits(pixels, tokens)
        scale = model.logit_scale.exp()
    expected = {"tokens": tokens, "pixels": pixels, **pre, "image_features": img, "text_features": txt,
                "logit_scale": scale.reshape(()), "logits_per_image": logits}
    save_tensors(ctx.out / "expected.safetensors", expected)
    mine = scale * torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    return {
        "layout": "open_clip",
        "reference": {
            "model": "open_clip.create_model_and_transforms('local-dir:<folder>') -> encode_image / encode_text / "
                     "get_logits",
            "tokens": "open_clip.get_tokenizer('ViT-B-32')(texts) mapped into 1000 ids (see bigvit.py)",
            "preprocess": "the eval transform returned by create_model_and_transforms (from preprocess_cfg)",
        },
        "texts": ctx.texts,
        "images_for_pixels": ctx.image_names[:N_PIXEL_IMAGES],
        "weights_dtype": str(dtype),
        "cross_checks": {"logits vs exp(logit_scale)*cos": max_abs(mine, logits)},
    }


def _vit_family(ctx: FamilyContext, width: int, head_width: int, mlp_ratio: float, quick_gelu: bool,
                preprocess_cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    model_cfg: dict[str, Any] = {
        "embed_dim": 48,
        "vision_cfg": {"image_size": 42, "layers": 1, "width": width, "head_width": head_width, "patch_size": 14},
        "text_cfg": _text_cfg(),
    }
    if mlp_ratio != 4.0:
        model_cfg["vision_cfg"]["mlp_ratio"] = mlp_ratio
    if quick_gelu:
        model_cfg["quick_gelu"] = True
    entry = _run_open_clip_folder(ctx, model_cfg, preprocess_cfg, seed, dtype=torch.float16)
    open_clip = import_open_clip()
    model = open_clip.create_model(f"local-dir:{ctx.out}", load_weights=False)
    block = model.visual.transformer.resblocks[0]
    entry["image_tower"] = {"heads": block.attn.num_heads, "mlp_hidden": block.mlp.c_fc.out_features,
                            "heads_if_64_wide": width // 64}
    return entry


OPENAI_PRE = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
              "interpolation": "bicubic", "resize_mode": "shortest"}


@family("vit_hw80_open_clip")
def make_vit_hw80(ctx: FamilyContext) -> dict[str, Any]:
    return _vit_family(ctx, 320, 80, 4.0, True, {**OPENAI_PRE, "resize_mode": "squash"}, seed=3001)


@family("vit_hw88_open_clip")
def make_vit_hw88(ctx: FamilyContext) -> dict[str, Any]:
    return _vit_family(ctx, 264, 88, 4.3637, False, OPENAI_PRE, seed=3002)


@family("vit_hw104_open_clip")
def make_vit_hw104(ctx: FamilyContext) -> dict[str, Any]:
    return _vit_family(ctx, 312, 104, 4.9231, False, OPENAI_PRE, seed=3003)


# ---- ConvNeXt ------------------------------------------------------------------------------------------
def _register_timm_convnext() -> None:
    """Register the tiny ConvNeXt trunk name (once); the real names are only described, never built here."""
    import timm
    from timm.models import register_model
    from timm.models.convnext import ConvNeXt

    if timm.list_models("convnext_kxtest"):
        return

    def convnext_kxtest(pretrained: bool = False, **kwargs):
        args = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
        model = ConvNeXt(depths=(1, 1, 2, 1), dims=(16, 24, 32, 40), **args)
        model.default_cfg = model.pretrained_cfg = {"architecture": "convnext_kxtest"}
        return model

    register_model(convnext_kxtest)


def _convnext_family(ctx: FamilyContext, proj: str, proj_bias: bool, seed: int) -> dict[str, Any]:
    _register_timm_convnext()
    vision = {"timm_model_name": "convnext_kxtest", "timm_model_pretrained": False, "timm_pool": "",
              "timm_proj": proj, "timm_drop": 0.0, "timm_drop_path": 0.1, "image_size": 64}
    if proj_bias:
        vision["timm_proj_bias"] = True
    model_cfg = {"embed_dim": 48, "vision_cfg": vision, "text_cfg": _text_cfg()}
    entry = _run_open_clip_folder(ctx, model_cfg, OPENAI_PRE, seed)
    open_clip = import_open_clip()
    model = open_clip.create_model(f"local-dir:{ctx.out}")
    model.eval()
    tower = model.visual
    from safetensors.torch import load_file

    expected = load_file(str(ctx.out / "expected.safetensors"))
    with torch.no_grad():
        maps = [tower.trunk.stem(expected["pixels"])]
        for stage in tower.trunk.stages:
            maps.append(stage(maps[-1]))
        pooled = tower.trunk(expected["pixels"])  # timm trunk output: pooled + head norm
    for i, m in enumerate(maps):
        expected[f"feature_maps.{i}"] = m
    expected["trunk_pooled"] = pooled
    save_tensors(ctx.out / "expected.safetensors", expected)
    entry["reference"]["feature_maps"] = "model.visual.trunk.stem, then each of model.visual.trunk.stages"
    entry["reference"]["trunk_pooled"] = "model.visual.trunk(pixels): global average pool + head.norm"
    entry["trunk"] = {"depths": [1, 1, 2, 1], "dims": [16, 24, 32, 40], "eps": tower.trunk.stem[1].eps,
                      "timm_class": type(tower.trunk).__name__}
    return entry


@family("convnext_open_clip")
def make_convnext_open_clip(ctx: FamilyContext) -> dict[str, Any]:
    return _convnext_family(ctx, "linear", False, seed=3101)


@family("convnext_mlp_open_clip")
def make_convnext_mlp_open_clip(ctx: FamilyContext) -> dict[str, Any]:
    return _convnext_family(ctx, "mlp", True, seed=3102)


# ---- real-size facts -------------------------------------------------------------------------------------
def shape_digest(sd: dict[str, torch.Tensor]) -> str:
    """sha256 of the sorted ``key:shape`` lines of a state dict (kontrast's tests compute the same)."""
    lines = "".join(f"{k}:{tuple(v.shape)}\n" for k, v in sorted(sd.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def _is_plain(cfg: dict[str, Any]) -> bool:
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if set(cfg) - PLAIN_KEYS:
        return False
    if vision.get("timm_model_name"):
        return str(vision["timm_model_name"]).startswith("convnext_")
    plain_v = {"image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio"}
    plain_t = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
    return not (set(vision) - plain_v) and not (set(text) - plain_t)


def _timm_convnext_facts(name: str) -> dict[str, Any]:
    import timm

    with torch.device("meta"):
        trunk = timm.create_model(name, pretrained=False, num_classes=0)
    block = trunk.stages[0].blocks[0]
    return {
        "depths": [len(s.blocks) for s in trunk.stages],
        "dims": [s.blocks[0].conv_dw.out_channels for s in trunk.stages],
        "kernel_size": block.conv_dw.kernel_size[0],
        "mlp_hidden_0": block.mlp.fc1.out_features,
        "eps": trunk.stem[1].eps,
        "block_norm_eps": block.norm.eps,
        "head_norm_eps": trunk.head.norm.eps,
        "conv_mlp": block.use_conv_mlp,
        "layer_scale": block.gamma is not None,
        "stem": [type(m).__name__ for m in trunk.stem],
    }


@family("open_clip_architectures")
def make_open_clip_architectures(ctx: FamilyContext) -> dict[str, Any]:
    open_clip = import_open_clip()
    archs: dict[str, Any] = {}
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name)
        if not _is_plain(cfg):
            continue
        model = open_clip.create_model(name, device="meta")
        sd = model.state_dict()
        row: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters()), "tensors": len(sd),
                               "layout_sha256": shape_digest(sd), "quick_gelu": bool(cfg.get("quick_gelu", False)),
                               "image_size": cfg["vision_cfg"].get("image_size")}
        blocks = getattr(getattr(model.visual, "transformer", None), "resblocks", None)
        if blocks is not None:
            row["image_heads"] = blocks[0].attn.num_heads
            row["image_mlp_hidden"] = blocks[0].mlp.c_fc.out_features
        trunk_name = cfg["vision_cfg"].get("timm_model_name")
        if trunk_name:
            row["timm_model_name"] = trunk_name
            row["timm_proj"] = cfg["vision_cfg"].get("timm_proj")
        archs[name] = row
        del model
    trunks = sorted({r["timm_model_name"] for r in archs.values() if "timm_model_name" in r})
    pretrained = []
    for arch, tag in open_clip.list_pretrained():
        p = open_clip.get_pretrained_cfg(arch, tag)
        pretrained.append({"architecture": arch, "tag": tag, "hf_hub": p.get("hf_hub", ""),
                           "quick_gelu": bool(p.get("quick_gelu", False)), "mean": p.get("mean"), "std": p.get("std"),
                           "interpolation": p.get("interpolation"), "resize_mode": p.get("resize_mode")})
    table = {"architectures": archs, "timm_convnext": {n: _timm_convnext_facts(n) for n in trunks},
             "pretrained": pretrained}
    (ctx.out / "open_clip_architectures.json").write_text(json.dumps(table, indent=1) + "\n")
    return {"layout": "json", "architectures": len(archs), "pretrained_pairs": len(pretrained),
            "reference": {"architectures": "open_clip.create_model(name, device='meta') for every plain ViT / "
                                           "ResNet / ConvNeXt config of open_clip.list_models()",
                          "timm_convnext": "timm.create_model(name, num_classes=0) on the meta device",
                          "pretrained": "open_clip.list_pretrained() + get_pretrained_cfg(arch, tag)"}}
