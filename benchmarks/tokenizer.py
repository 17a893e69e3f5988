"""Benchmark: kontrast's CLIP tokenizer vs an open_clip-style SimpleTokenizer and HF CLIPTokenizerFast.

Run:  python benchmarks/tokenizer.py [--n 10000] [--repeats 5]

Texts: ``--n`` deterministic captions, about 60% real emoji / clip-art captions read from the ``.txt``
members of ``../shared/data/*/*.tar`` and 40% synthetic photo-style captions (a few with accents, emoji or
HTML entities). Without the shards, all captions are synthetic.

Peers (nothing is installed or downloaded):
* open_clip's ``SimpleTokenizer`` if ``import open_clip`` works; otherwise a plain re-implementation of
  its design (ftfy + html.unescape + regex per text, BPE per word with a cache), labelled as such.
* ``transformers.CLIPTokenizerFast`` (Rust ``tokenizers``) built from vocab.json/merges.txt derived from
  the same BPE file into a temp dir, called with ``padding="max_length", max_length=77, truncation=True,
  return_tensors="pt"``.

Each timing is the best of ``--repeats`` rounds, the contenders interleaved within a round; "cold" runs
start with empty caches (a fresh reference tokenizer, ``Tokenizer.clear_cache()`` for kontrast).
Exactness is the number of rows identical to the reference (for HF: ids up to its padding, which is
``<|endoftext|>`` rather than 0).
"""

from __future__ import annotations

import argparse
import gc
import glob
import gzip
import html
import inspect
import itertools
import json
import os
import random
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ftfy
import regex
import torch

from kontrast.tokenizer import Tokenizer, _load_vocab, bytes_to_unicode, default_bpe_path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CONTEXT = 77


def real_captions() -> list[str]:
    """All captions stored in the webdataset shards, in sorted shard order (empty if none are found)."""
    caps: list[str] = []
    for shard in sorted(glob.glob(str(SHARED / "data" / "*" / "*.tar"))):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".txt"):
                    f = tar.extractfile(member)
                    if f is not None:
                        caps.append(f.read().decode("utf-8"))
    return caps


def synthetic_captions(n: int, rng: random.Random) -> list[str]:
    """Photo-style captions from templates; about 5% contain non-ASCII text or an HTML entity."""
    adjs = [
        "red",
        "small",
        "old",
        "wooden",
        "shiny",
        "blurry",
        "happy",
        "tall",
        "striped",
        "vintage",
        "golden",
    ]
    nouns = [
        "cat",
        "dog",
        "bicycle",
        "house",
        "mountain",
        "car",
        "woman",
        "man",
        "child",
        "bird",
        "boat",
        "tree",
        "table",
        "guitar",
        "pizza",
        "horse",
        "bridge",
        "lighthouse",
        "umbrella",
        "skateboarder",
    ]
    places = [
        "on the beach",
        "in a forest",
        "at sunset",
        "in the city",
        "on a table",
        "in the snow",
        "next to a river",
        "in a kitchen",
        "under a bridge",
        "at night",
    ]
    styles = [
        "a photo of",
        "a close-up photo of",
        "a painting of",
        "an image of",
        "a picture of",
        "a black and white photo of",
        "a drawing of",
        "A PHOTO OF",
    ]
    extras = [
        "café in Zürich",
        "crème brûlée",
        "fish &amp; chips",
        "a 🐱 emoji",
        "naïve façade",
        "piñata",
    ]
    out = []
    for _ in range(n):
        text = f"{rng.choice(styles)} a {rng.choice(adjs)} {rng.choice(nouns)} {rng.choice(places)}"
        r = rng.random()
        if r < 0.05:
            text += f" near a {rng.choice(extras)}"
        elif r < 0.25:
            text += f", {rng.randint(1950, 2024)}."
        elif r < 0.35:
            text += f" with {rng.randint(2, 9)} {rng.choice(nouns)}s"
        out.append(text)
    return out


def make_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` deterministic captions: real shard captions (60%, sampled) plus synthetic photo-style ones."""
    rng = random.Random(seed)
    real = real_captions()
    n_real = min(len(real), int(n * 0.6)) if real else 0
    caps = rng.sample(real, n_real) + synthetic_captions(n - n_real, rng)
    rng.shuffle(caps)
    return caps


class ReferenceSimpleTokenizer:
    """Plain re-implementation of open_clip's SimpleTokenizer design, used when open_clip is missing.

    Per text: ftfy.fix_text, html.unescape twice, strip, whitespace collapse, lowercase, regex; per word:
    byte-level encoding and BPE merges with a word cache; per row: a torch tensor filled in Python.
    """

    def __init__(self, bpe_path: str) -> None:
        with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
            merges = [tuple(m.split()) for m in f.read().split("\n")[1 : 49152 - 256 - 2 + 1]]
        self.byte_encoder = bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        vocab += ["<start_of_text>", "<end_of_text>"]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {"<start_of_text>": "<start_of_text>", "<end_of_text>": "<end_of_text>"}
        self.pat = regex.compile(
            r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self.sot, self.eot = self.encoder["<start_of_text>"], self.encoder["<end_of_text>"]

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = set(itertools.pairwise(word))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            new, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == best[0] and word[i + 1] == best[1]:
                    new.append(best[0] + best[1])
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = new
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        text = " ".join(text.split()).strip().lower()
        ids = []
        for token in self.pat.findall(text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def __call__(self, texts: list[str], context_length: int = CONTEXT) -> torch.Tensor:
        result = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            tokens = [self.sot, *self.encode(text), self.eot]
            if len(tokens) > context_length:
                tokens = tokens[:context_length]
                tokens[-1] = self.eot
            result[i, : len(tokens)] = torch.tensor(tokens)
        return result


def build_hf_fast(tmp: str, tok: Tokenizer):
    """``CLIPTokenizerFast`` from vocab.json / merges.txt derived from the same BPE file (no network)."""
    from transformers import CLIPTokenizerFast

    vocab = dict(tok.encoder)
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    with gzip.open(default_bpe_path(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    Path(tmp, "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    Path(tmp, "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    vocab_file, merges_file = str(Path(tmp, "vocab.json")), str(Path(tmp, "merges.txt"))
    if "vocab_file" in inspect.signature(CLIPTokenizerFast.__init__).parameters:  # transformers 4
        return CLIPTokenizerFast(vocab_file=vocab_file, merges_file=merges_file)
    return CLIPTokenizerFast(vocab=vocab_file, merges=merges_file)  # transformers 5: file paths or objects


@dataclass
class Contender:
    """One timed configuration: ``setup`` runs untimed before each call of ``fn``."""

    name: str
    fn: Callable[[], torch.Tensor]
    setup: Callable[[], None] | None = None
    best: float = float("inf")
    out: torch.Tensor | None = None


def run_rounds(contenders: list[Contender], repeats: int) -> None:
    """Time every contender once per round, ``repeats`` rounds, keeping each one's best time.

    Interleaving the contenders gives each a similar share of a busy machine's good and bad moments.
    """
    for _ in range(repeats):
        for c in contenders:
            if c.setup is not None:
                c.setup()
            gc.collect()  # garbage left by the previous contender is not this one's cost
            t0 = time.perf_counter()
            c.out = c.fn()
            c.best = min(c.best, time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of captions")
    parser.add_argument("--repeats", type=int, default=5, help="rounds; each contender's best is kept")
    args = parser.parse_args()

    texts = make_captions(args.n)
    n_ascii = sum(t.isascii() and "&" not in t for t in texts)
    print(
        f"{len(texts)} captions, {len(set(texts))} unique, {n_ascii} plain ASCII without '&'; "
        f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}"
    )

    try:
        import open_clip

        ref = open_clip.SimpleTokenizer()
        ref_name = "open_clip SimpleTokenizer"

        def ref_fn() -> torch.Tensor:
            return ref(texts, context_length=CONTEXT)

        def ref_setup() -> None:
            ref.cache = {k: v for k, v in ref.cache.items() if k.startswith("<")}
    except Exception as e:  # noqa: BLE001 - any failure (it needs torchvision) means: use the reference
        print(f"open_clip not importable ({type(e).__name__}: {e}); timing a plain re-implementation instead")
        ref_name = "open_clip-equivalent reference (open_clip not importable)"
        holder = {"t": ReferenceSimpleTokenizer(default_bpe_path())}

        def ref_setup() -> None:
            holder["t"] = ReferenceSimpleTokenizer(default_bpe_path())

        def ref_fn() -> torch.Tensor:
            return holder["t"](texts)

    ref_cold = Contender(f"{ref_name} [cold]", ref_fn, ref_setup)
    ref_warm = Contender(f"{ref_name} [warm]", ref_fn)  # runs right after the cold call: word cache filled
    contenders = [ref_cold, ref_warm]
    for backend in ("auto", "python"):
        k = Tokenizer(backend=backend)
        label = f"kontrast Tokenizer(backend={backend!r} -> {k.backend})"
        contenders.append(Contender(f"{label} [cold caches]", lambda k=k: k(texts), k.clear_cache))
        contenders.append(Contender(f"{label} [warm caches]", lambda k=k: k(texts)))

    def fresh() -> torch.Tensor:  # a new process's first call: vocabulary file, Rust model, empty caches
        _load_vocab.cache_clear()
        return Tokenizer()(texts)

    contenders.append(Contender("kontrast Tokenizer() built from the .gz + first call", fresh))

    with tempfile.TemporaryDirectory() as tmp:
        hf = build_hf_fast(tmp, Tokenizer(backend="python"))

    def hf_fn() -> torch.Tensor:
        enc = hf(texts, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt")
        return enc["input_ids"].masked_fill(
            enc["attention_mask"] == 0, 0
        )  # HF pads with eot, open_clip with 0

    hf_c = Contender("HF CLIPTokenizerFast (Rust)", hf_fn)
    contenders.append(hf_c)
    run_rounds(contenders, args.repeats)

    print(
        f"\n{'tokenizer':<66} {'texts/s':>9} {'ms':>7} {'/ref cold':>9} {'/ref warm':>9} {'/HF':>6}"
        "  exact vs ref"
    )
    for c in contenders:
        same = int((c.out == ref_cold.out).all(dim=1).sum())
        exact = "reference" if c is ref_cold else f"{same}/{len(texts)} rows"
        print(
            f"{c.name:<66} {len(texts) / c.best:>9,.0f} {c.best * 1e3:>7.1f} {ref_cold.best / c.best:>8.1f}x"
            f" {ref_warm.best / c.best:>8.1f}x {hf_c.best / c.best:>5.1f}x  {exact}"
        )
    print(
        "(ratios are speed-ups: the row's texts/s divided by the peer's; best of "
        f"{args.repeats} interleaved rounds; cold = caches emptied before each run; "
        "the reference's construction is not timed)"
    )


if __name__ == "__main__":
    main()
