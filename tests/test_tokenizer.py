"""CLIP tokenizer: exact ids vs open_clip fixtures, truncation/padding, fast path == reference path."""

from __future__ import annotations

import gzip
import importlib.util
import json
import pickle
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from kontrast.errors import KontrastError
from kontrast.tokenizer import (
    NUM_MERGES,
    SimpleTokenizer,
    Tokenizer,
    basic_clean,
    default_bpe_path,
    get_tokenizer,
    is_fast_text,
    tokenize,
    tokenize_with_info,
)

HAS_RUST = importlib.util.find_spec("tokenizers") is not None
BACKENDS = [
    "python",
    pytest.param("rust", marks=pytest.mark.skipif(not HAS_RUST, reason="tokenizers not installed")),
]
INPUT_TEXTS = [
    "a photo of a cat",
    "a diagram of a neural network",
    "A DOG running on the beach!",
    "it's a café in Zürich",
    "two people riding bikes at sunset, 1999",
    "",
]
SOT, EOT = 49406, 49407


@pytest.fixture(scope="module", params=BACKENDS)
def tok(request) -> Tokenizer:
    return Tokenizer(backend=request.param)


@pytest.fixture(scope="module")
def py_tok() -> Tokenizer:
    return Tokenizer(backend="python")


@pytest.fixture(scope="module")
def cases(fixtures_dir: Path) -> list[dict]:
    lines = (fixtures_dir / "tokenizer_cases.jsonl").read_text(encoding="ascii").splitlines()
    out = [json.loads(line) for line in lines if line]
    assert len(out) == 400
    return out


def padded(ids: list[int], ctx: int = 77) -> list[int]:
    return ids + [0] * (ctx - len(ids))


# ---------------------------------------------------------------- exactness vs the reference fixtures
def test_fixture_cases_batch(tok: Tokenizer, cases: list[dict]) -> None:
    tok.clear_cache()
    out = tok([c["text"] for c in cases])
    assert out.shape == (400, 77) and out.dtype == torch.int64
    expected = torch.tensor([padded(c["ids"]) for c in cases])
    wrong = [cases[i]["text"] for i in torch.nonzero((out != expected).any(dim=1)).flatten().tolist()]
    assert not wrong, f"{len(wrong)} mismatching cases, e.g. {wrong[:3]!r}"
    long = [i for i, c in enumerate(cases) if tok.num_tokens(c["text"]) > 77]
    assert len(long) == 14 and tok.last_truncated == long  # the fixture README counts 14 truncated cases


def test_fixture_cases_one_by_one_and_reference_path(tok: Tokenizer, cases: list[dict]) -> None:
    """Each text alone (warm caches) and through the uncached reference path gives the same ids."""
    for c in cases:
        assert tok(c["text"])[0].tolist() == padded(c["ids"]), c["text"]
        full = [SOT, *tok.encode_slow(c["text"]), EOT]
        if len(full) > 77:
            full = full[:76] + [EOT]
        assert full == c["ids"], c["text"]


def test_fixture_inputs_tokens(tok: Tokenizer, fixtures_dir: Path) -> None:
    expected = load_file(str(fixtures_dir / "inputs.safetensors"))["tokens"]
    assert torch.equal(tok(INPUT_TEXTS), expected)
    assert torch.equal(tokenize(INPUT_TEXTS), expected)


def test_bundled_vocab_is_the_shared_one(shared_dir: Path) -> None:
    assert (
        Path(default_bpe_path()).read_bytes()
        == (shared_dir / "data" / "bpe_simple_vocab_16e6.txt.gz").read_bytes()
    )


# ---------------------------------------------------------------- vocabulary and special tokens
def test_vocab_layout(py_tok: Tokenizer) -> None:
    t = py_tok
    assert t.vocab_size == 49408 == 256 + 256 + NUM_MERGES + 2
    assert (t.sot_token_id, t.eot_token_id) == (SOT, EOT)
    assert t.encoder["a</w>"] == 320 and t.encoder["!"] == 0
    assert t.encode("<start_of_text>") == [SOT] and t.encode("a <END_OF_TEXT> b") == [320, EOT, 321]


def test_special_tokens_and_decode(py_tok: Tokenizer) -> None:
    row = py_tok("a photo of a cat")[0]
    assert row[0].item() == SOT and row[6].item() == EOT
    assert py_tok.decode(row) == "a photo of a cat"
    assert py_tok.decode(row, skip_special_tokens=False) == "<start_of_text>a photo of a cat <end_of_text>"
    with pytest.raises(KontrastError, match="outside the vocabulary"):
        py_tok.decode([49408])


@pytest.mark.parametrize(
    "text", ["a photo of a cat", "two people riding bikes at sunset", "zürich café naïve"]
)
def test_decode_round_trip(py_tok: Tokenizer, text: str) -> None:
    assert py_tok.decode(py_tok.encode(text)) == text
    assert py_tok.decode(py_tok(text)[0]) == text


def test_rust_merge_order_assumption() -> None:
    """Rust backend exactness: each merge's operands come from lower-ranked merges, one merge per string."""
    with gzip.open(default_bpe_path(), "rt", encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1 : NUM_MERGES + 1]]
    made_at: dict[str, int] = {}
    for rank, (a, b) in enumerate(merges):
        assert a + b not in made_at, f"{a + b!r} is made by two merges"
        made_at[a + b] = rank
    late = [
        (a, b) for rank, (a, b) in enumerate(merges) if made_at.get(a, -1) > rank or made_at.get(b, -1) > rank
    ]
    assert not late


# ---------------------------------------------------------------- batch shape, padding, truncation
def test_str_vs_list_and_padding(py_tok: Tokenizer) -> None:
    one = py_tok("a dog")
    assert one.shape == (1, 77) and torch.equal(one, py_tok(["a dog"]))
    assert one[0, :4].tolist() == [SOT, 320, 1929, EOT] and not one[0, 4:].any()
    assert py_tok([]).shape == (0, 77)
    assert py_tok([""])[0, :3].tolist() == [SOT, EOT, 0]
    short = py_tok(["a dog", "a photo of a cat"], context_length=10)
    assert short.shape == (2, 10) and short[0, 4:].eq(0).all() and short[1, 6].item() == EOT


def test_truncation_keeps_eot_last(py_tok: Tokenizer) -> None:
    text = " ".join(["cat"] * 100)  # "cat</w>" is one token
    out = py_tok(["a dog", text, "a cat"])
    assert out[1].tolist() == [SOT] + [2368] * 75 + [EOT]
    assert py_tok.last_truncated == [1] and py_tok.num_tokens(text) == 102
    tokens, truncated = tokenize_with_info([text, "ok", text], context_length=20)
    assert truncated == [0, 2] and tokens.shape == (3, 20) and tokens[0, -1].item() == EOT
    py_tok(["a dog"])
    assert py_tok.last_truncated == []


def test_no_truncate_raises_one_line(py_tok: Tokenizer) -> None:
    text = "a very long caption " + "about cats " * 60
    with pytest.raises(KontrastError) as info:
        py_tok(["fine", text], truncate=False)
    msg = str(info.value)
    assert "\n" not in msg and f"{py_tok.num_tokens(text)} tokens" in msg and "a very long caption" in msg
    assert len(msg) < 250
    assert py_tok(["fine"], truncate=False).shape == (1, 77)
    with pytest.raises(KontrastError, match="more than the context length 5"):
        tokenize("a photo of a cat", context_length=5, truncate=False)


def test_bad_inputs(py_tok: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(KontrastError, match="not a str"):
        py_tok(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(KontrastError, match="not found"):
        Tokenizer(bpe_path=str(tmp_path / "missing.txt.gz"))
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(KontrastError, match="cannot read"):
        Tokenizer(bpe_path=str(bad))
    with pytest.raises(KontrastError, match="backend"):
        Tokenizer(backend="c++")
    with pytest.raises(KontrastError, match="too small"):
        py_tok("a", context_length=1)


def test_split_windows(py_tok: Tokenizer) -> None:
    ids = py_tok.encode(" ".join(str(i % 10) for i in range(200)))  # each digit is one token
    assert len(ids) == 200
    windows = py_tok.split_windows(" ".join(str(i % 10) for i in range(200)), stride=50)
    assert [len(w) for w in windows] == [77] * 4
    assert all(w[0] == SOT and w[-1] == EOT for w in windows)
    assert [w[1:-1] for w in windows] == [ids[0:75], ids[50:125], ids[100:175], ids[125:200]]
    assert py_tok.split_windows("a cat") == [[SOT, 320, 2368, EOT]]
    default = py_tok.split_windows(" ".join(["cat"] * 100))
    assert (
        len(default) == 2 and default[1][1:-1] == [2368] * 75
    )  # half-window stride, last aligned to the end
    with pytest.raises(KontrastError, match="stride"):
        py_tok.split_windows("a cat", stride=0)


def test_module_helpers_and_pickle() -> None:
    assert SimpleTokenizer is Tokenizer
    assert get_tokenizer() is get_tokenizer()
    t = pickle.loads(pickle.dumps(get_tokenizer()))
    assert torch.equal(t(INPUT_TEXTS), tokenize(INPUT_TEXTS)) and t.backend == get_tokenizer().backend


# ---------------------------------------------------------------- fast path == reference path (properties)
ASCII = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=60)
PRINTABLE = st.lists(
    st.sampled_from(
        list("\t\n abcXYZ019.,!?'&<>/_-;:\"()#")
        + [
            "'s",
            "'LL",
            "<end_of_text>",
            "&amp;",
            "&lt",
            "&#39;",
            "&#x27;",
            "&quot;",
            "&nbsp;",
            "\r",
            "\x0b",
            "\x1b[31m",
        ]
    ),
    max_size=40,
).map("".join)
MIXED = st.lists(
    st.one_of(
        st.characters(min_codepoint=0, max_codepoint=0x2FF),
        st.sampled_from(
            [
                "é",
                "Ã©",
                "â€™",
                "ﬁ",
                "🐱",
                "👍🏽",
                "中文",
                "Σ",
                "İ",
                "\u00a0",
                "\u3000",
                "\x85",
                "\u200b",
                "&amp;",
                "&lt;",
                "&#39;",
                "<end_of_text>",
                "<START_OF_TEXT>",
                "'re",
                " ",
            ]
        ),
    ),
    max_size=30,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(ASCII, PRINTABLE))
def test_fast_path_skips_only_identity_cleaning(text: str) -> None:
    if is_fast_text(text):
        assert basic_clean(text) == " ".join(text.split()).lower()


@settings(max_examples=300, deadline=None)
@given(st.one_of(ASCII, PRINTABLE))
def test_fast_path_equals_reference_ascii(py_tok: Tokenizer, text: str) -> None:
    assert py_tok.encode(text) == py_tok.encode_slow(text)


@settings(max_examples=300, deadline=None)
@given(MIXED)
def test_cached_path_equals_reference_unicode(py_tok: Tokenizer, text: str) -> None:
    assert py_tok.encode(text) == py_tok.encode_slow(text)


@pytest.mark.skipif(not HAS_RUST, reason="tokenizers not installed")
@settings(max_examples=300, deadline=None)
@given(st.one_of(PRINTABLE, MIXED))
def test_rust_backend_equals_python(text: str) -> None:
    rust = get_tokenizer_for("rust")
    rust.clear_cache()  # force the Rust merges, not a cached word
    assert rust.encode(text) == get_tokenizer_for("python").encode_slow(text)


_BY_BACKEND: dict[str, Tokenizer] = {}


def get_tokenizer_for(backend: str) -> Tokenizer:
    """One tokenizer per backend for hypothesis tests (function-scoped fixtures do not mix with @given)."""
    if backend not in _BY_BACKEND:
        _BY_BACKEND[backend] = Tokenizer(backend=backend)
    return _BY_BACKEND[backend]
