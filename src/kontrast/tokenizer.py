"""CLIP's byte-level BPE tokenizer (OpenAI vocabulary, open_clip conventions), exact and fast.

The ids are exactly those of open_clip's ``SimpleTokenizer`` (the reference fixtures check 400 cases):

    ftfy.fix_text -> html.unescape twice -> strip -> collapse whitespace -> lowercase
    -> regex pre-tokenisation -> byte-level BPE with ``</w>`` word ends -> [sot, ids..., eot] -> zero padding

Why it is fast without changing a single id:

* **Fast path.** ``ftfy.fix_text`` and ``html.unescape`` are the slow steps, and both are the identity on
  printable ASCII (plus tab/newline) without ``&``: ftfy only repairs non-ASCII text, control characters and
  HTML entities, and ``html.unescape`` only acts on ``&``. Such texts (almost all captions) skip them.
* **Word and chunk caches.** No regex match spans whitespace (every alternative excludes ``\\s``), so
  the ids of a cleaned text are the concatenation of the ids of its space-separated chunks. Each
  distinct chunk (``"cat,"``) is pre-tokenised and BPE-merged once; afterwards a text costs
  ``lower().split()`` plus one dict look-up per chunk. Words (``"cat"``) are cached too, since one
  word appears in many chunks. Both caches are bounded (cleared when full).
* **Rust merges.** With the ``tokenizers`` package installed (``backend="auto"``), new words are merged by
  its BPE model, about 3x faster than Python and provably identical for this vocabulary (see
  ``_rust_bpe``); ``backend="python"`` keeps everything in Python.
* **Slow-path text cache.** Texts that need ftfy (non-ASCII, ``&``, control characters) are cached whole
  (bounded), so repeated captions pay ftfy once.
* **Vectorised assembly.** Rows are written into one preallocated int64 numpy array with fancy indexing and
  handed to torch without a copy.

The vocabulary is read lazily on first use, never at import.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import itertools
import logging
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import ftfy
import numpy as np
import regex
import torch

from kontrast.errors import KontrastError

__all__ = [
    "EOT_TEXT",
    "SOT_TEXT",
    "SimpleTokenizer",
    "Tokenizer",
    "basic_clean",
    "bytes_to_unicode",
    "default_bpe_path",
    "get_tokenizer",
    "tokenize",
    "tokenize_with_info",
]

logger = logging.getLogger(__name__)

SOT_TEXT = "<start_of_text>"
EOT_TEXT = "<end_of_text>"
NUM_MERGES = 49152 - 256 - 2  # merges used by CLIP: lines 1..48894 of the merges file (line 0 is a header)
BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"

# open_clip's pre-tokeniser (applied to lowercased text, IGNORECASE as in the reference).
_WORD_PATTERN = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# Characters outside this set may be changed by ftfy (control characters, terminal escapes, ...).
_NOT_FAST_ASCII = re.compile(r"[^\t\n\x20-\x7e]")

_CHUNK_CACHE_SIZE = 200_000  # distinct whitespace-separated chunks kept (cleared when exceeded)
_TEXT_CACHE_SIZE = 50_000  # distinct slow-path texts kept (cleared when exceeded)
_NO_MERGE = 1 << 30  # rank of a pair that has no merge


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Map every byte 0..255 to a printable unicode character (GPT-2/CLIP byte-level BPE convention).

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100 onwards, in byte order.
    The dict's insertion order (printable bytes first) is the order of the first 256 vocabulary ids.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def basic_clean(text: str) -> str:
    """The reference cleaning: ftfy, HTML unescape twice, strip, collapse whitespace, lowercase."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


def is_fast_text(text: str) -> bool:
    """True when ftfy and html.unescape provably leave ``text`` unchanged.

    That is printable ASCII, tab and newline, without ``&`` (ftfy acts on non-ASCII text, control
    characters, ``\\r`` and HTML entities; ``html.unescape`` only on ``&``).
    """
    return text.isascii() and "&" not in text and (text.isprintable() or _NOT_FAST_ASCII.search(text) is None)


def default_bpe_path() -> str:
    """Path of the vocabulary shipped with kontrast (``kontrast/assets/bpe_simple_vocab_16e6.txt.gz``)."""
    return str(resources.files("kontrast").joinpath("assets", BPE_FILENAME))


@functools.lru_cache(maxsize=4)
def _load_vocab(bpe_path: str) -> tuple[tuple[str, ...], dict[str, int], dict[tuple[str, str], int]]:
    """Read the merges file once per path: token strings in id order, their ids, and every merge's rank.

    The dicts are shared by all tokenizers of this path and never modified.
    """
    path = Path(bpe_path)
    if not path.is_file():
        raise KontrastError(f"BPE vocabulary not found: {bpe_path} (pass bpe_path=None for the bundled one)")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:  # only the first 48,895 of 262,146 lines
            lines = list(itertools.islice(f, 1, NUM_MERGES + 1))
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise KontrastError(
            f"cannot read BPE vocabulary {bpe_path}: {e} (expected a gzipped merges file)"
        ) from e
    merges = [tuple(line.split()) for line in lines]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise KontrastError(
            f"BPE vocabulary {bpe_path} is not a CLIP merges file (need {NUM_MERGES} merge lines)"
        )
    byte_chars = list(bytes_to_unicode().values())
    tokens = [
        *byte_chars,
        *(c + "</w>" for c in byte_chars),
        *("".join(m) for m in merges),
        SOT_TEXT,
        EOT_TEXT,
    ]
    ranks = {m: i for i, m in enumerate(merges)}
    logger.debug("loaded BPE vocabulary %s (%d tokens)", bpe_path, len(tokens))
    return tuple(tokens), {t: i for i, t in enumerate(tokens)}, ranks  # type: ignore[return-value]


class Tokenizer:
    """CLIP BPE tokenizer: ``tok(texts)`` -> ``LongTensor[N, context_length]``, ``[sot, ..., eot, 0, ...]``.

    Identical ids to open_clip's ``SimpleTokenizer``. After each call, ``last_truncated`` lists the rows
    (indices into the input) that were longer than the context and cut, so callers can warn.
    """

    def __init__(self, bpe_path: str | None = None, context_length: int = 77, backend: str = "auto") -> None:
        if context_length < 2:
            raise KontrastError(f"context_length={context_length} is too small (need >= 2 for sot and eot)")
        if backend not in ("auto", "python", "rust"):
            raise KontrastError(f"unknown tokenizer backend {backend!r} (use 'auto', 'python' or 'rust')")
        has_rust = importlib.util.find_spec("tokenizers") is not None
        if backend == "rust" and not has_rust:
            raise KontrastError(
                "tokenizer backend 'rust' needs the tokenizers package (pip install tokenizers)"
            )
        # Which engine merges new words; ids are identical either way (see _rust_bpe).
        self.backend = ("rust" if has_rust else "python") if backend == "auto" else backend
        self._rust_model = None
        self.bpe_path = bpe_path or default_bpe_path()
        self.context_length = context_length
        self._tokens, self.encoder, self._ranks = _load_vocab(self.bpe_path)
        self.vocab_size = len(self._tokens)
        self.sot_token_id = self.encoder[SOT_TEXT]
        self.eot_token_id = self.encoder[EOT_TEXT]
        self.all_special_ids = [self.sot_token_id, self.eot_token_id]
        self._word_re = regex.compile(_WORD_PATTERN, regex.IGNORECASE)
        # bytes.decode("latin-1") then translate() turns UTF-8 bytes into byte-level BPE characters in C.
        self._byte_table = str.maketrans({chr(b): c for b, c in bytes_to_unicode().items()})
        self._special_words = {SOT_TEXT: (self.sot_token_id,), EOT_TEXT: (self.eot_token_id,)}
        self._word_cache: dict[str, tuple[int, ...]] = dict(self._special_words)
        self._chunk_cache: dict[str, tuple[int, ...]] = {}
        self._text_cache: dict[str, tuple[int, ...]] = {}
        self._decoder: list[bytes] | None = None
        self.last_truncated: list[int] = []

    def __getstate__(self) -> dict:
        """Pickle only the settings (small, for DataLoader workers); unpickling reloads the vocabulary."""
        return {"bpe_path": self.bpe_path, "context_length": self.context_length, "backend": self.backend}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, context_length={self.context_length}, "
            f"backend={self.backend!r})"
        )

    # ------------------------------------------------------------------ BPE
    def _bpe(self, word: str) -> tuple[int, ...]:
        """Merge one byte-level word (``</w>`` appended to its last symbol) into vocabulary ids.

        Repeatedly applies the lowest-ranked merge present, to every non-overlapping occurrence from left
        to right, until no adjacent pair has a merge (the reference algorithm, done in place).
        """
        parts = [*word[:-1], word[-1] + "</w>"]
        get = self._ranks.get
        while len(parts) > 1:
            best, j = _NO_MERGE, -1
            for k in range(len(parts) - 1):
                r = get((parts[k], parts[k + 1]), _NO_MERGE)
                if r < best:
                    best, j = r, k
            if j < 0:
                break
            first, second = parts[j], parts[j + 1]
            parts[j : j + 2] = [first + second]
            k = j + 1  # later occurrences of the same pair (they cannot overlap the merged one)
            while k < len(parts) - 1:
                if parts[k] == first and parts[k + 1] == second:
                    parts[k : k + 2] = [first + second]
                k += 1
        encoder = self.encoder
        return tuple(encoder[p] for p in parts)

    def _rust_bpe(self, word: str) -> tuple[int, ...]:
        """Same merges as ``_bpe``, about 3x faster, by the ``tokenizers`` (Rust) BPE model.

        Rust applies merges through a priority queue (lowest rank, then leftmost) instead of rank passes.
        The two agree when every merge's operands are made by lower-ranked merges and each token string
        has one merge, which holds for the CLIP vocabulary (checked by tests/test_tokenizer.py).
        """
        if self._rust_model is None:
            from tokenizers import models

            self._rust_model = models.BPE(
                vocab=self.encoder,
                merges=list(self._ranks),
                end_of_word_suffix="</w>",
                continuing_subword_prefix="",
                dropout=None,
                fuse_unk=False,
            )
        return tuple(t.id for t in self._rust_model.tokenize(word))

    def _encode_word(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-tokenised word (a regex match), cached: a word recurs in many chunks."""
        # printable ASCII bytes (0x21-0x7e) are their own byte-level characters; others use the byte table
        plain = word.isascii() and word.isprintable()
        chars = word if plain else word.encode("utf-8").decode("latin-1").translate(self._byte_table)
        ids = self._rust_bpe(chars) if self.backend == "rust" else self._bpe(chars)
        if len(self._word_cache) >= _CHUNK_CACHE_SIZE:
            self._word_cache.clear()
            self._word_cache.update(self._special_words)
        self._word_cache[word] = ids
        return ids

    def _encode_chunk(self, chunk: str) -> tuple[int, ...]:
        """Ids of one cleaned, lowercased, whitespace-free chunk (regex pre-tokenisation + BPE), cached."""
        words = self._word_cache
        ids: list[int] = []
        for word in self._word_re.findall(chunk):
            w = words.get(word)
            ids.extend(w if w is not None else self._encode_word(word))
        result = tuple(ids)
        if len(self._chunk_cache) >= _CHUNK_CACHE_SIZE:
            self._chunk_cache.clear()
        self._chunk_cache[chunk] = result
        return result

    def _encode_cleaned(self, cleaned: str) -> list[int]:
        """Ids of an already cleaned (collapsed, lowercased) text, one cached look-up per chunk."""
        cache = self._chunk_cache
        ids: list[int] = []
        for chunk in cleaned.split():  # a plain loop measured faster than map/chain variants
            c = cache.get(chunk)
            ids.extend(c if c is not None else self._encode_chunk(chunk))
        return ids

    # ------------------------------------------------------------------ public API
    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` (no sot/eot, no truncation), as open_clip's ``SimpleTokenizer.encode``."""
        if is_fast_text(text):
            return self._encode_cleaned(text.lower())
        hit = self._text_cache.get(text)
        if hit is None:
            hit = tuple(self._encode_cleaned(basic_clean(text)))
            if len(self._text_cache) >= _TEXT_CACHE_SIZE:
                self._text_cache.clear()
            self._text_cache[text] = hit
        return list(hit)

    def encode_slow(self, text: str) -> list[int]:
        """Reference path: full cleaning and regex over the whole text, no fast path and no cache.

        Kept for tests and debugging; ``encode`` must always agree with it.
        """
        ids: list[int] = []
        for word in self._word_re.findall(basic_clean(text)):
            if word in (SOT_TEXT, EOT_TEXT):
                ids.append(self.encoder[word])
            else:
                ids.extend(self._bpe(word.encode("utf-8").decode("latin-1").translate(self._byte_table)))
        return ids

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Text of a sequence of ids; a padded row stops at its first ``<end_of_text>``.

        Word ends (``</w>``) become spaces; the trailing space is removed. Invalid UTF-8 (a row cut inside a
        multi-byte character) is replaced by U+FFFD.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()  # [L] or [1, L] -> [L]
        if self._decoder is None:
            byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
            table: list[bytes] = []
            for tok in self._tokens:
                if tok in (SOT_TEXT, EOT_TEXT):
                    table.append(tok.encode())
                elif tok.endswith("</w>"):
                    table.append(bytes(byte_decoder[c] for c in tok[:-4]) + b" ")
                else:
                    table.append(bytes(byte_decoder[c] for c in tok))
            self._decoder = table
        out: list[bytes] = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise KontrastError(f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})")
            if i in self.all_special_ids:
                if not skip_special_tokens:
                    out.append(self._decoder[i])
                if i == self.eot_token_id:
                    break
                continue
            out.append(self._decoder[i])
        return b"".join(out).decode("utf-8", errors="replace").rstrip(" ")

    def num_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` including sot and eot (compare with ``context_length`` to warn)."""
        return len(self.encode(text)) + 2

    def tokenize_with_info(
        self, texts: str | Sequence[str], context_length: int | None = None, truncate: bool = True
    ) -> tuple[torch.Tensor, list[int]]:
        """Like ``__call__``, and also return the indices of the rows that were truncated."""
        if isinstance(texts, str):
            texts = [texts]
        ctx = self.context_length if context_length is None else int(context_length)
        if ctx < 2:
            raise KontrastError(f"context_length={ctx} is too small (need >= 2 for sot and eot)")
        sot, eot = self.sot_token_id, self.eot_token_id
        rows: list[list[int]] = []
        truncated: list[int] = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise KontrastError(f"text #{i} is a {type(text).__name__}, not a str: {str(text)[:40]!r}")
            ids = self.encode(text)
            if len(ids) + 2 > ctx:
                if not truncate:
                    short = text if len(text) <= 60 else text[:57] + "..."
                    raise KontrastError(
                        f"text {short!r} has {len(ids) + 2} tokens, more than the context length {ctx}"
                        " (shorten it, or pass truncate=True to cut it)"
                    )
                truncated.append(i)
                ids = ids[: ctx - 2]
            rows.append(ids)
        n = len(rows)
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=n)
        out = np.zeros((n, ctx), dtype=np.int64)
        if n:
            out[:, 0] = sot
            out[np.arange(n), lengths + 1] = eot  # truncation keeps eot as the last id, like open_clip
            total = int(lengths.sum())
            if total:
                flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=total)
                row_idx = np.repeat(np.arange(n), lengths)
                starts = np.cumsum(lengths) - lengths  # offset of each row in ``flat``
                col_idx = np.arange(total) - np.repeat(starts, lengths) + 1
                out[row_idx, col_idx] = flat
        return torch.from_numpy(out), truncated

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None, truncate: bool = True
    ) -> torch.Tensor:
        """Tokenize one text or a list: ``LongTensor[N, context_length]`` (N=1 for a single str).

        Rows are ``[sot, ids..., eot]`` padded with zeros. A text longer than the context is cut to
        ``context_length`` ids whose last is ``<end_of_text>`` (open_clip semantics) and its index is
        recorded in ``last_truncated``; with ``truncate=False`` it raises ``KontrastError`` instead.
        """
        tokens, self.last_truncated = self.tokenize_with_info(texts, context_length, truncate)
        return tokens

    def split_windows(
        self, text: str, context_length: int | None = None, stride: int | None = None
    ) -> list[list[int]]:
        """Overlapping windows over a long text, each ``[sot, ids..., eot]``, at most ``context_length`` long.

        Windows hold ``context_length - 2`` BPE ids and start every ``stride`` ids (default: half a window);
        the last window is aligned to the end of the text so it is full. A short text gives one window.
        Used to embed long texts by averaging the windows' embeddings.
        """
        ctx = self.context_length if context_length is None else int(context_length)
        body = ctx - 2
        if body < 1:
            raise KontrastError(f"context_length={ctx} is too small for windows (need >= 3)")
        step = max(1, body // 2) if stride is None else int(stride)
        if not 1 <= step <= body:
            raise KontrastError(f"stride={stride} must be between 1 and context_length - 2 = {body}")
        ids = self.encode(text)
        sot, eot = self.sot_token_id, self.eot_token_id
        if len(ids) <= body:
            return [[sot, *ids, eot]]
        starts = list(range(0, len(ids) - body, step)) + [len(ids) - body]
        return [[sot, *ids[s : s + body], eot] for s in starts]

    def clear_cache(self) -> None:
        """Drop the word, chunk and text caches (they are bounded anyway; useful for cold-start timing)."""
        self._word_cache = dict(self._special_words)
        self._chunk_cache.clear()
        self._text_cache.clear()


SimpleTokenizer = Tokenizer


@functools.lru_cache(maxsize=8)
def get_tokenizer(bpe_path: str | None = None, context_length: int = 77) -> Tokenizer:
    """A shared ``Tokenizer`` for this vocabulary and context length, built on first use."""
    return Tokenizer(bpe_path=bpe_path, context_length=context_length)


def tokenize(texts: str | Sequence[str], context_length: int = 77, truncate: bool = True) -> torch.Tensor:
    """Tokenize with the default CLIP vocabulary: ``LongTensor[N, context_length]``, see ``Tokenizer``."""
    return get_tokenizer()(texts, context_length=context_length, truncate=truncate)


def tokenize_with_info(
    texts: str | Sequence[str], context_length: int = 77, truncate: bool = True
) -> tuple[torch.Tensor, list[int]]:
    """``tokenize`` plus the indices of truncated rows (for the CLI's long-text warnings)."""
    return get_tokenizer().tokenize_with_info(texts, context_length=context_length, truncate=truncate)
