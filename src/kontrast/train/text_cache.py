"""Cached text features for a locked text tower.

A frozen text tower maps each caption to the same vector every time, so it is computed once per distinct
caption (in ``no_grad``) and reused: training a locked MiniLM tower costs one pass over the captions.
For a Hugging Face tower the cache holds the pooled encoder output and the (trainable) projection runs
each step; for kontrast's own text transformer the cache holds the final text features.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

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

    def precompute(self, captions: Sequence[str], device: torch.device, folder: Path | None = None) -> None:
        """Fill the cache for every caption at once, reusing a copy on disk (keyed by the text tower and the
        captions; stored in float16) so that a rerun or a resumed run does not encode them again."""
        import hashlib

        texts = sorted(set(captions) - set(self.store))
        if not texts:
            return
        if not self.pooled:  # kontrast's own locked tower: its features depend on its weights, kept in memory only
            self.features(texts, device)
            return
        cfg = self.model.config.text
        ident = json.dumps([cfg.hf_model, cfg.hf_pooler, texts])
        path = (folder or _cache_dir()) / f"{hashlib.sha256(ident.encode()).hexdigest()[:16]}.pt"
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved["texts"] == texts:
                self.store.update(zip(texts, saved["features"].float()))
                return
        self.features(texts, device)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"texts": texts, "features": torch.stack([self.store[t] for t in texts]).half()}, tmp)
        os.replace(tmp, path)

    def encode(self, captions: Sequence[str], device: torch.device) -> torch.Tensor:
        """Unnormalised text embeddings ``[n, E]``; the HF projection keeps its gradient."""
        feats = self.features(captions, device)
        return self.model.text.proj(feats) if self.pooled else feats


def _cache_dir() -> Path:
    from ..evaluate.features import default_cache_dir

    return default_cache_dir().parent / "text"
