"""Tiny tokenizers trained here (no hub): a T5-style SentencePiece model and a Gemma-style BPE ``tokenizer.json``.

They have the real models' special-token layout (SentencePiece: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, no bos, as
the c4-en model of SigLIP; Gemma: ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``<mask>`` 4, then the 256
byte-fallback tokens, then merges) and are trained on a corpus that leaves some characters out, so unknown
characters (``<unk>`` / byte fallback) are exercised.
"""

from __future__ import annotations

import functools
import io
import random

from .common import TEXTS

_WORDS = (  # noqa: SIM905 - a sentence is easier to read than a list literal
    "a photo of the cat dog diagram neural network it is cafe in zurich two people riding bikes at sunset "
    "very long caption word an emoji picture small large red green blue house tree car on with and for "
    "running beach mountain river city night day one three four five six seven eight nine zero"
).split()
# Characters the corpus never shows, so the tokenizers must fall back (unk / bytes): é, ü, digits 1 and 9.
_LEFT_OUT = set("éü19")


def _pseudo_word(rng: random.Random) -> str:
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "ve", "xi", "zo", "pla", "tre", "gh", "qu", "wy"]
    return "".join(rng.choice(syllables) for _ in range(rng.randint(1, 4)))


def corpus(n: int = 3000, seed: int = 7) -> list[str]:
    """Deterministic training sentences: random word sequences plus the fixture texts with some characters removed."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(_WORDS) if rng.random() < 0.7 else _pseudo_word(rng) for _ in range(rng.randint(2, 12))]
        if rng.random() < 0.3:
            words = [w.capitalize() if rng.random() < 0.5 else w for w in words]
        lines.append(" ".join(words) + rng.choice(["", ".", ",", "!", "?"]))
    for text in TEXTS:
        lines.append("".join(c for c in text if c not in _LEFT_OUT))
    return lines


@functools.lru_cache(maxsize=1)
def sentencepiece_model(vocab_size: int = 300) -> bytes:
    """A unigram SentencePiece model (``spiece.model`` bytes) with T5's special ids: pad 0, eos 1, unk 2, no bos."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return buffer.getvalue()


GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]


@functools.lru_cache(maxsize=1)
def gemma_vocab_merges(vocab_size: int = 700) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a Gemma-style byte-fallback BPE trained on the corpus (spaces as ``▁``)."""
    import json

    from tokenizers import Tokenizer, models, normalizers, trainers

    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=GEMMA_SPECIALS + byte_tokens, show_progress=False, min_frequency=2
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges
