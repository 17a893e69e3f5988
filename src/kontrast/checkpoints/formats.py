"""Checkpoint formats: detection from a file or folder, reading to (OpenAI-named state dict, config), writing.

Formats read:
- ``kontrast``: ``kontrast_config.json`` + ``kontrast_model.safetensors`` (or one ``.safetensors`` file
  whose metadata holds the config under ``kontrast_config``);
- ``open_clip``: ``open_clip_config.json`` + ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``;
- ``hf``: Hugging Face ``CLIPModel`` folders (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``);
- ``openai_jit``: OpenAI's released TorchScript archives;
- ``state_dict``: OpenAI-style state dicts (``.pt``/``.bin``/``.pth``/``.safetensors``), possibly under a
  ``state_dict`` key and a ``module.`` prefix (open_clip training checkpoints).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .. import families
from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from ..record import ModelRecord, PreprocessConfig, TokenizerConfig, tokenizer_from_text_cfg
from . import convert
from .hf_config import hf_config_to_model_config, hf_preprocess_to_config

KONTRAST_CONFIG = "kontrast_config.json"
KONTRAST_WEIGHTS = "kontrast_model.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# Entries of OpenAI's TorchScript state dicts that are not parameters.
JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass
class Checkpoint:
    """What a reader returns: OpenAI-named tensors, what the files say about the model (architecture,
    preprocessing, tokenizer; ``None`` where they say nothing), the format and the path."""

    state_dict: dict[str, torch.Tensor]
    config: ModelConfig | None
    format: str
    path: Path
    preprocess: PreprocessConfig | None = None
    tokenizer: TokenizerConfig | None = None
    origin: str | None = None  # kontrast files: where the saved model had come from


def read_json_object(path: Path) -> dict[str, Any]:
    """A config file that must hold a JSON object; ``CheckpointError`` (one line) for anything else."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object ({{...}}) with the model config, found a "
                              f"{type(raw).__name__}")
    return raw


def _safetensors_metadata(p: Path) -> dict[str, str]:
    try:
        with safe_open(str(p), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{p}: not a readable .safetensors file ({str(exc).splitlines()[0]})") from None


def detect(path: str | os.PathLike) -> str:
    """Name of the format at ``path`` (file or folder); raises ``CheckpointError`` if none fits."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.is_dir():
        if (p / KONTRAST_CONFIG).is_file():
            return "kontrast"
        if (p / OPEN_CLIP_CONFIG).is_file() or any((p / w).is_file() for w in OPEN_CLIP_WEIGHTS):
            return "open_clip"
        if (p / "config.json").is_file() and any((p / w).is_file() for w in HF_WEIGHTS):
            return "hf"
        raise CheckpointError(
            f"{p}: no checkpoint found in this folder (expected {KONTRAST_CONFIG}, {OPEN_CLIP_CONFIG} + weights, "
            "or a Hugging Face config.json + model.safetensors)"
        )
    if p.suffix == ".safetensors":
        if p.name in OPEN_CLIP_WEIGHTS and (p.parent / OPEN_CLIP_CONFIG).is_file():
            return "open_clip"
        if p.name in HF_WEIGHTS and (p.parent / "config.json").is_file():
            return "hf"
        return "kontrast" if "kontrast_config" in _safetensors_metadata(p) else "state_dict"
    if p.name in OPEN_CLIP_WEIGHTS and (p.parent / OPEN_CLIP_CONFIG).is_file():
        return "open_clip"
    if p.name in HF_WEIGHTS and (p.parent / "config.json").is_file():
        return "hf"
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
        if any(n.endswith("/constants.pkl") or n.split("/", 1)[-1].startswith("code/") for n in names):
            return "openai_jit"
        return "state_dict"
    return "state_dict"  # legacy (non-zip) torch.save files


def read(path: str | os.PathLike) -> Checkpoint:
    """Read any supported checkpoint; the state dict comes back with OpenAI names."""
    p = Path(path)
    fmt = detect(p)
    reader = {"kontrast": _read_kontrast, "open_clip": _read_open_clip, "hf": _read_hf,
              "openai_jit": _read_jit, "state_dict": _read_state_dict}[fmt]
    return reader(p)


# ---- readers -------------------------------------------------------------------------------------------
def _read_kontrast(p: Path) -> Checkpoint:
    if p.is_dir():
        weights = p / KONTRAST_WEIGHTS
        source = p / KONTRAST_CONFIG
        config = read_json_object(source)
    else:
        weights, source = p, p
        try:
            config = json.loads(_safetensors_metadata(p)["kontrast_config"])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{p}: the kontrast_config in its metadata is not JSON ({exc})") from None
        if not isinstance(config, dict):
            raise CheckpointError(f"{p}: the kontrast_config in its metadata is not a JSON object")
    if not weights.is_file():
        raise CheckpointError(f"{p}: {KONTRAST_WEIGHTS} is missing")
    record = ModelRecord.from_dict(config, str(source))
    sd = _load_tensors(weights)
    origin = record.provenance.origin or record.provenance.source
    return Checkpoint(sd, record.arch, "kontrast", p, record.preprocess, record.tokenizer, origin)


def refuse_unsupported_family(path: str | os.PathLike) -> None:
    """One-line ``CheckpointError`` when the open_clip config at ``path`` (a folder or a file in it) names a model
    family kontrast does not implement (EVA, CoCa, MobileCLIP, ...): the file, the deciding key and the family."""
    p = Path(path)
    if p.is_file() and p.name not in OPEN_CLIP_WEIGHTS:
        return  # a weights file of another format: a config next to it does not describe it
    cfg_path = (p if p.is_dir() else p.parent) / OPEN_CLIP_CONFIG
    if not cfg_path.is_file():
        return
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path}: not readable JSON ({exc})") from exc
    family, evidence = families.family_evidence(raw if isinstance(raw, dict) else {})
    if not families.is_supported(family):
        raise CheckpointError(f"{cfg_path}: {families.unsupported_message(family, evidence)}")


def _read_open_clip(p: Path) -> Checkpoint:
    folder = p if p.is_dir() else p.parent
    cfg_path = folder / OPEN_CLIP_CONFIG
    config = preprocess = tokenizer = None
    refuse_unsupported_family(folder)
    if cfg_path.is_file():
        raw = read_json_object(cfg_path)
        unknown = set(raw) - {"model_cfg", "preprocess_cfg"}
        if unknown or "model_cfg" not in raw:
            key = min(unknown) if unknown else "model_cfg"
            raise ConfigError(f"{cfg_path}: expected model_cfg and preprocess_cfg, found key {key!r}")
        config = ModelConfig.from_dict(raw["model_cfg"], str(cfg_path))
        preprocess = PreprocessConfig.from_dict(raw.get("preprocess_cfg"), str(cfg_path))
        tokenizer = tokenizer_from_text_cfg(raw["model_cfg"].get("text_cfg") or {}, config, str(cfg_path))
    weights = p if p.is_file() else next((folder / w for w in OPEN_CLIP_WEIGHTS if (folder / w).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{folder}: no {' or '.join(OPEN_CLIP_WEIGHTS)} in this folder")
    sd = _strip(_load_tensors(weights))
    if config is None or config.text.kind == "clip":
        sd = convert.custom_text_to_openai(sd)  # open_clip CustomTextCLIP names
    return Checkpoint(sd, config, "open_clip", p, preprocess, tokenizer)


def _read_hf(p: Path) -> Checkpoint:
    folder = p if p.is_dir() else p.parent
    cfg_path = folder / "config.json"
    config = hf_config_to_model_config(read_json_object(cfg_path), str(cfg_path))
    weights = p if p.is_file() else next((folder / w for w in HF_WEIGHTS if (folder / w).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin in this folder")
    proc_path = folder / "preprocessor_config.json"
    preprocess = None
    if proc_path.is_file():
        preprocess = hf_preprocess_to_config(read_json_object(proc_path), config.vision.image_size, str(proc_path))
    _check_hf_clip_tokenizer(folder)
    sd = convert.hf_to_openai(_load_tensors(weights))
    return Checkpoint(sd, config, "hf", p, preprocess)


def _check_hf_clip_tokenizer(folder: Path) -> None:
    """A ``CLIPModel`` folder is read with kontrast's CLIP BPE tokenizer (open_clip's ids): refuse folders whose
    tokenizer files name another tokenizer."""
    tok_path = folder / "tokenizer_config.json"
    if tok_path.is_file():
        cls = read_json_object(tok_path).get("tokenizer_class")
        if cls not in (None, "CLIPTokenizer", "CLIPTokenizerFast"):
            raise ConfigError(f"{tok_path}: tokenizer_class={cls!r} is not supported for a CLIPModel folder "
                              "(kontrast reads it with the CLIP BPE tokenizer)")


def _read_jit(p: Path) -> Checkpoint:
    try:
        module = torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:
        raise CheckpointError(f"{p}: cannot read TorchScript archive ({type(exc).__name__}: {exc})".split("\n")[0]) from exc
    sd = {k: v.detach().clone() for k, v in module.state_dict().items() if k not in JIT_EXTRA_KEYS}
    return Checkpoint(_to_float32(sd), None, "openai_jit", p)


def _read_state_dict(p: Path) -> Checkpoint:
    config = preprocess = tokenizer = None
    if p.suffix == ".safetensors":
        sd = _load_tensors(p)
    else:
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(
                f"{p}: not a readable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from exc
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            if isinstance(obj.get("model_record"), dict):  # a kontrast training checkpoint
                record = ModelRecord.from_dict(obj["model_record"], f"{p} (model_record)")
                config, preprocess, tokenizer = record.arch, record.preprocess, record.tokenizer
            elif isinstance(obj.get("model_config"), dict):  # an older kontrast training checkpoint
                config = ModelConfig.from_dict(obj["model_config"], f"{p} (model_config)")
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"{p}: expected a dict of tensors (a state dict), found {type(obj).__name__}")
        sd = obj
    sd = _strip(sd)
    if any(k.startswith("vision_model.") for k in sd):  # a bare HF CLIPModel weights file
        sd = convert.hf_to_openai(sd)
    if config is None or config.text.kind == "clip":
        sd = convert.custom_text_to_openai(sd)  # open_clip CustomTextCLIP names
    return Checkpoint(_to_float32(sd), config, "state_dict", p, preprocess, tokenizer)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc


def _strip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DDP's ``module.`` prefix and non-parameter entries."""
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if k not in JIT_EXTRA_KEYS and not k.endswith("attn_mask")}


def _to_float32(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI's releases are partly float16; compute in float32 unless the caller asks otherwise."""
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


# ---- writers -------------------------------------------------------------------------------------------
def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def write_kontrast(sd: dict[str, torch.Tensor], config: dict[str, Any], folder: str | os.PathLike) -> Path:
    """kontrast format: ``kontrast_model.safetensors`` (config also in its metadata) + ``kontrast_config.json``;
    ``config`` is a ``ModelRecord.to_dict()``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2)
    _atomic(out / KONTRAST_WEIGHTS, lambda tmp: save_file(_contiguous(sd), str(tmp), metadata={"kontrast_config": text}))
    _atomic(out / KONTRAST_CONFIG, lambda tmp: tmp.write_text(text))
    return out


def write_open_clip(sd: dict[str, torch.Tensor], config: dict[str, Any], folder: str | os.PathLike,
                    preprocess: dict[str, Any] | None = None) -> Path:
    """open_clip hub layout: ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) + safetensors."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"model_cfg": config, "preprocess_cfg": preprocess or {}}, indent=2)
    _atomic(out / OPEN_CLIP_WEIGHTS[0], lambda tmp: save_file(_contiguous(sd), str(tmp)))
    _atomic(out / OPEN_CLIP_CONFIG, lambda tmp: tmp.write_text(text))
    return out


def write_hf(sd: dict[str, torch.Tensor], hf_config: dict[str, Any], folder: str | os.PathLike,
             preprocessor: dict[str, Any] | None = None) -> Path:
    """Hugging Face ``CLIPModel`` folder: ``config.json`` + ``model.safetensors`` (+ ``preprocessor_config.json``)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    _atomic(out / HF_WEIGHTS[0], lambda tmp: save_file(_contiguous(sd), str(tmp), metadata={"format": "pt"}))
    _atomic(out / "config.json", lambda tmp: tmp.write_text(json.dumps(hf_config, indent=2)))
    if preprocessor:
        _atomic(out / "preprocessor_config.json", lambda tmp: tmp.write_text(json.dumps(preprocessor, indent=2)))
    return out


def _atomic(dest: Path, write) -> None:
    """Write to a temporary sibling, then rename: a crash never leaves a half-written file."""
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
