"""One-tower CLIP models: Hugging Face ``CLIPVisionModelWithProjection`` / ``CLIPTextModelWithProjection``.

Image encoders of diffusion adapters (IP-Adapter) and SDXL's second text encoder ship as one tower of a CLIP.
``SingleTowerCLIP`` is a ``CLIP`` with only that tower built (the same modules and parameter names, so the same
embeddings, token features and fast paths); the other tower's methods and attributes raise ``MissingTowerError``
in one line naming the class and the folder. Its architecture, ``TowerConfig``, is the ``ModelConfig`` of a whole
CLIP of which only ``tower`` is built, plus the Hugging Face class it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError, MissingTowerError
from ..record import ModelRecord, TokenizerConfig
from .clip import CLIP, build_visual

TOWER_CLASSES = {"vision": "CLIPVisionModelWithProjection", "text": "CLIPTextModelWithProjection"}
TOWER_WORDS = {"vision": "image", "text": "text"}
# Attributes of a two-tower CLIP that belong to each tower (asking a one-tower model for the other's is an error).
_TOWER_ATTRS = {
    "vision": ("visual", "image_size"),
    "text": ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "text",
             "vocab_size", "context_length"),
}


@dataclass
class TowerConfig:
    """The architecture of a one-tower model: ``tower`` (``"vision"`` or ``"text"``) of the CLIP ``clip``."""

    tower: str
    clip: ModelConfig  # a whole CLIP's architecture; only ``tower`` is built (the other keeps its defaults)
    name: str | None = None  # a label, as ``ModelConfig.name``

    def __post_init__(self) -> None:
        if self.tower not in TOWER_CLASSES:
            raise ConfigError(f"tower={self.tower!r} is not one of {', '.join(TOWER_CLASSES)}")

    @property
    def hf_class(self) -> str:
        """The Hugging Face class of this tower (``CLIPVisionModelWithProjection`` / ``CLIPTextModelWithProjection``)."""
        return TOWER_CLASSES[self.tower]

    @property
    def missing(self) -> str:
        """The tower this model does not have."""
        return "text" if self.tower == "vision" else "vision"

    def _tower(self, which: str):
        if which != self.tower:
            raise MissingTowerError(f"a {self.hf_class} has no {TOWER_WORDS[which]} tower (config.{which})")
        return getattr(self.clip, which)

    @property
    def vision(self):
        return self._tower("vision")

    @property
    def text(self):
        return self._tower("text")

    @property
    def embed_dim(self) -> int:
        return self.clip.embed_dim

    @property
    def image_size(self) -> int:
        return self.vision.image_size

    @property
    def context_length(self) -> int:
        return self.text.context_length

    init_logit_bias = None  # one tower: no logits

    def to_dict(self) -> dict[str, Any]:
        """``{"family": "clip_tower", "tower", "hf_class", "model_cfg"}`` with the present tower's section only
        (``kontrast.record.arch_from_dict`` reads it back)."""
        model_cfg = self.clip.to_dict()
        del model_cfg["text_cfg" if self.tower == "vision" else "vision_cfg"]
        out: dict[str, Any] = {"family": "clip_tower", "tower": self.tower, "hf_class": self.hf_class,
                               "model_cfg": model_cfg}
        if self.name:
            out["name"] = self.name
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model config") -> TowerConfig:
        d = dict(d)
        d.pop("family", None)
        unknown = set(d) - {"tower", "hf_class", "model_cfg", "name"}
        if unknown or "model_cfg" not in d:
            key = min(unknown) if unknown else "model_cfg"
            raise ConfigError(f"{source}: one-tower model config: unknown or missing key {key!r}")
        out = cls(str(d.get("tower")), ModelConfig.from_dict(d["model_cfg"], source), d.get("name"))
        if d.get("hf_class", out.hf_class) != out.hf_class:
            raise ConfigError(f"{source}: hf_class={d['hf_class']!r} does not fit tower={out.tower!r} ({out.hf_class})")
        return out


def tower_record(arch: TowerConfig, **fields: Any) -> ModelRecord:
    """The record of a one-tower model: a text tower reads CLIP BPE ids at its own context length."""
    tokenizer = TokenizerConfig(context_length=arch.clip.text.context_length)
    return ModelRecord(arch, tokenizer=tokenizer, **fields)


class SingleTowerCLIP(CLIP):
    """A CLIP with one tower (see the module docstring). ``encode_image`` or ``encode_text`` (with ``output=``,
    ``layer=``) as ``CLIP`` has them; the other tower's methods raise ``MissingTowerError``."""

    sigmoid = False  # no logits at all
    logit_bias = None

    def __init__(self, cfg: TowerConfig | ModelRecord) -> None:
        nn.Module.__init__(self)
        self.record = cfg if isinstance(cfg, ModelRecord) else tower_record(cfg)
        arch: TowerConfig = self.record.arch
        if arch.tower == "vision":
            self.visual = build_visual(arch.clip)
        else:
            self.build_text_tower(arch.clip)
        self.init_weights()

    def init_weights(self) -> None:
        if self.config.tower == "vision":
            self.visual.init_weights()
        else:
            self.init_text_weights()

    def missing_tower(self, what: str) -> MissingTowerError:
        """The one-line error for ``what`` (a method or attribute) of the tower this model does not have."""
        arch: TowerConfig = self.record.arch
        source = self.record.provenance.source or "this model"
        return MissingTowerError(
            f"{arch.hf_class} {source} has no {TOWER_WORDS[arch.missing]} tower, so {what} is not available; "
            f"load a CLIPModel folder (both towers) for that")

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            record = self.__dict__.get("record")
            if record is not None and (name in _TOWER_ATTRS[record.arch.missing] or name == "logit_scale"):
                raise self.missing_tower(f"model.{name}") from None
            raise

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def encode_image(self, images: torch.Tensor, *args: Any, **kwargs: Any):
        if self.record.arch.tower != "vision":
            raise self.missing_tower("encode_image")
        return super().encode_image(images, *args, **kwargs)

    def encode_text(self, ids: torch.Tensor, *args: Any, **kwargs: Any):
        if self.record.arch.tower != "text":
            raise self.missing_tower("encode_text")
        return super().encode_text(ids, *args, **kwargs)

    def get_logits(self, images: torch.Tensor, ids: torch.Tensor):
        raise self.missing_tower("get_logits (image-text logits)")

    def forward(self, images: torch.Tensor | None = None, ids: torch.Tensor | None = None):
        raise self.missing_tower("forward (image and text features with the temperature)")

    def transforms(self) -> tuple[Any, Any]:
        """``(preprocess, tokenizer)`` as ``kontrast.load`` returns them: the present tower's, and for the missing
        one a callable that raises ``MissingTowerError``."""
        from ..record import build_preprocess, build_tokenizer

        if self.record.arch.tower == "vision":
            return build_preprocess(self.record), _Missing(str(self.missing_tower("the tokenizer")))
        return _Missing(str(self.missing_tower("image preprocessing"))), build_tokenizer(self.record)


class _Missing:
    """Stands in for the preprocess / tokenizer of a tower a model does not have: calling it raises the error."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise MissingTowerError(self.message)
