"""Tokenizers read from a checkpoint's own files: SentencePiece ``spiece.model`` and Hugging Face ``tokenizer.json``.

Both give ``tokenizer(texts) -> LongTensor [N, context_length]`` padded to the context length, as SigLIP requires
(its text tower pools the last position, so every text must have the same length as in training).

- ``SentencePieceTokenizer`` reproduces transformers' ``SiglipTokenizer``: lower-case (``do_lower_case``), ASCII
  punctuation removed, whitespace collapsed, SentencePiece pieces of the text as it follows a word boundary,
  ``</s>`` appended (kept when truncating), padded with the pad token (``</s>`` in Google's folders).
- ``JsonTokenizer`` runs ``tokenizer.json`` through the ``tokenizers`` library (its normalizer, pre-tokenizer, model
  and post-processor), with ``tokenizer_config.json``'s ``add_bos_token`` / ``add_eos_token`` (which transformers
  turns into the post-processor), pad token and padding side (Gemma/Siglip2 classes pad on the left unless the
  file says otherwise), after an optional text clean-up: open_clip's ``clean`` (``canonicalize``, ``lower``,
  ``whitespace``) from the open_clip config.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import KontrastError

# The files a checkpoint's own tokenizer reads (writers copy them along with the weights).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
SPIECE_UNDERLINE = "\u2581"
# transformers tokenizer classes whose default padding side is left
_LEFT_PADDING_CLASSES = {"GemmaTokenizer", "GemmaTokenizerFast", "Siglip2Tokenizer"}
_CLEANS = ("canonicalize", "lower", "whitespace", None)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise KontrastError(f"{path}: not readable JSON ({exc})") from exc


def _token_text(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json (a string or an AddedToken dict)."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def open_clip_clean(text: str, mode: str | None) -> str:
    """open_clip's ``HFTokenizer`` clean-up: ``basic_clean`` (ftfy, HTML unescape) then canonicalize / lower / whitespace."""
    if mode is None:
        return text
    from .tokenizer import basic_clean

    text = basic_clean(text)
    if mode == "canonicalize":
        text = text.replace("_", " ").translate(_PUNCTUATION).lower()
        return " ".join(text.split()).strip()
    text = " ".join(text.split()).strip()
    return text.lower() if mode == "lower" else text


class JsonTokenizer:
    """A ``tokenizer.json`` tokenizer padded to ``context_length`` (see the module docstring for the rules)."""

    kind = "tokenizer.json"

    def __init__(self, folder: str | Path, context_length: int = 64, clean: str | None = None) -> None:
        try:
            from tokenizers import Tokenizer as RustTokenizer
            from tokenizers import processors
        except ImportError as exc:
            raise KontrastError("this model's tokenizer needs the tokenizers package: pip install tokenizers") from exc
        if clean not in _CLEANS:
            raise KontrastError(f"tokenizer clean {clean!r} is not one of canonicalize, lower, whitespace")
        self.folder, self.context_length, self.clean = Path(folder), context_length, clean
        path = self.folder / "tokenizer.json"
        if not path.is_file():
            raise KontrastError(f"{path} not found: the model's folder has no tokenizer.json")
        self._tok = RustTokenizer.from_file(str(path))
        config = _read_json(self.folder / "tokenizer_config.json")
        self.config = config
        add_bos, add_eos = config.get("add_bos_token"), config.get("add_eos_token")
        if add_bos is not None or add_eos is not None:  # transformers rebuilds the post-processor from these flags
            bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
            parts, specials = [], []
            if add_bos and bos is not None:
                parts.append(f"{bos}:0")
                specials.append((bos, self._id(bos, "bos_token")))
            parts.append("$A:0")
            if add_eos and eos is not None:
                parts.append(f"{eos}:0")
                specials.append((eos, self._id(eos, "eos_token")))
            self._tok.post_processor = processors.TemplateProcessing(single=" ".join(parts), special_tokens=specials)
        pad = _token_text(config.get("pad_token"))
        self.pad_token_id = self._id(pad, "pad_token") if pad is not None else 0
        side = config.get("padding_side") or ("left" if config.get("tokenizer_class") in _LEFT_PADDING_CLASSES else "right")
        self.padding_side = side
        self._tok.no_padding()
        self._tok.no_truncation()
        self.last_truncated: list[int] = []

    def _id(self, token: str, what: str) -> int:
        index = self._tok.token_to_id(token)
        if index is None:
            raise KontrastError(f"{self.folder / 'tokenizer_config.json'}: {what} {token!r} is not in tokenizer.json")
        return index

    def encode(self, text: str) -> list[int]:
        """Ids of one text with the post-processor's special tokens, unpadded and untruncated."""
        return self._tok.encode(open_clip_clean(text, self.clean)).ids

    def num_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None, truncate: bool = True) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        self._tok.enable_truncation(max_length=length)
        self._tok.enable_padding(direction=self.padding_side, pad_id=self.pad_token_id, length=length,
                                 pad_token=self._tok.id_to_token(self.pad_token_id) or "<pad>")
        try:
            encodings = self._tok.encode_batch([open_clip_clean(t, self.clean) for t in texts])
        finally:
            self._tok.no_padding()
            self._tok.no_truncation()
        self.last_truncated = [i for i, e in enumerate(encodings) if e.overflowing]
        if self.last_truncated and not truncate:
            i = self.last_truncated[0]
            raise KontrastError(f"text {texts[i][:40]!r} is longer than the context length {length}; pass truncate=True")
        return torch.tensor([e.ids for e in encodings], dtype=torch.long).reshape(len(texts), length)


class SentencePieceTokenizer:
    """transformers' ``SiglipTokenizer`` on ``spiece.model`` (lower-case, no punctuation, ``</s>`` appended)."""

    kind = "sentencepiece"

    def __init__(self, folder: str | Path, context_length: int = 64) -> None:
        try:
            import sentencepiece as spm
        except ImportError as exc:
            raise KontrastError("this model's tokenizer (spiece.model) needs sentencepiece: pip install sentencepiece") from exc
        self.folder, self.context_length = Path(folder), context_length
        path = self.folder / "spiece.model"
        if not path.is_file():
            raise KontrastError(f"{path} not found: the model's folder has no spiece.model")
        self._sp = spm.SentencePieceProcessor(model_file=str(path))
        config = _read_json(self.folder / "tokenizer_config.json")
        self.config = config
        self.lower = bool(config.get("do_lower_case", True))
        self.unk = _token_text(config.get("unk_token")) or "<unk>"
        eos = _token_text(config.get("eos_token")) or "</s>"
        pad = _token_text(config.get("pad_token")) or "</s>"
        self.eos_token_id, self.pad_token_id = self._piece_id(eos, "eos_token"), self._piece_id(pad, "pad_token")
        self._unk_length = len(self._sp.encode(self.unk, out_type=str))
        self.last_truncated: list[int] = []

    def _piece_id(self, piece: str, what: str) -> int:
        index = self._sp.piece_to_id(piece)
        if index == self._sp.unk_id() and piece != self._sp.id_to_piece(self._sp.unk_id()):
            raise KontrastError(f"{self.folder / 'tokenizer_config.json'}: {what} {piece!r} is not in spiece.model")
        return index

    def canonicalize(self, text: str) -> str:
        """SiglipTokenizer's clean-up: lower-case, ASCII punctuation removed, whitespace runs to one space, stripped."""
        if self.lower:
            text = text.lower()
        return re.sub(r"\s+", " ", text.translate(_PUNCTUATION)).strip()

    def encode(self, text: str) -> list[int]:
        """Ids without padding or truncation: the pieces of ``▁`` + the cleaned text, then ``</s>``."""
        text = self.canonicalize(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "))
        # encode after the unknown token and drop its pieces: the text is cut as following a word boundary
        pieces = self._sp.encode(self.unk + text, out_type=str)
        pieces = pieces[self._unk_length:] if len(pieces) >= self._unk_length else pieces
        return [self._sp.piece_to_id(p) for p in pieces] + [self.eos_token_id]

    def num_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None, truncate: bool = True) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        out = torch.full((len(texts), length), self.pad_token_id, dtype=torch.long)
        self.last_truncated = []
        for row, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > length:
                if not truncate:
                    raise KontrastError(f"text {text[:40]!r} is longer than the context length {length}; pass truncate=True")
                self.last_truncated.append(row)
                ids = ids[: length - 1] + [self.eos_token_id]  # truncation keeps the end-of-sequence token
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def tokenizer_from_folder(folder: str | Path, context_length: int, clean: str | None = None):
    """The tokenizer a checkpoint folder carries: ``tokenizer.json`` first, else ``spiece.model``; one line if none."""
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return JsonTokenizer(folder, context_length, clean)
    if (folder / "spiece.model").is_file():
        return SentencePieceTokenizer(folder, context_length)
    raise KontrastError(f"{folder}: no tokenizer.json or spiece.model; this model's tokenizer travels with its "
                        "checkpoint (copy those files from the model's repository into the folder)")
