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
        """Fill the cache for every caption at once. A Hugging Face tower's pooled outputs are also kept on disk,
        one float16 store per tower that grows with every new caption, so that a rerun, a resumed run or another
        mix of the same data encodes only the captions it has not met before."""
        import hashlib

        texts = sorted(set(captions) - set(self.store))
        if not texts:
            return
        if not self.pooled:  # kontrast's own locked tower: its features depend on its weights, kept in memory only
            self.features(texts, device)
            return
        cfg = self.model.config.text
        ident = json.dumps([cfg.hf_model, cfg.hf_pooler])
        path = (folder or _cache_dir()) / f"{hashlib.sha256(ident.encode()).hexdigest()[:16]}.pt"
        known: dict[str, torch.Tensor] = {}
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            known = dict(zip(saved["texts"], saved["features"]))
        self.store.update((t, known[t].float()) for t in texts if t in known)
        missing = [t for t in texts if t not in known]
        if not missing:
            return
        self.features(missing, device)
        known.update((t, self.store[t].half()) for t in missing)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        names = sorted(known)
        torch.save({"texts": names, "features": torch.stack([known[t] for t in names])}, tmp)
        os.replace(tmp, path)

    def encode(self, captions: Sequence[str], device: torch.device) -> torch.Tensor:
        """Unnormalised text embeddings ``[n, E]``; the HF projection keeps its gradient."""
        feats = self.features(captions, device)
        return self.model.text.proj(feats) if self.pooled else feats


def _cache_dir() -> Path:
    from ..evaluate.features import default_cache_dir

    return default_cache_dir().parent / "text"
