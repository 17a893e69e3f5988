"""Hugging Face ``CLIPModel`` configs and ``CLIPImageProcessor`` configs <-> kontrast's record, strictly.

Reading (``hf_config_to_model_config``, ``hf_preprocess_to_config``): every key of ``config.json`` and
``preprocessor_config.json`` is either mapped, known to have no effect on what the model computes (the
generic ``PretrainedConfig`` attributes that older transformers wrote into every config, dropout rates,
initialiser scales, token ids the tokenizer owns), or refused with a ``ConfigError`` naming the key, the value
and the file. Text pooling follows transformers: ``eos_token_id`` 2 (configs written before transformers
PR #24773) means "argmax of the ids", any other value "first position of that id".

Writing (``model_config_to_hf``, ``preprocess_to_hf``) refuses, in one line, what a ``CLIPModel`` /
``CLIPImageProcessor`` cannot express instead of writing another model: ResNet towers, Hugging Face text
towers, a logit bias, bidirectional text attention, first/last-position or mean pooling, ``no_ln_pre``, the
``longest`` resize mode, padding with a non-zero fill. A squashing resize is expressible
(``size={"height", "width"}`` without a centre crop).
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig, TextConfig, VisionConfig
from ..errors import ConfigError
from ..record import PreprocessConfig

# PretrainedConfig attributes (transformers 4.x wrote all of them into every sub-config) and training-only
# settings: none changes what a CLIPModel computes at inference.
_HF_GENERIC = frozenset(["_name_or_path", "_commit_hash", "_attn_implementation", "_attn_implementation_autoset", "_attn_implementation_internal", "transformers_version", "architectures", "torch_dtype", "dtype", "use_bfloat16", "return_dict", "output_hidden_states", "output_attentions", "torchscript", "tf_legacy_loss", "pruned_heads", "tie_word_embeddings", "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "cross_attention_hidden_size", "add_cross_attention", "tie_encoder_decoder", "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "finetuning_task", "id2label", "label2id", "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id", "task_specific_params", "problem_type", "gradient_checkpointing", "use_cache", "initializer_range", "initializer_factor", "attention_dropout", "dropout", "projection_dim", "pad_token_id", "bos_token_id"])
_HF_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_ACT_TO_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
_LEGACY_ARGMAX_EOS = 2  # transformers: eos_token_id 2 means "pool at the argmax of the ids"
_TOWER_NAMES = {"resnet": "ResNet", "vit": "ViT", "convnext": "ConvNeXt", "efficientnet_lite": "EfficientNet-Lite"}


def _check_keys(d: dict[str, Any], known: set[str], where: str) -> None:
    for key, value in d.items():
        if key not in known and key not in _HF_GENERIC:
            raise ConfigError(f"{where}: unknown key {key}={value!r}; kontrast does not know what it changes "
                              "and refuses to guess")


def _square(value: Any, key: str, where: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ConfigError(f"{where}: {key}={value!r} is not supported (square only)")
        value = value[0]
    return int(value)


def _act(value: str, where: str) -> str:
    if value not in _HF_ACTS:
        raise ConfigError(f"{where}: hidden_act={value!r} is not supported ({', '.join(_HF_ACTS)})")
    return _HF_ACTS[value]


def hf_config_to_model_config(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """``CLIPConfig`` (config.json) -> ``ModelConfig``; ``ConfigError`` for what kontrast does not implement."""
    if hf.get("model_type") not in (None, "clip"):
        raise ConfigError(f"{source}: model_type={hf.get('model_type')!r} is not a CLIP model (model_type 'clip')")
    archs = hf.get("architectures") or ["CLIPModel"]
    if any(a not in ("CLIPModel",) for a in archs):
        raise ConfigError(f"{source}: architectures={archs!r} is not supported (CLIPModel)")
    _check_keys(hf, {"model_type", "architectures", "projection_dim", "logit_scale_init_value", "text_config",
                     "vision_config", "text_config_dict", "vision_config_dict"}, source)
    # transformers: the legacy *_config_dict entries take precedence over *_config
    t = {**(hf.get("text_config") or {}), **(hf.get("text_config_dict") or {})}
    v = {**(hf.get("vision_config") or {}), **(hf.get("vision_config_dict") or {})}
    tw, vw = f"{source}: text_config", f"{source}: vision_config"
    _check_keys(t, {"model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps", "eos_token_id"},
                tw)
    _check_keys(v, {"model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps"}, vw)
    for d, want, where in ((t, "clip_text_model", tw), (v, "clip_vision_model", vw)):
        if d.get("model_type", want) != want:
            raise ConfigError(f"{where}: model_type={d['model_type']!r} is not supported ({want})")
    if v.get("num_channels", 3) != 3:
        raise ConfigError(f"{vw}: num_channels={v['num_channels']!r} is not supported (3)")
    v_width, t_width = v.get("hidden_size", 768), t.get("hidden_size", 512)
    v_heads = v.get("num_attention_heads", 12)
    if v_width % v_heads:
        raise ConfigError(f"{vw}: hidden_size {v_width} is not divisible by num_attention_heads {v_heads}")
    vision = VisionConfig(
        kind="vit", image_size=_square(v.get("image_size", 224), "image_size", vw),
        layers=v.get("num_hidden_layers", 12), width=v_width,
        patch_size=_square(v.get("patch_size", 32), "patch_size", vw), head_width=v_width // v_heads,
        mlp_ratio=v.get("intermediate_size", 3072) / v_width, act=_act(v.get("hidden_act", "quick_gelu"), vw),
        ln_eps=float(v.get("layer_norm_eps", 1e-5)),
    )
    eos = t.get("eos_token_id", 49407)
    if isinstance(eos, list):
        raise ConfigError(f"{tw}: eos_token_id={eos!r} is not supported (one id)")
    text = TextConfig(
        kind="clip", context_length=t.get("max_position_embeddings", 77), vocab_size=t.get("vocab_size", 49408),
        width=t_width, heads=t.get("num_attention_heads", 8), layers=t.get("num_hidden_layers", 12),
        mlp_ratio=t.get("intermediate_size", 2048) / t_width, act=_act(t.get("hidden_act", "quick_gelu"), tw),
        ln_eps=float(t.get("layer_norm_eps", 1e-5)),
        pool_type="argmax" if eos == _LEGACY_ARGMAX_EOS else "eos", eos_id=None if eos == _LEGACY_ARGMAX_EOS else int(eos),
    )
    return ModelConfig(embed_dim=hf.get("projection_dim", 512), vision=vision, text=text,
                       init_logit_scale=hf.get("logit_scale_init_value", 2.6592))


def model_config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """``ModelConfig`` -> a ``CLIPConfig`` dict that ``transformers.CLIPModel.from_pretrained`` reads, or a
    ``ConfigError`` naming what a ``CLIPModel`` cannot express."""
    v, t = cfg.vision, cfg.text
    refusals = [
        (v.kind != "vit", f"a {_TOWER_NAMES.get(v.kind, v.kind)} image tower (CLIPModel has Vision Transformer towers only)"),
        (t.kind != "clip", "a Hugging Face text tower (use format 'open_clip' or kontrast.save)"),
        (cfg.init_logit_bias is not None, "a logit bias (SigLIP-style; CLIPModel has none)"),
        (v.pool_type != "tok", f"vision pool_type={v.pool_type!r} (CLIPModel pools the class token)"),
        (v.no_ln_pre, "no_ln_pre (CLIPModel always has pre_layrnorm)"),
        (t.no_causal_mask, "bidirectional text attention (CLIPModel's text tower is causal)"),
        (t.pool_type in ("first", "last"), f"text pool_type={t.pool_type!r} (CLIPModel reads an end-of-text id)"),
        (t.pool_type == "eos" and t.eos_id == _LEGACY_ARGMAX_EOS,
         "eos pooling on id 2 (transformers reads eos_token_id 2 as argmax pooling)"),
    ]
    for bad, what in refusals:
        if bad:
            raise ConfigError(f"cannot export as a Hugging Face CLIPModel: {what}")
    eos = t.eos_id if t.pool_type == "eos" else _LEGACY_ARGMAX_EOS
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": cfg.init_logit_scale,
        "initializer_factor": 1.0,
        "text_config": {
            "model_type": "clip_text_model", "vocab_size": t.vocab_size, "max_position_embeddings": t.context_length,
            "hidden_size": t.width, "num_attention_heads": t.heads, "num_hidden_layers": t.layers,
            "intermediate_size": int(t.width * t.mlp_ratio), "hidden_act": _ACT_TO_HF[t.act], "layer_norm_eps": t.ln_eps,
            "projection_dim": cfg.embed_dim, "bos_token_id": 49406, "eos_token_id": eos, "pad_token_id": 1,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "image_size": v.image_size, "patch_size": v.patch_size,
            "hidden_size": v.width, "num_attention_heads": v.heads, "num_hidden_layers": v.layers,
            "intermediate_size": int(v.width * v.mlp_ratio), "hidden_act": _ACT_TO_HF[v.act], "layer_norm_eps": v.ln_eps,
            "projection_dim": cfg.embed_dim, "num_channels": 3,
        },
    }


# ---- image processor ----------------------------------------------------------------------------------------
_PROCESSOR_TYPES = ("CLIPImageProcessor", "CLIPImageProcessorFast", "CLIPImageProcessorPil", "CLIPFeatureExtractor")
_PROCESSOR_KEYS = {"image_processor_type", "feature_extractor_type", "processor_class", "do_resize", "size",
                   "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor", "do_normalize",
                   "image_mean", "image_std", "do_convert_rgb", "default_to_square"}
_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def hf_preprocess_to_config(d: dict[str, Any], image_size: int, source: str = "preprocessor_config.json") -> PreprocessConfig:
    """A ``CLIPImageProcessor`` config -> ``PreprocessConfig`` for a model of ``image_size``."""
    for key, value in d.items():
        if key not in _PROCESSOR_KEYS:
            raise ConfigError(f"{source}: unknown key {key}={value!r}; kontrast refuses to guess")
    kind = d.get("image_processor_type") or d.get("feature_extractor_type") or "CLIPImageProcessor"
    if kind not in _PROCESSOR_TYPES:
        raise ConfigError(f"{source}: image_processor_type={kind!r} is not supported ({', '.join(_PROCESSOR_TYPES)})")
    for key, want in (("do_resize", True), ("do_rescale", True), ("default_to_square", False)):
        if key in d and d[key] != want:
            raise ConfigError(f"{source}: {key}={d[key]!r} is not supported ({want})")
    if abs(float(d.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-12:
        raise ConfigError(f"{source}: rescale_factor={d['rescale_factor']!r} is not supported (1/255)")
    resample = d.get("resample", 3)
    if resample not in _RESAMPLE:
        raise ConfigError(f"{source}: resample={resample!r} is not supported (2 bilinear, 3 bicubic)")
    size = d.get("size", {"shortest_edge": 224})
    size = {"shortest_edge": size} if isinstance(size, int) else dict(size)
    if set(size) == {"shortest_edge"}:
        mode, target = "shortest", size["shortest_edge"]
    elif set(size) == {"height", "width"} and size["height"] == size["width"]:
        mode, target = "squash", size["height"]
    else:
        raise ConfigError(f"{source}: size={size!r} is not supported (shortest_edge, or equal height and width)")
    crop = bool(d.get("do_center_crop", True))
    if crop:
        crop_size = d.get("crop_size", {"height": 224, "width": 224})
        crop_size = {"height": crop_size, "width": crop_size} if isinstance(crop_size, int) else crop_size
        if crop_size.get("height") != image_size or crop_size.get("width") != image_size:
            raise ConfigError(f"{source}: crop_size={crop_size!r} differs from the model's image size {image_size}")
    elif mode != "squash" or target != image_size:
        raise ConfigError(f"{source}: do_center_crop=false with size={size!r} does not give the model's "
                          f"{image_size}x{image_size} input")
    normalize = d.get("do_normalize", True)
    mean = d.get("image_mean", [0.48145466, 0.4578275, 0.40821073]) if normalize else (0.0, 0.0, 0.0)
    std = d.get("image_std", [0.26862954, 0.26130258, 0.27577711]) if normalize else (1.0, 1.0, 1.0)
    return PreprocessConfig(mean=tuple(mean), std=tuple(std), interpolation=_RESAMPLE[resample], resize_mode=mode,
                            resize_size=None if target == image_size else int(target), crop=crop).check(source)


def preprocess_to_hf(pre: PreprocessConfig, image_size: int) -> dict[str, Any]:
    """``PreprocessConfig`` -> ``CLIPImageProcessor`` config, or a ``ConfigError`` where it cannot say the same."""
    if pre.resize_mode == "longest":
        raise ConfigError("cannot export as a Hugging Face CLIPImageProcessor: resize_mode 'longest' (it has no "
                          "resize-longest-side-and-pad); use format 'open_clip' or kontrast.save")
    target = pre.resize_size or image_size
    if pre.fill and pre.crop and target < image_size:
        raise ConfigError(f"cannot export as a Hugging Face CLIPImageProcessor: padding with fill {pre.fill} "
                          "(it pads with 0)")
    size = {"shortest_edge": target} if pre.resize_mode == "shortest" else {"height": target, "width": target}
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": size,
            "resample": {v: k for k, v in _RESAMPLE.items()}[pre.interpolation], "do_center_crop": bool(pre.crop),
            "crop_size": {"height": image_size, "width": image_size}, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": list(pre.mean), "image_std": list(pre.std), "do_convert_rgb": True}
