"""Training recipes: one YAML or JSON file describing a run, overridable field by field.

A recipe is a flat mapping of :class:`TrainConfig` fields (unknown keys are an error naming the nearest
known one). The run directory keeps the resolved config (``config.json``), and ``--resume`` reads it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import KontrastError


@dataclass
class TrainConfig:
    # ---- model
    model: str | None = None  # architecture name, checkpoint path / folder, or "default" (fine-tuning)
    model_config: dict[str, Any] | None = None  # inline open_clip-style config (embed_dim, vision_cfg, text_cfg)
    pretrained: str | None = None  # registry tag for ``model`` (as ``kontrast.load``)
    lock_image: bool = False  # freeze the image tower (LiT-style)
    lock_text: bool = False  # freeze the text tower (an HF tower keeps its projection trainable)
    lock_text_proj: bool = False  # also freeze an HF tower's projection
    lock_text_unlocked_layers: int = 0  # with lock_text: leave the last N layer groups trainable (train.locking)
    lock_text_freeze_layer_norm: bool = True  # with lock_text: false trains an HF tower's LayerNorms too
    grad_checkpointing: bool = False
    init_logit_scale: float | None = None  # start exp(logit_scale) at this value (fresh runs; a resume keeps the trained one)
    # ---- data
    train_data: list[str] | str | None = None  # folder, .csv, or shard paths / globs / brace patterns
    val_data: list[str] | str | None = None
    caption_key: str | None = None  # take captions from this json/CSV field instead of the .txt
    data_mode: str = "auto"  # "indexed" (in memory / by path), "stream" (webdataset), "cached" (decoded once), or "auto"
    cache_size: int | None = None  # data_mode "cached": stored image side (default: image size * 9/8)
    workers: int = 0
    shuffle_buffer: int = 2000
    aug_scale: tuple[float, float] = (0.9, 1.0)
    aug_ratio: tuple[float, float] = (0.75, 1.3333333333333333)
    aug_jitter: float = 0.0
    aug_grayscale: float = 0.0
    aug_outline: float = 0.0  # probability of dark outlines drawn along colour edges (kontrast.data.outline)
    caption_head: float = 0.0  # probability of training on the caption's part before its first ": "
    # ---- objective and optimisation
    loss: str | None = None  # "clip" or "siglip"; None: the model family's (SigLIP models: "siglip", else "clip")
    local_loss: bool = False
    gather_with_grad: bool = False
    batch_size: int = 256  # global batch (all ranks, all accumulation steps)
    accum_steps: int = 1
    epochs: float = 1.0
    steps: int | None = None  # overrides epochs
    lr: float = 5e-4
    min_lr: float = 0.0
    warmup: int = 100
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float | None = 1.0
    precision: str = "auto"  # autocast dtype: "bf16", "fp32", or "auto" (bf16 only where the CPU/GPU has native bf16)
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # torch intra-op threads per process
    # ---- run directory, checkpoints, logging
    output: str = "runs/run"
    save_every: int = 200  # checkpoint every N steps (and at the end)
    keep_checkpoints: int = 2
    log_every: int = 10
    val_every: int = 0  # 0: only at the end
    tensorboard: bool = True
    save_model: str | None = None  # also write the final model with kontrast.save to this folder
    debug_step_sleep: float = 0.0  # seconds to pause after each step (tests use it to kill a run mid-way)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept with the run

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        cfg = cls()
        apply_overrides(cfg, d)
        return cfg


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _kind(name: str) -> str:
    """The base type of a field from its annotation: bool, int, float, tuple, str, list or dict."""
    annotation = str(FIELDS[name].type)
    for kind in ("bool", "tuple", "dict", "list", "float", "int", "str"):
        if annotation.startswith((kind, f"{kind}[")) or f"| {kind}" in annotation:
            return kind
    return "any"


def _coerce(name: str, value: Any) -> Any:
    """Turn a YAML/JSON/CLI value into the field's type (strings from flags are parsed as YAML scalars)."""
    kind = _kind(name)
    if isinstance(value, str) and "None" in str(FIELDS[name].type) and value.strip() in ("null", "~", ""):
        return None  # YAML's null from a flag: ``--val-data null`` turns an optional field off
    if isinstance(value, str) and kind not in ("str", "list"):
        import yaml

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise KontrastError(f"{name}: cannot parse {value!r}") from exc
    if value is None:
        return None
    if kind == "bool":
        if not isinstance(value, bool):
            raise KontrastError(f"{name} must be true or false, not {value!r}")
        return value
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise KontrastError(f"{name} must be an integer, not {value!r}")
        return value
    if kind == "float":
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise KontrastError(f"{name} must be a number, not {value!r}")
        return float(value)
    if kind == "tuple":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise KontrastError(f"{name} must be two numbers like [0.9, 1.0], not {value!r}")
        return (float(value[0]), float(value[1]))
    if kind == "dict" and not isinstance(value, dict):
        raise KontrastError(f"{name} must be a mapping, not {value!r}")
    if kind == "str" and not isinstance(value, str):
        return str(value)
    return value


def apply_overrides(cfg: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """Set fields from a mapping (recipe or flags); ``-`` in keys is accepted for ``_``."""
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            near = difflib.get_close_matches(name, list(FIELDS), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise KontrastError(f"unknown recipe field {key!r}{hint}")
        setattr(cfg, name, _coerce(name, value))
    return cfg


def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a ``.yaml`` / ``.yml`` / ``.json`` recipe file."""
    p = Path(path)
    if not p.is_file():
        raise KontrastError(f"recipe not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:
        raise KontrastError(f"{p}: not a valid recipe ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise KontrastError(f"{p}: a recipe must be a mapping of field: value")
    return data


def validate(cfg: TrainConfig) -> None:
    """One-line errors for values that cannot work."""
    if not cfg.train_data:
        raise KontrastError("no training data: set train_data in the recipe or pass --train-data")
    if cfg.model is None and cfg.model_config is None:
        raise KontrastError("no model: set model (architecture, checkpoint or 'default') or model_config")
    if cfg.loss not in (None, "clip", "siglip"):
        raise KontrastError(f"loss {cfg.loss!r} is not one of: clip, siglip")
    if cfg.precision not in ("auto", "bf16", "fp32"):
        raise KontrastError(f"precision {cfg.precision!r} is not one of: auto, bf16, fp32")
    if cfg.data_mode not in ("auto", "indexed", "stream", "cached"):
        raise KontrastError(f"data_mode {cfg.data_mode!r} is not one of: auto, indexed, stream, cached")
    if cfg.batch_size < 2 or cfg.accum_steps < 1 or cfg.batch_size % cfg.accum_steps:
        raise KontrastError(f"batch_size {cfg.batch_size} must be >= 2 and divisible by accum_steps {cfg.accum_steps}")
    if cfg.init_logit_scale is not None and not 0 < cfg.init_logit_scale <= 100:
        raise KontrastError(f"init_logit_scale {cfg.init_logit_scale} must be in (0, 100] (exp of the logit scale, clamped to 100)")
    for name in ("aug_grayscale", "aug_outline"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise KontrastError(f"{name} {getattr(cfg, name)} is a probability: it must be in [0, 1]")
    if cfg.lock_text_unlocked_layers < 0:
        raise KontrastError(f"lock_text_unlocked_layers {cfg.lock_text_unlocked_layers} must be >= 0")
    if not cfg.lock_text and (cfg.lock_text_unlocked_layers or not cfg.lock_text_freeze_layer_norm):
        raise KontrastError("lock_text_unlocked_layers / lock_text_freeze_layer_norm set without lock_text: "
                            "they choose what a locked text tower leaves trainable")
    if (cfg.lock_image and cfg.lock_text and cfg.lock_text_proj and not cfg.lock_text_unlocked_layers
            and cfg.lock_text_freeze_layer_norm):
        raise KontrastError("both towers are locked: nothing to train")
