"""Tokenizer for Hugging Face text towers (WordPiece/BPE from a local ``tokenizer.json``).

It mirrors kontrast's CLIP tokenizer interface: ``tokenizer(texts) -> LongTensor [N, context_length]``,
padded with the encoder's pad id and truncated to the context length.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import KontrastError


class HFTokenizer:
    def __init__(self, folder: str | Path, context_length: int = 77, pad_id: int | None = None) -> None:
        try:
            from tokenizers import Tokenizer as RustTokenizer
        except ImportError as exc:
            raise KontrastError("a Hugging Face text tower needs the tokenizers package: pip install tokenizers") from exc
        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise KontrastError(f"{path} not found: the text tower's folder has no tokenizer.json")
        self.folder = Path(folder)
        self.context_length = context_length
        self._tok = RustTokenizer.from_file(str(path))
        pad = self._tok.token_to_id("[PAD]") if pad_id is None else pad_id  # None: the files' own [PAD]
        self.pad_token_id = 0 if pad is None else int(pad)
        self._tok.enable_truncation(max_length=context_length)
        self._tok.enable_padding(pad_id=self.pad_token_id, length=context_length)
        self.last_truncated: list[int] = []

    def num_tokens(self, text: str) -> int:
        self._tok.no_truncation()
        try:
            return len(self._tok.encode(text).ids) - self._tok.encode("").ids.count(self.pad_token_id)
        finally:
            self._tok.enable_truncation(max_length=self.context_length)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None, truncate: bool = True) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        if length != self.context_length:
            self._tok.enable_truncation(max_length=length)
            self._tok.enable_padding(pad_id=self.pad_token_id, length=length)
        try:
            encodings = self._tok.encode_batch(list(texts))
        finally:
            if length != self.context_length:
                self._tok.enable_truncation(max_length=self.context_length)
                self._tok.enable_padding(pad_id=self.pad_token_id, length=self.context_length)
        self.last_truncated = [i for i, e in enumerate(encodings) if e.overflowing]
        if self.last_truncated and not truncate:
            i = self.last_truncated[0]
            raise KontrastError(f"text {texts[i][:40]!r} is longer than the context length {length}; pass truncate=True")
        return torch.tensor([e.ids for e in encodings], dtype=torch.long)
