"""One record of what a model is, travelling with the model: architecture, preprocessing, tokenizer,
provenance, and the fingerprint of its current weights.

``ModelRecord`` = ``ModelConfig`` (``config.py``) + ``PreprocessConfig`` + ``TokenizerConfig`` + ``Provenance``.
Every checkpoint reader fills it from what the checkpoint says (open_clip ``preprocess_cfg``, Hugging Face
``preprocessor_config.json``, the pretrained registry, kontrast's own config); every writer writes all of it
(or refuses what its format cannot express), so save / export / load round trips keep it. The model carries it
(``model.record``; ``model.config`` is ``model.record.arch``), and the preprocessing and the tokenizer are built
from it only (``build_preprocess``, ``build_tokenizer``): training, evaluation, export, search and serving get
a model's own normalisation, interpolation and resize mode even when all they have is the model.

This module is low in the import graph: it imports ``config`` and ``errors`` (``preprocess`` / ``tokenizer``
only inside the builders). ``api``, ``checkpoints``, ``models``, ``train``, ``evaluate`` and ``export`` import it.

Fingerprint (``fingerprint(model)``): sha256 of the record's description and of every tensor of the state dict,
remembered together with a cheap token of the current weights (each tensor's ``data_ptr``, autograd version
counter, dtype, device and shape). Optimiser steps, ``load_state_dict``, ``copy_`` and casts change the token,
so the next call hashes again; caches keyed by the fingerprint (zero-shot classifiers, eval features, ONNX
exports) therefore notice new weights. In-place writes through ``param.data`` bypass the version counter:
after such a write call ``forget_fingerprint(model)``.

Adding a preprocessing mode: extend ``RESIZE_MODES`` / ``INTERPOLATIONS`` here, implement it in
``preprocess.Preprocess`` (bit-exact with the library it comes from, with a test against its outputs), map it in
the readers / writers (``checkpoints.convert`` for Hugging Face processors; open_clip's keys are this module's
``PreprocessConfig`` keys), and refuse it in writers whose format cannot express it.

Adding a tokenizer kind (``families``: ``"sentencepiece"``): add a builder to ``TOKENIZER_BUILDERS`` (a function
``record -> tokenizer`` whose result is called as ``tokenizer(texts) -> LongTensor[N, context_length]``), make
the readers set the kind (``config.tokenizer_fields`` for open_clip text configs; the HF reader in
``checkpoints.formats``), and describe it to writers (``to_dict`` writes every field; other formats refuse
what they cannot name).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import ModelConfig, tokenizer_fields
from .errors import ConfigError

OPENAI_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("shortest", "longest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear")
RECORD_VERSION = 2  # kontrast config files: 1 = flat open_clip layout with preprocess_cfg; 2 = + tokenizer, provenance


@dataclass
class PreprocessConfig:
    """How an image becomes the model's input (open_clip ``preprocess_cfg`` key names where they exist).

    Steps: resize (``resize_mode``: ``"shortest"`` side to the target, ``"longest"`` side to the target, or
    ``"squash"`` both sides; PIL ``interpolation``), then, if ``crop``, a centre crop to the model's image size
    that pads with ``fill`` where the resized image is smaller; then RGB, ``/255``, ``(x - mean) / std``.
    """

    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"  # "bicubic" | "bilinear"
    resize_mode: str = "shortest"  # "shortest" | "longest" | "squash"
    resize_size: int | None = None  # target of the resize step; None: the model's image size
    crop: bool | None = None  # centre crop (or pad) to the image size; None: yes unless resize_mode is "squash"
    fill: int = 0  # padding value of every band (open_clip fill_color)
    rgb_first: bool = False  # convert to RGB (transparency onto white) BEFORE resizing, as Hugging Face processors do

    def __post_init__(self) -> None:
        self.mean = tuple(float(m) for m in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(s) for s in self.std)  # type: ignore[assignment]
        if self.crop is None:
            self.crop = self.resize_mode != "squash"

    def check(self, source: str = "preprocess_cfg") -> PreprocessConfig:
        """Raise ``ConfigError`` for values kontrast does not implement."""
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"{source}: mean={list(self.mean)} / std={list(self.std)} need 3 values each, std > 0")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"{source}: interpolation={self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"{source}: resize_mode={self.resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
        if not self.crop and self.resize_mode != "squash":
            raise ConfigError(f"{source}: crop=false needs resize_mode 'squash' (otherwise the output size varies)")
        if not 0 <= int(self.fill) <= 255:
            raise ConfigError(f"{source}: fill_color={self.fill!r} must be 0..255")
        return self

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation,
                               "resize_mode": self.resize_mode, "fill_color": self.fill}
        if self.resize_size is not None:
            out["resize_size"] = self.resize_size
        if self.crop != (self.resize_mode != "squash"):
            out["crop"] = self.crop
        if self.rgb_first:
            out["rgb_first"] = True
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, source: str = "preprocess_cfg") -> PreprocessConfig:
        """open_clip's ``preprocess_cfg`` (``size``, ``mode``, ``mean``, ``std``, ``interpolation``,
        ``resize_mode``, ``fill_color``) plus kontrast's ``resize_size`` / ``crop``; other keys are refused."""
        d = dict(d or {})
        unknown = set(d) - {"size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color",
                            "resize_size", "crop", "rgb_first"}
        if unknown:
            key = min(unknown)
            raise ConfigError(f"{source}: unknown preprocessing key {key}={d[key]!r}; kontrast refuses to guess")
        if d.get("mode", "RGB") != "RGB":
            raise ConfigError(f"{source}: mode={d['mode']!r} is not supported (RGB only)")
        # ``size`` is informational: open_clip replaces it with the model's image size, and so does kontrast
        interpolation = d.get("interpolation") or "bicubic"
        if interpolation == "random":  # open_clip: random interpolation is for training; inference uses bicubic
            interpolation = "bicubic"
        mean, std = d.get("mean") or OPENAI_MEAN, d.get("std") or OPENAI_STD
        mean = (mean,) * 3 if isinstance(mean, (int, float)) else mean
        std = (std,) * 3 if isinstance(std, (int, float)) else std
        return cls(mean=tuple(mean), std=tuple(std), interpolation=interpolation,
                   resize_mode=d.get("resize_mode") or "shortest", resize_size=d.get("resize_size"),
                   crop=d.get("crop"), fill=int(d.get("fill_color") or 0),
                   rgb_first=bool(d.get("rgb_first", False))).check(source)

    def to_open_clip(self, image_size: int) -> dict[str, Any]:
        """open_clip's ``preprocess_cfg``; ``ConfigError`` where it cannot say the same."""
        if self.resize_size not in (None, image_size) or self.crop != (self.resize_mode != "squash"):
            raise ConfigError(f"open_clip's preprocess_cfg cannot express a resize to {self.resize_size} followed by "
                              f"crop={self.crop} at image size {image_size}; export with kontrast.save instead")
        if self.rgb_first:
            raise ConfigError("open_clip's preprocess_cfg cannot express an RGB conversion before resizing "
                              "(rgb_first, Hugging Face's order); export with format 'hf' or kontrast.save instead")
        return {"size": image_size, "mode": "RGB", "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "resize_mode": self.resize_mode, "fill_color": self.fill}


@dataclass
class TokenizerConfig:
    """Which tokenizer turns text into the model's ids."""

    kind: str = "clip_bpe"  # a key of TOKENIZER_BUILDERS: "clip_bpe", "hf_tokenizer_json", "sentencepiece"
    context_length: int = 77  # ids per text (padded / truncated)
    pad_id: int | None = 0  # padding id; None: the tokenizer files' own pad token
    # text clean-up before tokenising (open_clip's names): "lower" (CLIP BPE: ftfy, html unescape, whitespace,
    # lower case), "canonicalize" or "whitespace" (open_clip's HFTokenizer); None: none besides the files' own
    clean: str | None = "lower"
    path: str | None = None  # folder (or packaged encoder name) holding the tokenizer files, for kinds that read them

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "tokenizer_cfg") -> TokenizerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            key = min(unknown)
            raise ConfigError(f"{source}: unknown tokenizer key {key}={d[key]!r}")
        out = cls(**d)
        if out.kind not in TOKENIZER_BUILDERS:
            raise ConfigError(f"{source}: tokenizer kind={out.kind!r} is not implemented "
                              f"({', '.join(TOKENIZER_BUILDERS)})")
        return out


@dataclass
class Provenance:
    """Where the weights came from (kept for ``kontrast info`` and reports; not part of the fingerprint)."""

    format: str | None = None  # kontrast | open_clip | hf | openai_jit | state_dict | new (fresh initialisation)
    source: str | None = None  # file or folder read, or "hf-hub:owner/repo"
    pretrained: str | None = None  # registry tag (or checkpoint file), when the model was named that way
    assumed: list[str] = field(default_factory=list)  # what the checkpoint did not say and was assumed
    origin: str | None = None  # for a file kontrast wrote: where the model it saved had come from

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ModelRecord:
    """What a model is: ``arch`` + ``preprocess`` + ``tokenizer`` + ``provenance``."""

    arch: ModelConfig  # or another family's config (e.g. ``models.siglip.SigLIPConfig``: ``to_dict``, ``image_size``)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    provenance: Provenance = field(default_factory=Provenance)

    @classmethod
    def default(cls, arch: Any, provenance: Provenance | None = None,
                preprocess: PreprocessConfig | None = None) -> ModelRecord:
        """The record of an architecture with OpenAI's preprocessing and the tokenizer its text tower implies."""
        return cls(arch, preprocess or PreprocessConfig(), tokenizer_for(arch), provenance or Provenance())

    def to_dict(self) -> dict[str, Any]:
        """kontrast's config file: ``{"record_version", "model_cfg", "preprocess_cfg", "tokenizer_cfg", "provenance"}``."""
        return {"record_version": RECORD_VERSION, "model_cfg": self.arch.to_dict(),
                "preprocess_cfg": self.preprocess.to_dict(), "tokenizer_cfg": self.tokenizer.to_dict(),
                "provenance": self.provenance.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "kontrast config") -> ModelRecord:
        """Read ``to_dict``'s layout, or the flat layout of older kontrast files (``embed_dim``, ``vision_cfg``,
        ``text_cfg``, ``preprocess_cfg`` at the top; normalisation possibly in ``vision_cfg``)."""
        d = dict(d)
        if "model_cfg" in d:
            version = d.pop("record_version", RECORD_VERSION)
            if version > RECORD_VERSION:
                raise ConfigError(f"{source}: record_version {version} is newer than this kontrast ({RECORD_VERSION}); "
                                  "upgrade kontrast")
            model_cfg = d.pop("model_cfg")
        else:
            model_cfg = {k: d.pop(k) for k in list(d) if k not in ("preprocess_cfg", "tokenizer_cfg", "provenance")}
        pre, tok, prov = d.pop("preprocess_cfg", None), d.pop("tokenizer_cfg", None), d.pop("provenance", None)
        if d:
            key = min(d)
            raise ConfigError(f"{source}: unknown key {key}={d[key]!r}")
        arch = arch_from_dict(model_cfg, source)
        vision = model_cfg.get("vision_cfg") or {}
        if pre is None and ("mean" in vision or "std" in vision):  # kontrast 0.1: normalisation in vision_cfg
            pre = {"mean": vision.get("mean"), "std": vision.get("std")}
        tokenizer = (TokenizerConfig.from_dict(tok, source) if tok is not None
                     else tokenizer_from_text_cfg(model_cfg.get("text_cfg") or {}, arch, source))
        prov = dict(prov or {})
        unknown = set(prov) - {f.name for f in dataclasses.fields(Provenance)}
        if unknown:
            raise ConfigError(f"{source}: unknown provenance key {min(unknown)!r}")
        provenance = Provenance(**prov)
        return cls(arch, PreprocessConfig.from_dict(pre, source), tokenizer, provenance)


# Architectures of other families, by the "family" key their ``to_dict`` writes: "module:class" with ``from_dict``.
ARCH_FAMILIES = {"siglip": "kontrast.models.siglip:SigLIPConfig",
                 "clip_tower": "kontrast.models.single_tower:TowerConfig"}


def arch_from_dict(d: dict[str, Any], source: str = "model config") -> Any:
    """An architecture from its ``to_dict``: a ``ModelConfig``, or another family's config (``ARCH_FAMILIES``)."""
    family = d.get("family") if isinstance(d, dict) else None
    if family is None:
        return ModelConfig.from_dict(d, source)
    if family not in ARCH_FAMILIES:
        raise ConfigError(f"{source}: model family {family!r} is not one kontrast reads ({', '.join(ARCH_FAMILIES)})")
    import importlib

    module, name = ARCH_FAMILIES[family].split(":")
    return getattr(importlib.import_module(module), name).from_dict(d, source)


def tokenizer_for(arch: Any) -> TokenizerConfig:
    """The tokenizer an architecture implies: a Hugging Face text tower's own ``tokenizer.json``, else CLIP BPE
    (other architecture families, e.g. SigLIP, carry theirs in the checkpoint folder: ``path`` unknown here)."""
    if not isinstance(arch, ModelConfig):
        return TokenizerConfig("hf_tokenizer_json", int(arch.context_length), None, None, None)
    t = arch.text
    if t.kind == "hf":
        return TokenizerConfig("hf_tokenizer_json", t.context_length, None, None, t.hf_model)
    return TokenizerConfig("clip_bpe", t.context_length, 0, "lower", None)


def image_size_of(arch: Any) -> int:
    """The input resolution of an architecture (``ModelConfig.vision.image_size``, or ``arch.image_size``)."""
    vision = getattr(arch, "vision", None)
    return int(getattr(vision, "image_size", None) or arch.image_size)


def tokenizer_from_text_cfg(text_cfg: dict[str, Any], arch: ModelConfig, source: str) -> TokenizerConfig:
    """The tokenizer an open_clip ``text_cfg`` describes (``pad_id``, ``tokenizer_kwargs``, ...)."""
    fields = tokenizer_fields(text_cfg, source)
    return TokenizerConfig(fields["kind"], arch.text.context_length, fields["pad_id"], fields["clean"], fields["path"])


# ---- building -------------------------------------------------------------------------------------------
def build_preprocess(record: ModelRecord, fast: bool = False) -> Callable:
    """The eval transform the record describes, at the model's image size."""
    from .preprocess import Preprocess

    return Preprocess.from_config(record.preprocess, image_size_of(record.arch), fast=fast)


def _clip_bpe(record: ModelRecord) -> Callable:
    from .tokenizer import Tokenizer

    tok = record.tokenizer
    if tok.clean != "lower" or tok.pad_id not in (0, None):
        raise ConfigError(f"CLIP BPE tokenizer with clean={tok.clean!r}, pad_id={tok.pad_id} is not implemented "
                          "(clean='lower', pad_id=0)")
    return Tokenizer(context_length=tok.context_length)


def _hf_tokenizer_json(record: ModelRecord) -> Callable:
    tok = record.tokenizer
    if not tok.path:
        raise ConfigError("tokenizer kind 'hf_tokenizer_json' needs the folder with tokenizer.json (path)")
    arch = record.arch
    if isinstance(arch, ModelConfig) and arch.text.kind == "hf":  # a Hugging Face encoder tower: [PAD] padding
        from .hf_tokenizer import HFTokenizer
        from .models.hf_text import resolve_hf_folder

        return HFTokenizer(resolve_hf_folder(tok.path), tok.context_length, pad_id=tok.pad_id)
    from .checkpoint_tokenizers import (
        JsonTokenizer,  # a checkpoint's own tokenizer.json (+ tokenizer_config.json)
    )

    return JsonTokenizer(tok.path, tok.context_length, tok.clean)


def _sentencepiece(record: ModelRecord) -> Callable:
    from .checkpoint_tokenizers import SentencePieceTokenizer

    tok = record.tokenizer
    if not tok.path:
        raise ConfigError("tokenizer kind 'sentencepiece' needs the folder with spiece.model (path)")
    return SentencePieceTokenizer(tok.path, tok.context_length)


TOKENIZER_BUILDERS: dict[str, Callable[[ModelRecord], Callable]] = {
    "clip_bpe": _clip_bpe,
    "hf_tokenizer_json": _hf_tokenizer_json,
    "sentencepiece": _sentencepiece,
}


def build_tokenizer(record: ModelRecord) -> Callable:
    """The tokenizer the record describes."""
    kind = record.tokenizer.kind
    if kind not in TOKENIZER_BUILDERS:
        raise ConfigError(f"tokenizer kind {kind!r} is not implemented ({', '.join(TOKENIZER_BUILDERS)})")
    return TOKENIZER_BUILDERS[kind](record)


def record_of(model: Any) -> ModelRecord:
    """``model.record``, or (for objects without one) the default record of ``model.config``."""
    record = getattr(model, "record", None)
    if isinstance(record, ModelRecord):
        return record
    return ModelRecord.default(model.config)


def record_for_writing(model: Any, preprocess: Any = None) -> ModelRecord:
    """The model's record, with the preprocessing replaced when the caller passes one (a ``Preprocess``, a
    ``PreprocessConfig`` or an open_clip-style dict), for writers (``save``, ``export``, ONNX export)."""
    record = record_of(model)
    if preprocess is not None:
        pre = getattr(preprocess, "config", preprocess)
        pre = pre if isinstance(pre, PreprocessConfig) else PreprocessConfig.from_dict(pre, "preprocess argument")
        record = dataclasses.replace(record, preprocess=pre)
    return record


# ---- fingerprint ------------------------------------------------------------------------------------
_MEMO = "_kontrast_fingerprint_memo"


def weights_token(model: torch.nn.Module) -> tuple:
    """A cheap value that changes whenever a tensor of the state dict is replaced or written in place
    (storage pointer, autograd version counter, dtype, device, shape of every entry)."""
    return tuple((name, t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape))
                 for name, t in model.state_dict(keep_vars=True).items())


def describe(record: ModelRecord) -> dict[str, Any]:
    """What the fingerprint hashes besides the weights. For CLIP (``ModelConfig``): the architecture in kontrast's
    first config layout (with the normalisation in ``vision_cfg``), plus every later field that is not at its old
    default, so models that could be described before keep their fingerprint. Other families: the architecture,
    the preprocessing and the tokenizer. Where the tokenizer files lie (``path``) is not part of it."""
    arch = record.arch
    tokenizer = {k: v for k, v in record.tokenizer.to_dict().items() if k != "path"}
    if not isinstance(arch, ModelConfig):
        d = {k: v for k, v in arch.to_dict().items() if k != "name"}
        return {"arch": d, "preprocess": record.preprocess.to_dict(), "tokenizer": tokenizer}
    d = arch.to_dict()
    d.pop("name", None)
    v, t = d["vision_cfg"], d["text_cfg"]
    old_vision = ("image_size", "layers", "width", "patch_size", "head_width", "mlp_ratio", "act", "ln_eps")
    old_text = ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "act", "ln_eps",
                "hf_model", "hf_pooler", "hf_proj")
    d["vision_cfg"] = {k: v[k] for k in old_vision if k in v} | {"mean": list(record.preprocess.mean),
                                                       "std": list(record.preprocess.std)}
    d["text_cfg"] = {k: t[k] for k in old_text}
    extras = arch.fingerprint_extras()
    p, default_p = record.preprocess, PreprocessConfig(mean=record.preprocess.mean, std=record.preprocess.std)
    for name in ("interpolation", "resize_mode", "resize_size", "crop", "fill", "rgb_first"):
        if getattr(p, name) != getattr(default_p, name):
            extras[f"preprocess.{name}"] = getattr(p, name)
    implied = tokenizer_for(arch)
    for name in ("kind", "context_length", "pad_id", "clean"):
        if getattr(record.tokenizer, name) != getattr(implied, name):
            extras[f"tokenizer.{name}"] = getattr(record.tokenizer, name)
    if extras:
        d["kontrast_extras"] = extras
    return d


def _description(model: torch.nn.Module) -> str:
    return json.dumps(describe(record_of(model)), sort_keys=True, default=str)


def _hash(model: torch.nn.Module, description: str) -> str:
    h = hashlib.sha256(description.encode())
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # [numel * itemsize] bytes, no copy
    return h.hexdigest()[:16]


def fingerprint(model: torch.nn.Module) -> str:
    """A stable id (16 hex digits) of the model's record and CURRENT weights, for caches and index checks.

    Hashed again whenever the record's description or ``weights_token`` changed since the last call (see the
    module docstring).
    """
    fixed = getattr(model, "fixed_fingerprint", None)  # e.g. ONNX graphs: weights that cannot change
    if fixed:
        return fixed
    token = (_description(model), weights_token(model))
    memo = getattr(model, _MEMO, None)
    if memo is not None and memo[0] == token:
        return memo[1]
    value = _hash(model, token[0])
    setattr(model, _MEMO, (token, value))
    return value


def keep_fingerprint(model: torch.nn.Module, value: str) -> None:
    """Declare that the current weights still have fingerprint ``value`` (after a cast of the same weights,
    e.g. to bf16 at load time, so that the id names the weights as stored)."""
    setattr(model, _MEMO, ((_description(model), weights_token(model)), value))


def forget_fingerprint(model: torch.nn.Module) -> None:
    """Hash again on the next ``fingerprint`` call (after in-place writes through ``param.data``)."""
    if hasattr(model, _MEMO):
        delattr(model, _MEMO)
