"""Model architecture configuration: small typed dataclasses, one JSON file per architecture in ``model_configs/``.

The JSON layout is open_clip's (``embed_dim``, ``vision_cfg``, ``text_cfg``) plus kontrast's own keys (``kind``,
``act``, ``ln_eps``, ``inert``, ...), so open_clip configs read unchanged. Reading is strict: every key is either
understood or refused with a ``ConfigError`` that names the key, its value and the file. A key that is dropped
silently builds another model (an open_clip SigLIP config used to load as a plain ViT), so nothing is dropped:

- keys that kontrast implements become fields (``pool_type``, ``no_causal_mask``, ``final_ln_after_pool``,
  ``no_ln_pre``, ``norm_kwargs={"eps"}``, ``act_kwargs={"approximate": "tanh"}``, ``quick_gelu``, ...);
- keys that do not change what the model computes at inference (``patch_dropout``, ``output_tokens``, the
  ``attn_pooler_*`` sizes without ``attentional_pool``, ``hf_model_pretrained``, timm options without a timm
  model) are kept verbatim in ``inert`` and written back, so a round trip keeps them. kontrast's training does
  not apply ``patch_dropout``;
- keys that change the computation in a way kontrast does not implement (``timm_model_name`` other than a
  ConvNeXt trunk, ``ls_init_value``,
  ``attentional_pool``, ``embed_cls``, ``proj_bias``, ``multimodal_cfg``, ``qk_norm``, ...) are accepted only at
  their no-op value and refused otherwise; unknown keys are refused.

Tokenizer keys of ``text_cfg`` (``pad_id``, ``tokenizer_kwargs``, ``hf_tokenizer_name``, ``tokenizer_mode``) are
checked here (``tokenizer_fields``) and end up in the model record's tokenizer config (``kontrast.record``); the
legacy ``vision_cfg.mean``/``std`` of old kontrast files end up in its preprocessing config.

Adding a tower kind (``families``: SigLIP towers, ``bigvit``: ConvNeXt): add the name to ``VISION_KINDS`` /
``TEXT_KINDS``, the fields it needs to the dataclass (with open_clip's key names where open_clip has them), the
keys to ``_read_vision`` / ``_read_text`` (instead of refusing them), the builder to ``models.clip.build_visual``
(or the text tower in ``models.clip.CLIP``), the output in ``to_dict`` / ``to_open_clip``, and the HF mapping
in ``checkpoints.convert`` (or a refusal there). The record's fingerprint covers non-default fields through
``fingerprint_extras``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .convnext_spec import TIMM_CONVNEXT, ConvNeXtGeometry
from .errors import ConfigError

VISION_KINDS = ("vit", "resnet", "convnext", "efficientnet_lite")
TEXT_KINDS = ("clip", "hf")
ACTIVATIONS = ("quick_gelu", "gelu", "gelu_tanh")  # transformer towers (EfficientNet-Lite: "relu6")
VISION_POOLS = ("tok", "avg")  # open_clip: class token, or the mean of the patch tokens
TEXT_POOLS = ("argmax", "eos", "first", "last")  # open_clip's text_global_pool types that give one vector
DEFAULT_EPS = 1e-5


@dataclass
class VisionConfig:
    kind: str | None = None  # "vit" or "resnet", set from the layout (tuple layers or no patch size: "resnet")
    image_size: int = 224  # input resolution (square)
    layers: int | tuple[int, ...] = 12  # ViT depth, or blocks per stage for a ResNet
    width: int = 768  # ViT width, or ResNet stem width (64 for RN50)
    patch_size: int | None = 16  # open_clip's default; None for a ResNet
    head_width: int = 64  # attention heads = width // head_width (ResNet attention pool: width * 32 // head_width)
    mlp_ratio: float = 4.0  # hidden size of the MLP = width * mlp_ratio
    act: str = "gelu"  # "quick_gelu" (OpenAI), "gelu" (exact erf GELU) or "gelu_tanh"
    ln_eps: float = DEFAULT_EPS  # LayerNorm epsilon (open_clip: norm_kwargs.eps)
    pool_type: str = "tok"  # "tok": the class token; "avg": mean of the patch tokens
    final_ln_after_pool: bool = False  # ln_post on the pooled vector instead of on every token (differs for "avg")
    no_ln_pre: bool = False  # no LayerNorm before the transformer
    # ConvNeXt towers (kind "convnext"): open_clip's timm keys and the trunk's geometry (ln_eps, mlp_ratio too)
    timm_model_name: str | None = None  # the timm trunk, e.g. "convnext_base"
    timm_proj: str = "linear"  # head on the pooled trunk: "linear" (proj) or "mlp" (fc1 -> GELU -> fc2)
    timm_proj_bias: bool = False  # a bias on proj / mlp.fc2
    depths: tuple[int, ...] | None = None  # blocks per stage (None: read from the weights by the loader)
    dims: tuple[int, ...] | None = None  # channels per stage
    kernel_size: int = 7  # depthwise convolution
    inert: dict[str, Any] = field(default_factory=dict)  # understood keys without effect here, written back

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):
            self.layers = tuple(self.layers)
        for name in ("depths", "dims"):
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))
        if self.kind in (None, "vit", "resnet"):  # these two follow the layout (also after dataclasses.replace)
            self.kind = "resnet" if self.patch_size is None or isinstance(self.layers, tuple) else "vit"

    @property
    def is_resnet(self) -> bool:
        return self.kind == "resnet"

    @property
    def convnext(self) -> ConvNeXtGeometry:
        """The ConvNeXt trunk's geometry (kind "convnext")."""
        if self.depths is None or self.dims is None:
            raise ConfigError(f"ConvNeXt trunk {self.timm_model_name!r} is not in kontrast's table "
                              f"({', '.join(TIMM_CONVNEXT)}): its depths and dims come from a checkpoint's weights")
        return ConvNeXtGeometry(self.depths, self.dims, self.kernel_size, self.mlp_ratio, self.ln_eps)

    @property
    def heads(self) -> int:
        if self.is_resnet:
            return self.width * 32 // self.head_width  # OpenAI / open_clip attention-pool heads
        return max(1, self.width // self.head_width)


@dataclass
class TextConfig:
    kind: str | None = None  # "clip" (causal transformer) or "hf" (a Hugging Face encoder), set from hf_model
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8  # open_clip's default when a config leaves it out (not width // 64)
    layers: int = 12
    mlp_ratio: float = 4.0
    act: str = "gelu"
    ln_eps: float = DEFAULT_EPS
    pool_type: str = "argmax"  # argmax of the ids (OpenAI), first "eos" id, "first" or "last" position
    eos_id: int | None = None  # the id "eos" pooling looks for
    no_causal_mask: bool = False  # bidirectional attention over all positions (SigLIP), padding included
    # A Hugging Face encoder used as text tower (open_clip's HFTextEncoder): local folder or packaged name.
    hf_model: str | None = None
    hf_pooler: str = "mean"  # "mean" (masked mean) or "cls" (last_hidden_state[:, 0]) for hf_model towers
    hf_proj: str = "linear"  # projection after pooling for hf_model towers: "linear" or "mlp"
    inert: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind in (None, "clip", "hf"):  # these two follow hf_model (also after dataclasses.replace)
            self.kind = "hf" if self.hf_model else "clip"


@dataclass
class ModelConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    init_logit_scale: float = 2.659260036932778  # ln(1/0.07)
    init_logit_bias: float | None = None  # set for SigLIP-trained models
    name: str | None = None  # architecture name when it is a known one (a label, not part of the architecture)

    # ---- (de)serialisation -------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.vision.image_size

    @property
    def context_length(self) -> int:
        return self.text.context_length

    def to_dict(self) -> dict[str, Any]:
        """kontrast's layout: open_clip's ``{"embed_dim", "vision_cfg", "text_cfg", ...}`` with every field spelled out."""
        skip = {"convnext": _TRANSFORMER_FIELDS, "efficientnet_lite": _TRANSFORMER_FIELDS + _CONVNEXT_GEOMETRY}.get(
            self.vision.kind, _CONVNEXT_FIELDS)  # the other kinds' fields
        vision = {k: v for k, v in dataclasses.asdict(self.vision).items() if k != "inert" and k not in skip}
        for key in ("layers", "depths", "dims"):
            if isinstance(vision.get(key), tuple):
                vision[key] = list(vision[key])
        vision.update(self.vision.inert)
        text = {k: v for k, v in dataclasses.asdict(self.text).items() if k != "inert"}
        if text["eos_id"] is None:
            del text["eos_id"]
        text.update(self.text.inert)
        out: dict[str, Any] = {"embed_dim": self.embed_dim, "vision_cfg": vision, "text_cfg": text,
                               "init_logit_scale": self.init_logit_scale}
        if self.init_logit_bias is not None:
            out["init_logit_bias"] = self.init_logit_bias
        if self.name:
            out["name"] = self.name
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model config") -> ModelConfig:
        """Read kontrast's or open_clip's ``model_cfg`` layout, strictly (see the module docstring).

        ``source`` names the file in error messages.
        """
        r = _Keys(d, source, "")
        quick = r.get("quick_gelu", False)
        if not isinstance(quick, bool):
            raise r.refuse("quick_gelu", quick, "must be true or false")
        r.get("custom_text")  # open_clip's CustomTextCLIP: only the weights' names differ (text.*), read by the loader
        r.only("nonscalar_logit_scale", (False, None), "a logit scale of shape [1] is not implemented")
        r.only("multimodal_cfg", (None,), "CoCa's multimodal text decoder is not implemented")
        vision = _read_vision(_Keys(r.get("vision_cfg") or {}, source, "vision_cfg."), quick)
        text = _read_text(_Keys(r.get("text_cfg") or {}, source, "text_cfg."), quick)
        out = cls(embed_dim=int(r.get("embed_dim", 512)), vision=vision, text=text,
                  init_logit_scale=float(r.get("init_logit_scale", 2.659260036932778)),
                  init_logit_bias=_opt_float(r.get("init_logit_bias")), name=r.get("name"))
        r.finish()
        return out

    def to_open_clip(self) -> dict[str, Any]:
        """open_clip's ``model_cfg`` (only keys open_clip 3.x reads); ``ConfigError`` for what it cannot express."""
        v, t = self.vision, self.text
        acts = ([v.act] if v.kind == "vit" else []) + ([t.act] if t.kind == "clip" else [])
        quick = {a == "quick_gelu" for a in acts}
        if len(quick) > 1:
            raise ConfigError("open_clip configs use one activation for both towers (quick_gelu); this model mixes "
                              f"vision act={v.act!r} and text act={t.act!r}")
        vision: dict[str, Any] = {"image_size": v.image_size, "width": v.width}
        if v.kind == "convnext":
            from .config_convnext import convnext_open_clip

            vision = convnext_open_clip(v)
        elif v.kind == "efficientnet_lite":
            from .config_efficientnet import efficientnet_lite_open_clip

            vision = efficientnet_lite_open_clip(v)
        elif v.is_resnet:
            vision |= {"layers": list(v.layers), "patch_size": None}
            if v.head_width != 64:
                vision["head_width"] = v.head_width
        else:
            vision |= {"layers": v.layers, "patch_size": v.patch_size, "head_width": v.head_width,
                       "mlp_ratio": v.mlp_ratio}
            if v.pool_type != "tok":
                vision["pool_type"] = v.pool_type
            if v.final_ln_after_pool:
                vision["final_ln_after_pool"] = True
            if v.no_ln_pre:
                vision["no_ln_pre"] = True
            vision |= _open_clip_norm_act(v.ln_eps, v.act)
        vision.update(v.inert)
        text: dict[str, Any] = {"context_length": t.context_length, "vocab_size": t.vocab_size}
        if t.kind == "hf":
            pooler = {"mean": "mean_pooler", "cls": "cls_last_hidden_state_pooler"}[t.hf_pooler]
            text |= {"hf_model_name": t.hf_model, "hf_tokenizer_name": t.hf_model, "hf_pooler_type": pooler,
                     "hf_proj_type": t.hf_proj}
        else:
            text |= {"width": t.width, "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_ratio}
            if t.pool_type != "argmax":
                text["pool_type"] = t.pool_type
            if t.pool_type == "eos":
                text["eos_id"] = t.eos_id
            if t.no_causal_mask:
                text["no_causal_mask"] = True
            text |= _open_clip_norm_act(t.ln_eps, t.act)
        text.update(t.inert)
        out: dict[str, Any] = {"embed_dim": self.embed_dim, "vision_cfg": vision, "text_cfg": text}
        if quick == {True}:
            out["quick_gelu"] = True
        if self.init_logit_bias is not None:
            out["init_logit_bias"] = self.init_logit_bias
        return out

    def fingerprint_extras(self) -> dict[str, Any]:
        """Fields that change the computation and differ from the defaults of kontrast's first config layout:
        the fingerprint hashes them next to that layout, so models that could be described before keep their id."""
        out: dict[str, Any] = {}
        v, t = self.vision, self.text
        layout_kind = "resnet" if v.patch_size is None or isinstance(v.layers, tuple) else "vit"
        for name, value, default in (("vision.kind", v.kind, layout_kind), ("vision.pool_type", v.pool_type, "tok"),
                                     ("vision.final_ln_after_pool", v.final_ln_after_pool, False),
                                     ("vision.no_ln_pre", v.no_ln_pre, False),
                                     ("text.kind", t.kind, "hf" if t.hf_model else "clip"),
                                     ("text.pool_type", t.pool_type, "argmax"), ("text.eos_id", t.eos_id, None),
                                     ("text.no_causal_mask", t.no_causal_mask, False),
                                     *((f"vision.{k}", getattr(v, k), _CONVNEXT_DEFAULTS[k]) for k in _CONVNEXT_FIELDS)):
            if value != default:
                out[name] = value
        return out


# ---- strict reading ----------------------------------------------------------------------------------
class _Keys:
    """A config dict read key by key: what was never read is an unknown key, refused by ``finish``."""

    def __init__(self, d: dict[str, Any], source: str, prefix: str) -> None:
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a JSON object, not {d!r}")
        self.d, self.source, self.prefix, self.used = d, source, prefix, set()

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        value = self.d.get(key, default)
        return default if value is None and default is not None else value

    def has(self, key: str) -> bool:
        return key in self.d

    def refuse(self, key: str, value: Any, why: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.prefix}{key}={value!r} {why}")

    def only(self, key: str, allowed: tuple, why: str) -> None:
        """A key kontrast accepts only at its no-op value(s)."""
        value = self.get(key)
        if key in self.d and value not in allowed:
            raise self.refuse(key, value, f"is not supported: {why} (loading it would give another model)")

    def inert(self, keys: tuple[str, ...]) -> dict[str, Any]:
        return {k: self.get(k) for k in keys if k in self.d}

    def finish(self) -> None:
        unknown = [k for k in self.d if k not in self.used]
        if unknown:
            key = unknown[0]
            raise ConfigError(f"{self.source}: unknown key {self.prefix}{key}={self.d[key]!r}; kontrast does not know "
                              "what it changes and refuses to guess (remove it if it has no effect)")


_VISION_NOOPS = (("ls_init_value", (None,), "layer scale"),
                 ("attentional_pool", (False, None), "an attentional pooler (CoCa)"),
                 ("pos_embed_type", ("learnable", None), "fixed sin-cos position embeddings"),
                 ("block_type", (None, "default"), "custom attention blocks"),
                 ("qk_norm", (False, None), "q/k LayerNorm"), ("scaled_cosine_attn", (False, None), "cosine attention"),
                 ("scale_heads", (False, None), "head scales"), ("scale_attn_inner", (False, None), "inner attention norm"),
                 ("scale_attn", (False, None), "attention output norm"), ("scale_fc", (False, None), "MLP norm"))
_VISION_INERT = ("patch_dropout", "output_tokens", "attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained",
                 "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path")
_TEXT_NOOPS = (("ls_init_value", (None,), "layer scale"), ("embed_cls", (False, None), "a CoCa class token"),
               ("proj_bias", (False, None), "a text projection with bias"),
               ("proj_type", ("linear", None), "a text tower without a linear projection"),
               ("block_type", (None, "default"), "custom attention blocks"), ("qk_norm", (False, None), "q/k LayerNorm"),
               ("scaled_cosine_attn", (False, None), "cosine attention"), ("scale_heads", (False, None), "head scales"),
               ("scale_attn_inner", (False, None), "inner attention norm"),
               ("scale_attn", (False, None), "attention output norm"), ("scale_fc", (False, None), "MLP norm"))
_TEXT_INERT = ("output_tokens", "hf_model_pretrained", "final_ln_after_pool")
# Tokenizer keys of text_cfg, read by ``tokenizer_fields`` into the record's tokenizer config.
TOKENIZER_TEXT_KEYS = ("pad_id", "tokenizer_kwargs", "hf_tokenizer_name", "tokenizer_mode")


def _read_vision(r: _Keys, quick: bool) -> VisionConfig:
    timm = r.get("timm_model_name")
    if (timm and str(timm).startswith("convnext")) or r.d.get("kind") == "convnext":
        from .config_convnext import read_convnext

        return read_convnext(r, None if timm is None else str(timm))
    from .config_efficientnet import is_efficientnet_lite, read_efficientnet_lite

    if is_efficientnet_lite(timm) or r.d.get("kind") == "efficientnet_lite":
        return read_efficientnet_lite(r, str(timm))
    if timm:
        raise r.refuse("timm_model_name", timm, "is not supported: kontrast implements ConvNeXt and "
                       "EfficientNet-Lite trunks only among timm image towers (loading it would give another model)")
    for key, allowed, what in _VISION_NOOPS:
        r.only(key, allowed, what)
    layers = r.get("layers", 12)
    kind = r.get("kind")
    patch = r.get("patch_size", None if isinstance(layers, (list, tuple)) else 16)
    if kind is None:
        kind = "resnet" if patch is None or isinstance(layers, (list, tuple)) else "vit"
    if kind == "resnet":
        patch = None
    if kind not in VISION_KINDS:
        raise r.refuse("kind", kind, f"is not a vision tower kontrast implements ({', '.join(VISION_KINDS)})")
    size = _read_image_size(r)
    pool = r.get("pool_type", "tok")
    if pool not in VISION_POOLS:
        raise r.refuse("pool_type", pool, f"is not supported (kontrast implements {', '.join(VISION_POOLS)})")
    out = VisionConfig(
        kind=kind, image_size=int(size), layers=tuple(layers) if isinstance(layers, (list, tuple)) else int(layers),
        width=int(r.get("width", 768)), patch_size=None if patch is None else int(patch),
        head_width=int(r.get("head_width", 64)), mlp_ratio=float(r.get("mlp_ratio", 4.0)),
        act=_read_act(r, quick), ln_eps=_read_eps(r), pool_type=pool,
        final_ln_after_pool=bool(r.get("final_ln_after_pool", False)), no_ln_pre=bool(r.get("no_ln_pre", False)),
        inert=r.inert(_VISION_INERT),
    )
    r.get("mean")  # legacy kontrast files: the normalisation, read into the record's preprocessing config
    r.get("std")
    if kind == "resnet" and (pool != "tok" or out.final_ln_after_pool or out.no_ln_pre):
        raise r.refuse("pool_type", pool, "and final_ln_after_pool / no_ln_pre apply to ViT towers only")
    r.finish()
    return out


def _read_image_size(r: _Keys) -> int:
    size = r.get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise r.refuse("image_size", size, "is not supported: kontrast implements square inputs only")
        size = size[0]
    return int(size)


_TRANSFORMER_FIELDS = ("layers", "width", "patch_size", "head_width", "pool_type", "final_ln_after_pool", "no_ln_pre")
_CONVNEXT_FIELDS = ("timm_model_name", "timm_proj", "timm_proj_bias", "depths", "dims", "kernel_size")
_CONVNEXT_GEOMETRY = ("depths", "dims", "kernel_size", "mlp_ratio", "ln_eps")
_CONVNEXT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(VisionConfig) if f.name in _CONVNEXT_FIELDS}
def _read_text(r: _Keys, quick: bool) -> TextConfig:
    for key, allowed, what in _TEXT_NOOPS:
        r.only(key, allowed, what)
    hf_model = r.get("hf_model") or r.get("hf_model_name")
    kind = r.get("kind") or ("hf" if hf_model else "clip")
    if kind not in TEXT_KINDS:
        raise r.refuse("kind", kind, f"is not a text tower kontrast implements ({', '.join(TEXT_KINDS)})")
    pooler, oc = r.get("hf_pooler"), r.get("hf_pooler_type", "mean_pooler")
    if pooler is None:
        pooler = {"mean_pooler": "mean", "cls_last_hidden_state_pooler": "cls"}.get(oc)
        if pooler is None:
            raise r.refuse("hf_pooler_type", oc, "is not supported (kontrast implements mean_pooler and "
                           "cls_last_hidden_state_pooler; cls_pooler reads the encoder's pooler output)")
    proj, oc_proj = r.get("hf_proj"), r.get("hf_proj_type", "mlp")  # open_clip's default projection is an MLP
    proj = proj or oc_proj
    if proj not in ("linear", "mlp"):
        raise r.refuse("hf_proj_type" if r.has("hf_proj_type") else "hf_proj", proj, "is not supported (linear, mlp)")
    pool = r.get("pool_type", "argmax")
    if pool not in TEXT_POOLS:
        raise r.refuse("pool_type", pool, f"is not supported (kontrast implements {', '.join(TEXT_POOLS)})")
    eos = r.get("eos_id")
    if pool == "eos" and eos is None:
        eos = 2  # open_clip's default eos_id
    tokenizer_fields(r.d, r.source, r.prefix)  # validated here, read into the record
    r.inert(TOKENIZER_TEXT_KEYS)
    out = TextConfig(
        kind=kind, context_length=int(r.get("context_length", 77)), vocab_size=int(r.get("vocab_size", 49408)),
        width=int(r.get("width", 512)), heads=int(r.get("heads", 8)), layers=int(r.get("layers", 12)),
        mlp_ratio=float(r.get("mlp_ratio", 4.0)), act=_read_act(r, quick), ln_eps=_read_eps(r), pool_type=pool,
        eos_id=None if pool != "eos" else int(eos), no_causal_mask=bool(r.get("no_causal_mask", False)),
        hf_model=hf_model, hf_pooler=pooler, hf_proj=proj if hf_model else "linear",
        inert=r.inert(_TEXT_INERT),
    )
    r.finish()
    return out


def tokenizer_fields(text_cfg: dict[str, Any], source: str, prefix: str = "text_cfg.") -> dict[str, Any]:
    """What an open_clip / kontrast ``text_cfg`` says about the tokenizer: ``kind``, ``pad_id``, ``clean``,
    ``path`` (checked; ``ConfigError`` for tokenizers kontrast does not implement)."""
    r = _Keys(text_cfg, source, prefix)
    hf_model = r.get("hf_model") or r.get("hf_model_name")
    name = r.get("hf_tokenizer_name")
    if name and name != hf_model:
        raise r.refuse("hf_tokenizer_name", name, "is not supported: kontrast reads the CLIP BPE tokenizer, or a "
                       "Hugging Face text tower's own tokenizer.json")
    mode = r.get("tokenizer_mode")
    if mode is not None:
        raise r.refuse("tokenizer_mode", mode, "is not supported")
    kwargs = r.get("tokenizer_kwargs") or {}
    if not isinstance(kwargs, dict) or set(kwargs) - {"clean"} or kwargs.get("clean", "lower") != "lower":
        raise r.refuse("tokenizer_kwargs", kwargs, "is not supported: kontrast's CLIP tokenizer cleans text as "
                       "open_clip's clean='lower' (ftfy, html unescape, whitespace, lower case)")
    pad = r.get("pad_id")
    if hf_model:
        return {"kind": "hf_tokenizer_json", "pad_id": pad, "clean": None, "path": hf_model}
    return {"kind": "clip_bpe", "pad_id": 0 if pad is None else int(pad), "clean": "lower", "path": None}


def _read_act(r: _Keys, quick: bool) -> str:
    act = r.get("act")
    kwargs = r.get("act_kwargs")
    if act is None:
        act = "quick_gelu" if quick else "gelu"
        if kwargs:
            if quick or kwargs != {"approximate": "tanh"} and kwargs != {"approximate": "none"}:
                raise r.refuse("act_kwargs", kwargs, "is not supported (GELU with approximate 'tanh' or 'none')")
            act = "gelu_tanh" if kwargs["approximate"] == "tanh" else "gelu"
    elif kwargs:
        raise r.refuse("act_kwargs", kwargs, f"conflicts with act={act!r}")
    if act not in ACTIVATIONS:
        raise r.refuse("act", act, f"is not an activation kontrast implements ({', '.join(ACTIVATIONS)})")
    return act


def _read_eps(r: _Keys) -> float:
    eps = r.get("ln_eps")
    norm = r.get("norm_kwargs")
    if norm:
        if not isinstance(norm, dict) or set(norm) != {"eps"}:
            raise r.refuse("norm_kwargs", norm, "is not supported (only {'eps': ...})")
        if eps is not None and float(eps) != float(norm["eps"]):
            raise r.refuse("norm_kwargs", norm, f"conflicts with ln_eps={eps}")
        eps = norm["eps"]
    return DEFAULT_EPS if eps is None else float(eps)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _open_clip_norm_act(eps: float, act: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if eps != DEFAULT_EPS:
        out["norm_kwargs"] = {"eps": eps}
    if act == "gelu_tanh":
        out["act_kwargs"] = {"approximate": "tanh"}
    return out
