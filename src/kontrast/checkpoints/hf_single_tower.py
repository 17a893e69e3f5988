"""Hugging Face one-tower CLIP folders: ``CLIPVisionModelWithProjection`` and ``CLIPTextModelWithProjection``.

Their ``config.json`` is the tower's own config (``model_type`` ``clip_vision_model`` / ``clip_text_model``, with
``projection_dim``) and their weights are ``CLIPModel``'s keys of that tower (``vision_model.*`` +
``visual_projection.weight``, or ``text_model.*`` + ``text_projection.weight``). Reading goes through the same
strict ``CLIPConfig`` reader and key tables as ``CLIPModel`` folders (every key understood or refused in one line);
writing writes the same layout back (plus ``preprocessor_config.json`` for an image tower), so a save -> load round
trip gives the same model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from ..models.single_tower import TOWER_CLASSES, TowerConfig, tower_record
from ..record import PreprocessConfig, Provenance
from . import convert
from .formats import HF_WEIGHTS, _check_hf_clip_tokenizer, _load_tensors, read_json_object, write_hf
from .hf_config import (
    hf_config_to_model_config,
    hf_preprocess_to_config,
    model_config_to_hf,
    preprocess_to_hf,
)

MODEL_TYPES = {"clip_vision_model": "vision", "clip_text_model": "text"}
_SECTIONS = {"vision": "vision_config", "text": "text_config"}
# Classes of the same config without a projection: another model (features of the tower's width), refused by name.
_NO_PROJECTION = {"CLIPVisionModel": "vision", "CLIPTextModel": "text"}


def _folder(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p if p.is_dir() else p.parent


def detect(path: str | os.PathLike) -> str | None:
    """``"vision"`` / ``"text"`` for a one-tower CLIP folder (or a weights file in one), else ``None``."""
    cfg = _folder(path) / "config.json"
    if not cfg.is_file() or (Path(path).is_file() and Path(path).name not in HF_WEIGHTS):
        return None
    return MODEL_TYPES.get(read_json_object(cfg).get("model_type"))


def read(path: str | os.PathLike):
    """``(record, OpenAI-named weights)`` of a one-tower folder (``kontrast.load`` builds the model from them)."""
    folder = _folder(path)
    cfg_path = folder / "config.json"
    raw = read_json_object(cfg_path)
    tower = MODEL_TYPES.get(raw.get("model_type"))
    if tower is None:
        raise CheckpointError(f"{cfg_path}: model_type={raw.get('model_type')!r} is not a one-tower CLIP "
                              f"({', '.join(MODEL_TYPES)})")
    archs = raw.get("architectures") or [TOWER_CLASSES[tower]]
    if archs != [TOWER_CLASSES[tower]]:
        no_proj = ", ".join(a for a in archs if a in _NO_PROJECTION)
        why = (f"{no_proj} has no projection into the joint space" if no_proj else "another class")
        raise ConfigError(f"{cfg_path}: architectures={archs!r} is not supported ({why}); kontrast reads "
                          f"{TOWER_CLASSES[tower]}")
    section = {k: v for k, v in raw.items() if k != "architectures"}
    clip = hf_config_to_model_config({"model_type": "clip", "projection_dim": raw.get("projection_dim", 512),
                                      _SECTIONS[tower]: section}, str(cfg_path))
    weights = Path(path) if Path(path).is_file() else next((folder / w for w in HF_WEIGHTS if (folder / w).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{folder}: no {' or '.join(HF_WEIGHTS)} in this folder")
    if tower == "text":  # read with CLIP BPE, as CLIPModel folders: tokenizer files naming another are refused
        _check_hf_clip_tokenizer(folder)
    sd = convert.hf_to_openai(_load_tensors(weights))
    preprocess = PreprocessConfig()
    proc_path = folder / "preprocessor_config.json"
    if tower == "vision" and proc_path.is_file():
        preprocess = hf_preprocess_to_config(read_json_object(proc_path), clip.vision.image_size, str(proc_path))
    provenance = Provenance(format="hf", source=str(path))
    record = tower_record(TowerConfig(tower, clip), preprocess=preprocess, provenance=provenance)
    return record, {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def save(model: Any, folder: str | os.PathLike, format: str = "hf") -> Path:
    """Write a one-tower model as its Hugging Face class (the only layout that holds one tower)."""
    arch: TowerConfig = model.record.arch
    if format != "hf":
        raise ConfigError(f"a {arch.hf_class} is written as format 'hf' only ({format!r} holds two-tower models)")
    sections = model_config_to_hf(arch.clip)  # refuses what a CLIP tower of transformers cannot express
    config: dict[str, Any] = {"architectures": [arch.hf_class], **sections[_SECTIONS[arch.tower]]}
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    try:
        hf_sd = convert.openai_to_hf(sd)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    proc = None
    if arch.tower == "vision":
        proc = preprocess_to_hf(model.record.preprocess, arch.clip.vision.image_size)
    else:
        config["max_position_embeddings"] = int(sd["positional_embedding"].shape[0])
    return write_hf(_only_tower(hf_sd, arch.tower), config, folder, proc)


def _only_tower(sd: dict[str, torch.Tensor], tower: str) -> dict[str, torch.Tensor]:
    prefixes = ("vision_model.", "visual_projection.") if tower == "vision" else ("text_model.", "text_projection.")
    return {k: v for k, v in sd.items() if k.startswith(prefixes)}
