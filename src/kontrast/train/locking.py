"""Locked and partly locked towers (open_clip's ``--lock-image`` / ``--lock-text`` family of options).

``lock_text`` freezes the text tower. ``lock_text_unlocked_layers`` then leaves its last N groups trainable,
with open_clip's grouping:

- kontrast's own text transformer (CLIP, SigLIP): ``[token + position embeddings, block 0, ..., block L-2,
  block L-1 + final LayerNorm, projection]``, so N = 1 trains the projection only and N = 2 also the last block;
- a Hugging Face encoder (``text.transformer``): ``[embeddings, layer 0, ..., layer L-1]``; its projection
  ``text.proj`` is trained unless ``lock_text_proj`` (as with a fully locked tower).

``lock_text_freeze_layer_norm`` (default true, kontrast's behaviour before the option) keeps a Hugging Face
encoder's LayerNorms frozen inside the locked groups; false trains them, as open_clip does without
``--lock-text-freeze-layer-norm``. A tower whose encoder has no trainable weight left is "fully locked": its
outputs are then cached per caption (:mod:`.text_cache`) and a Hugging Face encoder is not written into
training checkpoints.
"""

from __future__ import annotations

from torch import nn

from ..errors import KontrastError
from .config import TrainConfig


def hf_text(model: nn.Module) -> bool:
    """Whether the text tower is a Hugging Face encoder (``text.transformer`` + ``text.proj``)."""
    return bool(getattr(model.config.text, "hf_model", None))


def text_parameters(model: nn.Module, include_proj: bool) -> list[nn.Parameter]:
    """Every parameter of the text tower (a Hugging Face tower's projection only with ``include_proj``)."""
    if hf_text(model):
        mods = [model.text.transformer] + ([model.text.proj] if include_proj else [])
        return [p for m in mods for p in m.parameters()]
    return [p for n, p in model.named_parameters() if not n.startswith("visual.") and n not in ("logit_scale", "logit_bias")]


def _own_text_module(model: nn.Module) -> nn.Module:
    """The module holding kontrast's own text transformer: the CLIP itself (``token_embedding``, ``transformer``,
    ``ln_final``, ``text_projection`` as attributes) or SigLIP's ``text`` tower (the same names)."""
    return model if hasattr(model, "token_embedding") else model.text


def text_lock_groups(model: nn.Module) -> list[list[nn.Module | nn.Parameter]]:
    """The text tower's groups in input-to-output order (see the module docstring); the last N are unlocked."""
    if hf_text(model):
        encoder = model.text.transformer
        stack = getattr(encoder, "encoder", encoder)
        layers = getattr(stack, "layer", None) or getattr(stack, "layers", None)
        embeddings = getattr(encoder, "embeddings", None)
        if layers is None or embeddings is None:
            raise KontrastError(f"lock_text_unlocked_layers: cannot find the layers of the Hugging Face text tower "
                                f"{model.config.text.hf_model!r} (a {type(encoder).__name__})")
        return [[embeddings]] + [[layer] for layer in layers]
    text = _own_text_module(model)
    blocks = list(text.transformer.resblocks)
    proj = text.text_projection
    return ([[text.token_embedding, text.positional_embedding]] + [[b] for b in blocks[:-1]]
            + [[blocks[-1], text.ln_final], [proj]])


def _params(group: list[nn.Module | nn.Parameter]) -> list[nn.Parameter]:
    return [p for item in group for p in ([item] if isinstance(item, nn.Parameter) else item.parameters())]


def text_fully_locked(cfg: TrainConfig) -> bool:
    """Whether a ``lock_text`` recipe leaves no weight of the text encoder trainable (the cache's condition)."""
    return cfg.lock_text and not cfg.lock_text_unlocked_layers and cfg.lock_text_freeze_layer_norm


def apply_locks(model: nn.Module, cfg: TrainConfig) -> None:
    """Freeze the locked towers or groups (no gradients, eval mode; call after ``model.train()``)."""
    if cfg.lock_image:
        model.visual.eval()
        for p in model.visual.parameters():
            p.requires_grad_(False)
    if not cfg.lock_text:
        return
    hf = hf_text(model)
    if not hf and not cfg.lock_text_freeze_layer_norm:
        raise KontrastError("lock_text_freeze_layer_norm false applies to Hugging Face text towers only: kontrast's "
                            "own text transformer locks its LayerNorms with their groups (as open_clip)")
    for p in text_parameters(model, include_proj=cfg.lock_text_proj or not hf):
        p.requires_grad_(False)
    # the module holding the text blocks: an HF encoder, CLIP's ``transformer``, or SigLIP's ``text`` tower
    for m in ([model.text.transformer] if hf else [getattr(model, "transformer", None) or model.text]):
        m.eval()
    n = cfg.lock_text_unlocked_layers
    if n:
        groups = text_lock_groups(model)
        if n > len(groups):
            raise KontrastError(f"lock_text_unlocked_layers {n} is more than the text tower's {len(groups)} groups "
                                f"({'embeddings + layers' if hf else 'embeddings, blocks, projection'})")
        for group in groups[-n:]:
            for item in group:
                if isinstance(item, nn.Module):
                    item.train()  # dropout where the unlocked layers have it
            for p in _params(group):
                p.requires_grad_(True)
    if hf and not cfg.lock_text_freeze_layer_norm:
        for name, p in model.text.transformer.named_parameters():
            if "LayerNorm" in name.split("."):
                p.requires_grad_(True)
