"""Model families: which kinds of CLIP kontrast implements, and how to tell a family from a name or a config.

open_clip 3.3 lists 196 pretrained (architecture, tag) pairs across many families. kontrast implements some of
them natively; the others must be refused in one line that names the family, never loaded as another
architecture. The pretrained registry (``checkpoints/pretrained_registry.json``) records each pair's family;
``family_of_config`` reads it from an open_clip config (``open_clip_config.json`` / ``model_cfg``), where the
family shows in keys such as ``timm_model_name``, ``multimodal_cfg`` or the text tower's ``hf_model_name``.

This module imports nothing heavy; it holds data and small pure functions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import KontrastError

# Family name -> what it is (shown by ``kontrast info`` and in refusals).
FAMILIES: dict[str, str] = {
    "ViT": "OpenAI-style CLIP with a Vision Transformer image tower: OpenAI, LAION, DataComp, DFN, MetaCLIP",
    "ResNet": "OpenAI-style CLIP with a modified ResNet image tower and attention pooling",
    "ConvNeXt": "CLIP with a ConvNeXt image tower: a timm convnext_* trunk and a linear or MLP head",
    "EfficientNet-Lite": "CLIP with an EfficientNet-Lite image tower: a timm tf_efficientnet_lite* trunk, "
                         "average-pooled, and a linear or MLP head",
    "SigLIP": "sigmoid-loss ViT towers with an attention-pool image head and last-token text pooling",
    "SigLIP 2": "SigLIP towers with the SigLIP 2 tokenizer",
    "EVA": "EVA-CLIP: EVA01 / EVA02 image towers with rotary embeddings and SwiGLU",
    "PE": "Perception Encoder, PE-Core",
    "MobileCLIP": "MobileCLIP and MobileCLIP2: FastViT / MCi image towers",
    "CoCa": "contrastive captioners with a multimodal text decoder",
    "CLIPA": "CLIPA: no ln_pre, pooled final LayerNorm, bidirectional text tower",
    "ViTamin": "ViTamin image towers",
    "NLLB-CLIP": "an NLLB text encoder from Hugging Face",
    "RoBERTa": "a RoBERTa text tower from Hugging Face",
    "XLM-RoBERTa": "an XLM-RoBERTa text tower from Hugging Face",
    "mT5": "an mT5 text tower from Hugging Face",
    "MetaCLIP 2": "MetaCLIP 2 worldwide: EOS-id text pooling and a multilingual tokenizer",
    "timm": "an image tower from timm that kontrast does not implement, such as Swin or other timm ViTs",
}

# Families kontrast loads. Helpers that add a family add it here (and to README's family table).
SUPPORTED: frozenset[str] = frozenset({"ViT", "ResNet", "ConvNeXt", "EfficientNet-Lite", "SigLIP", "SigLIP 2"})

# timm trunk name patterns of the families (first match wins).
_TIMM_FAMILIES: tuple[tuple[str, str], ...] = (
    (r"^convnext", "ConvNeXt"),
    (r"^tf_efficientnet_lite\d$", "EfficientNet-Lite"),
    (r"^eva", "EVA"),
    (r"^vit_pe_", "PE"),
    (r"^(fastvit_mci|vit_\w+_mci)", "MobileCLIP"),
    (r"^vitamin_", "ViTamin"),
    (r"siglip", "SigLIP"),
)
# Hugging Face text towers by model name (open_clip's ``hf_model_name``).
_HF_TEXT_FAMILIES: tuple[tuple[str, str], ...] = (
    (r"xlm-roberta", "XLM-RoBERTa"),
    (r"roberta", "RoBERTa"),
    (r"nllb", "NLLB-CLIP"),
    (r"mt5", "mT5"),
)


def is_supported(family: str) -> bool:
    """Whether kontrast implements ``family``."""
    return family in SUPPORTED


def family_of_config(cfg: Mapping[str, Any]) -> str:
    """The family of an open_clip / kontrast config dict (``model_cfg`` wrapper accepted)."""
    return family_evidence(cfg)[0]


def family_evidence(cfg: Mapping[str, Any]) -> tuple[str, str]:
    """``(family, evidence)`` of an open_clip / kontrast config dict; ``evidence`` names the deciding key and value.

    Reads the keys that change what a model is: a CoCa decoder, a Hugging Face text tower by name, a timm
    trunk, CLIPA's and MetaCLIP 2's tokenizers (with their pooling switches), SigLIP 2's tokenizer name.
    """
    cfg = cfg.get("model_cfg", cfg)
    vision = cfg.get("vision_cfg") or {}
    text = cfg.get("text_cfg") or {}
    if "multimodal_cfg" in cfg:
        return "CoCa", "key 'multimodal_cfg'"
    hf_text = str(text.get("hf_model_name") or "")
    for pattern, family in _HF_TEXT_FAMILIES:  # a named text tower decides (nllb-clip-*-siglip is NLLB-CLIP)
        if re.search(pattern, hf_text, re.IGNORECASE):
            return family, f"text_cfg.hf_model_name {hf_text!r}"
    timm_name = str(vision.get("timm_model_name") or "")
    if timm_name:
        evidence = f"vision_cfg.timm_model_name {timm_name!r}"
        for pattern, family in _TIMM_FAMILIES:
            if re.search(pattern, timm_name):
                if family == "SigLIP" and "siglip2" in str(text.get("hf_tokenizer_name", "")).lower():
                    return "SigLIP 2", evidence
                return family, evidence
        return "timm", evidence
    # CLIPA's and MetaCLIP 2's pooling switches (no_ln_pre, final_ln_after_pool, avg / last / eos pooling,
    # bidirectional text) are implemented (kontrast.config); what kontrast lacks is their tokenizers, named by
    # hf_tokenizer_name (bert-base-uncased with strip_sep_token; facebook/xlm-v-base).
    tokenizer = text.get("hf_tokenizer_name")
    clipa = any(vision.get(k) for k in ("no_ln_pre", "final_ln_after_pool")) or vision.get("pool_type") not in (None, "tok")
    if tokenizer and clipa:
        return "CLIPA", f"text_cfg.hf_tokenizer_name {tokenizer!r}"
    if tokenizer and (text.get("pool_type") == "eos" or "eos_id" in text):
        return "MetaCLIP 2", f"text_cfg.hf_tokenizer_name {tokenizer!r}"
    if isinstance(vision.get("layers"), (list, tuple)):
        return "ResNet", "vision_cfg.layers (a list of stage depths)"
    return "ViT", "vision_cfg.patch_size"


def unsupported_message(family: str, what: str) -> str:
    """One line: ``what`` belongs to ``family``, which kontrast does not implement, and what it does load."""
    description = FAMILIES.get(family, family)
    return (
        f"{what} belongs to the {family} family ({description}), which kontrast does not implement yet; "
        f"supported families: {', '.join(sorted(SUPPORTED))} (use open_clip for {family} models)"
    )


def require_supported(family: str, what: str) -> None:
    """Raise a one-line ``KontrastError`` when ``family`` is not implemented."""
    if not is_supported(family):
        raise KontrastError(unsupported_message(family, what))
