"""Cached text features for a locked text tower.

A frozen text tower maps each caption to the same vector every time, so it is computed once per distinct
caption (in ``no_grad``) and reused: training a locked MiniLM tower costs one pass over the captions.
For a Hugging Face tower the cache holds the pooled encoder output and the (trainable) projection runs
each step; for kontrast's own text transformer the cache holds the final text features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..models import CLIP


class TextFeatureCache:
    def __init__(self, model: CLIP, tokenizer: Callable, chunk: int = 256) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.chunk = chunk
        self.pooled = bool(getattr(model.config.text, "hf_model", None))  # cache before the HF projection
        self.store: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _compute(self, texts: list[str], device: torch.device) -> torch.Tensor:
        ids = self.tokenizer(texts).to(device)
        if self.pooled:
            return self.model.text.pooled(ids).float()
        return self.model.encode_text(ids).float()

    def features(self, captions: Sequence[str], device: torch.device) -> torch.Tensor:
        """Cached tower output ``[n, D]`` for ``captions`` (computed once per distinct caption)."""
        missing = list(dict.fromkeys(c for c in captions if c not in self.store))
        for i in range(0, len(missing), self.chunk):
            part = missing[i: i + self.chunk]
            for text, vec in zip(part, self._compute(part, device).cpu()):
                self.store[text] = vec
        return torch.stack([self.store[c] for c in captions]).to(device)

    def encode(self, captions: Sequence[str], device: torch.device) -> torch.Tensor:
        """Unnormalised text embeddings ``[n, E]``; the HF projection keeps its gradient."""
        feats = self.features(captions, device)
        return self.model.text.proj(feats) if self.pooled else feats
