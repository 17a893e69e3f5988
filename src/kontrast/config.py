"""Model configuration: small typed dataclasses, one JSON file per architecture in ``model_configs/``.

The JSON layout follows open_clip (``embed_dim``, ``vision_cfg``, ``text_cfg``) so open_clip configs
read unchanged; unknown keys are kept in ``extra`` rather than rejected.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class VisionConfig:
    image_size: int = 224  # input resolution (square)
    layers: int | tuple[int, ...] = 12  # ViT depth, or blocks per stage for a ResNet
    width: int = 768  # ViT width, or ResNet stem width (64 for RN50)
    patch_size: int | None = 32  # None means a modified ResNet
    head_width: int = 64  # ViT attention heads = width // head_width
    mlp_ratio: float = 4.0  # hidden size of the MLP = width * mlp_ratio
    act: str = "gelu"  # "quick_gelu" (OpenAI) or "gelu" (exact erf GELU)
    ln_eps: float = 1e-5
    # Normalisation used by preprocessing (OpenAI's values by default).
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @property
    def is_resnet(self) -> bool:
        return self.patch_size is None or isinstance(self.layers, (list, tuple))

    @property
    def heads(self) -> int:
        if self.is_resnet:
            return self.width * 32 // 64  # OpenAI attention-pool heads
        return max(1, self.width // self.head_width)


@dataclass
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    act: str = "gelu"
    ln_eps: float = 1e-5
    # A Hugging Face encoder used as text tower (open_clip's HFTextEncoder): local folder or hub id.
    hf_model: str | None = None
    hf_pooler: str = "mean"  # "mean" or "cls" for hf_model towers
    hf_proj: str = "linear"  # projection after pooling for hf_model towers: "linear" or "mlp"


@dataclass
class ModelConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    init_logit_scale: float = 2.659260036932778  # ln(1/0.07)
    init_logit_bias: float | None = None  # set for SigLIP-trained models
    name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """open_clip-style dict: ``{"embed_dim", "vision_cfg", "text_cfg", ...}``."""
        vision = dataclasses.asdict(self.vision)
        vision["mean"], vision["std"] = list(vision["mean"]), list(vision["std"])
        if isinstance(vision["layers"], tuple):
            vision["layers"] = list(vision["layers"])
        out: dict[str, Any] = {
            "embed_dim": self.embed_dim,
            "vision_cfg": vision,
            "text_cfg": dataclasses.asdict(self.text),
            "init_logit_scale": self.init_logit_scale,
        }
        if self.init_logit_bias is not None:
            out["init_logit_bias"] = self.init_logit_bias
        if self.name:
            out["name"] = self.name
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Read kontrast's or open_clip's config layout (``model_cfg`` wrapper accepted)."""
        d = dict(d.get("model_cfg", d))
        vd = dict(d.pop("vision_cfg", {}) or {})
        td = dict(d.pop("text_cfg", {}) or {})
        quick = bool(d.pop("quick_gelu", False))
        vision = _build(VisionConfig, vd, quick)
        text = _build(TextConfig, td, quick)
        if isinstance(vision.layers, list):
            vision.layers = tuple(vision.layers)
        vision.mean, vision.std = tuple(vision.mean), tuple(vision.std)
        known = {f.name for f in dataclasses.fields(cls)} - {"vision", "text", "extra"}
        kwargs = {k: d.pop(k) for k in list(d) if k in known}
        return cls(vision=vision, text=text, extra=d, **kwargs)


def _build(klass: type, d: dict[str, Any], quick_gelu: bool) -> Any:
    names = {f.name for f in dataclasses.fields(klass)}
    kwargs = {k: v for k, v in d.items() if k in names}
    # open_clip spellings
    if "hf_model_name" in d and "hf_model" not in kwargs:
        kwargs["hf_model"] = d["hf_model_name"]
    if "hf_pooler_type" in d:
        kwargs["hf_pooler"] = {"mean_pooler": "mean", "cls_pooler": "cls", "cls_last_hidden_state_pooler": "cls"}.get(
            d["hf_pooler_type"], kwargs.get("hf_pooler", "mean")
        )
    if "act" not in kwargs:
        kwargs["act"] = "quick_gelu" if quick_gelu else "gelu"
    if "heads" in names and "heads" not in kwargs and "width" in kwargs:
        kwargs["heads"] = max(1, int(kwargs["width"]) // 64)
    return klass(**kwargs)
