"""Load and save SigLIP / SigLIP 2 folders (open_clip and Hugging Face layouts) as ``(model, preprocess, tokenizer)``.

Preprocessing comes from the folder: open_clip's ``preprocess_cfg`` (mean, std, interpolation, resize mode; RGB
conversion after resizing) or Hugging Face's ``preprocessor_config.json`` (``image_mean``/``image_std``,
``resample`` 2 = bilinear / 3 = bicubic, squash resize to ``size``, RGB conversion first onto white). The tokenizer
comes from the folder's own ``tokenizer.json`` or ``spiece.model`` (``checkpoint_tokenizers``). Saving writes the
same layouts back, tokenizer files included, so a save -> load round trip gives the same model, preprocessing and
token ids.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..checkpoint_tokenizers import TOKENIZER_FILES
from ..errors import CheckpointError
from ..models.siglip import SigLIP, SigLIPConfig
from ..preprocess import Preprocess
from ..record import (
    ModelRecord,
    PreprocessConfig,
    Provenance,
    TokenizerConfig,
    build_preprocess,
    build_tokenizer,
)
from . import siglip_convert, siglip_formats
from .formats import _atomic, _contiguous, read_json_object

_HF_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def detect(path: str | os.PathLike) -> str | None:
    """``"open_clip"`` / ``"hf"`` for a SigLIP folder (or a weights file inside one), else ``None``."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    oc = folder / "open_clip_config.json"
    if oc.is_file():
        raw = _json(oc)
        return "open_clip" if siglip_formats.is_siglip_open_clip(raw.get("model_cfg", raw)) else None
    hf = folder / "config.json"
    if hf.is_file() and siglip_formats.is_siglip_hf(_json(hf)):
        return "hf"
    return None


def _json(path: Path) -> dict[str, Any]:
    return read_json_object(path)  # a JSON object, else one line naming the file


def _weights(folder: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for name in names:
        path = folder / name
        if path.is_file():
            if path.suffix == ".safetensors":
                return load_file(str(path))
            return torch.load(str(path), map_location="cpu", weights_only=True)
    raise CheckpointError(f"{folder}: no weights file ({' or '.join(names)})")


def read(path: str | os.PathLike) -> tuple[SigLIPConfig, dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(config, kontrast-named weights, preprocess settings, tokenizer settings)`` of a SigLIP folder."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    kind = detect(folder)
    if kind == "open_clip":
        raw = _json(folder / "open_clip_config.json")
        sd = _weights(folder, ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))
        config, ksd = siglip_formats.read_open_clip(raw, sd, folder)
        pre = dict(raw.get("preprocess_cfg") or {})
        text_cfg = (raw.get("model_cfg", raw).get("text_cfg") or {})
        clean = (text_cfg.get("tokenizer_kwargs") or {}).get("clean", "whitespace")
        preprocess = {"mean": pre.get("mean", [0.5] * 3), "std": pre.get("std", [0.5] * 3),
                      "interpolation": pre.get("interpolation", "bicubic"), "resize_mode": pre.get("resize_mode", "squash"),
                      "rgb_first": False}
        return config, ksd, preprocess, {"folder": str(folder), "clean": clean}
    if kind == "hf":
        raw = _json(folder / "config.json")
        sd = _weights(folder, ("model.safetensors", "pytorch_model.bin"))
        config, ksd = siglip_formats.read_hf(raw, sd, folder)
        proc = _json(folder / "preprocessor_config.json") if (folder / "preprocessor_config.json").is_file() else {}
        resample = int(proc.get("resample", 2 if config.naflex else 3))
        if resample not in _HF_RESAMPLE:
            raise CheckpointError(f"{folder / 'preprocessor_config.json'}: resample = {resample} is not supported "
                                  "(2 bilinear, 3 bicubic)")
        preprocess = {"mean": proc.get("image_mean", [0.5] * 3), "std": proc.get("image_std", [0.5] * 3),
                      "interpolation": _HF_RESAMPLE[resample], "resize_mode": "squash", "rgb_first": True}
        return config, ksd, preprocess, {"folder": str(folder), "clean": None}
    raise CheckpointError(f"{path}: not a SigLIP folder (open_clip_config.json naming a timm SigLIP trunk, or a "
                          "config.json with model_type siglip / siglip2)")


def tokenizer_config(folder: Path, context_length: int, clean: str | None) -> TokenizerConfig:
    """The record's tokenizer for a folder that carries its own: ``tokenizer.json`` first, else ``spiece.model``."""
    if (folder / "tokenizer.json").is_file():
        return TokenizerConfig("hf_tokenizer_json", context_length, None, clean, str(folder))
    if (folder / "spiece.model").is_file():
        return TokenizerConfig("sentencepiece", context_length, None, None, str(folder))
    raise CheckpointError(f"{folder}: no tokenizer.json or spiece.model; this model's tokenizer travels with its "
                          "checkpoint (copy those files from the model's repository into the folder)")


def load(path: str | os.PathLike) -> tuple[SigLIP, Preprocess, Any]:
    """``(model, preprocess, tokenizer)`` of a SigLIP folder; the weights are loaded strictly. The model carries its
    record (``model.record``): preprocessing and tokenizer as the folder says."""
    config, ksd, pre, tok = read(path)
    record = ModelRecord(config, PreprocessConfig(mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                                                  interpolation=pre["interpolation"], resize_mode=pre["resize_mode"],
                                                  rgb_first=pre["rgb_first"]).check(str(path)),
                         tokenizer_config(Path(tok["folder"]), config.context_length, tok["clean"]),
                         Provenance(format=f"siglip_{detect(path)}", source=str(path)))
    model = SigLIP(record)
    own = model.state_dict()
    missing = sorted(set(own) - set(ksd))
    unexpected = sorted(set(ksd) - set(own))
    shapes = [f"{k} {tuple(ksd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in ksd and ksd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{path}: weights do not fit the SigLIP config: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}, wrong shape {shapes[:3]}")
    model.load_state_dict({k: v.float() for k, v in ksd.items()})
    model.eval()
    model.checkpoint_path = str(path)
    return model, build_preprocess(record), build_tokenizer(record)


def save(model: SigLIP, folder: str | os.PathLike, format: str = "open_clip") -> Path:
    """Write ``model`` as an open_clip folder or a Hugging Face ``SiglipModel``/``Siglip2Model`` folder, with its
    preprocessing settings and the tokenizer files of the folder it was loaded from."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    config: SigLIPConfig = model.config
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    record = model.record
    pre = record.preprocess.to_dict() | {"rgb_first": record.preprocess.rgb_first}
    tok = {"folder": record.tokenizer.path, "clean": record.tokenizer.clean}
    if format == "open_clip":
        model_cfg = siglip_formats.write_open_clip_config(config)
        model_cfg["text_cfg"]["hf_tokenizer_name"] = "local"
        model_cfg["text_cfg"]["tokenizer_kwargs"] = {"clean": tok.get("clean") or "whitespace"}
        pre_cfg = {k: pre[k] for k in ("mean", "std", "interpolation", "resize_mode")}
        weights = siglip_convert.kontrast_to_open_clip(sd)
        _atomic(out / "open_clip_model.safetensors", lambda tmp: save_file(_contiguous(weights), str(tmp)))
        text = json.dumps({"model_cfg": model_cfg, "preprocess_cfg": pre_cfg}, indent=2)
        _atomic(out / "open_clip_config.json", lambda tmp: tmp.write_text(text))
    elif format == "hf":
        weights = siglip_convert.kontrast_to_hf(sd, naflex=config.naflex)
        _atomic(out / "model.safetensors", lambda tmp: save_file(_contiguous(weights), str(tmp), metadata={"format": "pt"}))
        text = json.dumps(siglip_formats.write_hf_config(config), indent=2)
        _atomic(out / "config.json", lambda tmp: tmp.write_text(text))
        resample = {v: k for k, v in _HF_RESAMPLE.items()}[pre["interpolation"]]
        if config.naflex:
            proc = {"image_processor_type": "Siglip2ImageProcessor", "patch_size": config.patch_size,
                    "max_num_patches": (config.image_size // config.patch_size) ** 2}
        else:
            proc = {"image_processor_type": "SiglipImageProcessor", "size": {"height": config.image_size,
                                                                              "width": config.image_size}}
        proc.update({"do_resize": True, "resample": resample, "do_rescale": True, "rescale_factor": 1 / 255,
                     "do_normalize": True, "image_mean": list(pre["mean"]), "image_std": list(pre["std"])})
        ptext = json.dumps(proc, indent=2)
        _atomic(out / "preprocessor_config.json", lambda tmp: tmp.write_text(ptext))
    else:
        raise CheckpointError(f"SigLIP models are written as format 'open_clip' or 'hf', not {format!r}")
    source = Path(tok["folder"]) if tok.get("folder") else None
    if source is not None and source.resolve() != out.resolve():
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, out / name)
    return out
