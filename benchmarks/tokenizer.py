"""Benchmark: kontrast's CLIP tokenizer vs an open_clip-style SimpleTokenizer and HF CLIPTokenizerFast.

Run:  python benchmarks/tokenizer.py [--n 10000] [--repeats 3]

Texts: ``--n`` deterministic captions, about 60% real emoji / clip-art captions read from the ``.txt``
members of ``../shared/data/*/*.tar`` and 40% synthetic photo-style captions (a few with accents, emoji or
HTML entities). Without the shards, all captions are synthetic.

Peers (nothing is installed or downloaded):
* open_clip's ``SimpleTokenizer`` if ``import open_clip`` works; otherwise a plain re-implementation of
  its design (ftfy + html.unescape + regex per text, BPE per word with a cache), labelled as such.
* ``transformers.CLIPTokenizerFast`` (Rust ``tokenizers``) built from vocab.json/merges.txt derived from
  the same BPE file into a temp dir, called with ``padding="max_length", max_length=77, truncation=True,
  return_tensors="pt"``.

Each timing is the best of ``--repeats`` runs; "cold" runs start with empty caches (a fresh reference
tokenizer, ``Tokenizer.clear_cache()`` for kontrast). Exactness is the number of rows identical to the
reference (for HF: ids up to its padding, which is ``<|endoftext|>`` rather than 0).
"""

from __future__ import annotations

import argparse
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


def best_time(
    fn: Callable[[], object], repeats: int, setup: Callable[[], None] | None = None
) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls (``setup`` runs untimed before each) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of captions")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (best is kept)")
    args = parser.parse_args()

    texts = make_captions(args.n)
    n_ascii = sum(t.isascii() and "&" not in t for t in texts)
    print(
        f"{len(texts)} captions, {len(set(texts))} unique, {n_ascii} plain ASCII without '&'; "
        f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}"
    )

    tok = Tokenizer(backend="python")
    rows: list[tuple[str, float, str]] = []  # (name, seconds, exactness)

    try:
        import open_clip

        ref = open_clip.SimpleTokenizer()
        ref_name = "open_clip SimpleTokenizer"

        def ref_fn():
            return ref(texts, context_length=CONTEXT)

        def ref_setup():
            ref.cache = {k: v for k, v in ref.cache.items() if k.startswith("<")}
    except Exception as e:  # noqa: BLE001 - any failure (it needs torchvision) means: use the reference
        print(f"open_clip not importable ({type(e).__name__}: {e}); timing a plain re-implementation instead")
        ref_name = "open_clip-equivalent reference (open_clip not importable)"
        holder: dict[str, ReferenceSimpleTokenizer] = {}

        def ref_setup():
            holder["t"] = ReferenceSimpleTokenizer(default_bpe_path())

        def ref_fn():
            return holder["t"](texts)

    t_ref, ref_out = best_time(ref_fn, args.repeats, ref_setup)
    rows.append((ref_name + " [cold]", t_ref, "reference"))
    t_ref_warm, _ = best_time(ref_fn, args.repeats)  # same instance again: its word cache is filled
    rows.append((ref_name + " [warm]", t_ref_warm, "reference"))

    def exact(out: torch.Tensor) -> str:
        same = int((out == ref_out).all(dim=1).sum())
        return f"{same}/{len(texts)} rows"

    for backend in ("auto", "python"):
        k = Tokenizer(backend=backend)
        label = f"kontrast Tokenizer(backend={backend!r} -> {k.backend})"
        t_cold, out = best_time(lambda k=k: k(texts), args.repeats, k.clear_cache)
        rows.append((f"{label} [cold caches]", t_cold, exact(out)))
        t_warm, out = best_time(lambda k=k: k(texts), args.repeats)
        rows.append((f"{label} [warm caches]", t_warm, exact(out)))

    def fresh() -> torch.Tensor:  # a new process's first call: vocabulary file, Rust model, empty caches
        _load_vocab.cache_clear()
        return Tokenizer()(texts)

    t_fresh, out = best_time(fresh, args.repeats)
    rows.append(("kontrast Tokenizer() built from the .gz + first call", t_fresh, exact(out)))

    with tempfile.TemporaryDirectory() as tmp:
        hf = build_hf_fast(tmp, tok)

        def hf_fn():
            return hf(texts, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt")

        t_hf, enc = best_time(hf_fn, args.repeats)
        hf_ids = enc["input_ids"].masked_fill(
            enc["attention_mask"] == 0, 0
        )  # HF pads with eot; reference with 0
        rows.append(("HF CLIPTokenizerFast (Rust)", t_hf, exact(hf_ids)))

    print(
        f"\n{'tokenizer':<66} {'texts/s':>9} {'ms':>7} {'/ref cold':>9} {'/ref warm':>9} {'/HF':>6}"
        "  exact vs ref"
    )
    for name, sec, ex in rows:
        print(
            f"{name:<66} {len(texts) / sec:>9,.0f} {sec * 1e3:>7.1f} {t_ref / sec:>8.1f}x"
            f" {t_ref_warm / sec:>8.1f}x {t_hf / sec:>5.1f}x  {ex}"
        )
    print(
        "(ratios are speed-ups: the row's texts/s divided by the peer's; "
        "cold = caches emptied before each run; the reference's construction is not timed)"
    )


if __name__ == "__main__":
    main()
