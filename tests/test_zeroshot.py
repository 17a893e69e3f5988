"""Zero-shot classifier: template sets, ensembling, probabilities vs a direct computation, caching, long texts."""

from __future__ import annotations

import warnings
from importlib import resources

import pytest
import torch
import torch.nn.functional as F

import kontrast
from kontrast import zeroshot as zs
from kontrast.errors import KontrastError

NAMES = ["cat", "dog", "a red car", "strawberry"]


@pytest.fixture(scope="module", params=["openai_vit.pt", "openai_rn.pt", "open_clip_vit", "hf_vit"])
def fixture_model(request, fixtures_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return kontrast.load(fixtures_dir / request.param)


@pytest.fixture(scope="module")
def vit(fixtures_dir):
    return kontrast.load(fixtures_dir / "openai_vit.pt")


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KONTRAST_CACHE", str(tmp_path / "cache"))
    zs.clear_memory_cache()
    yield
    zs.clear_memory_cache()


def _images(n: int = 3, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=g)


# ---- templates ---------------------------------------------------------------------------------------
def test_template_sets():
    imagenet = zs.load_templates("imagenet")
    assert len(imagenet) == 80 and len(set(imagenet)) == 80
    assert "a bad photo of a {}." in imagenet and "itap of my {}." in imagenet
    assert zs.load_templates(None) == imagenet
    simple = zs.load_templates("simple")
    assert 3 <= len(simple) <= 10 and all("{}" in t for t in simple)


def test_template_file_list_and_errors(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("# my prompts\na {} on a table.\n\n{} {{braces}} kept\n", encoding="utf-8")
    assert zs.load_templates(str(f)) == ["a {} on a table.", "{} {{braces}} kept"]
    assert zs.load_templates(["x {}", "{} y"]) == ["x {}", "{} y"]
    assert zs.load_templates("a sketch of {}") == ["a sketch of {}"]
    assert zs.fill_template("{} {{braces}} kept", "owl") == "owl {{braces}} kept"
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a {}.\na photo without a slot\n")
    with pytest.raises(KontrastError, match="a photo without a slot"):
        zs.load_templates(bad)
    with pytest.raises(KontrastError, match="no '{}'"):
        zs.load_templates(["no slot"])
    with pytest.raises(KontrastError, match="imagenett"):
        zs.load_templates("imagenett")
    with pytest.raises(KontrastError, match="no templates"):
        zs.load_templates([])


# ---- probabilities ----------------------------------------------------------------------------------
@torch.no_grad()
def test_zero_shot_matches_direct_computation(fixture_model):
    model, _, tokenizer = fixture_model
    images = _images(3, model.image_size)
    weights = zs.build_classifier(model, tokenizer, NAMES, templates=["{}"], cache=False)
    probs = zs.classify(model, model.encode_image(images), weights)
    # direct: the API's normalised embeddings and temperature, a softmax over the classes
    text = model.encode_text(tokenizer(NAMES), normalize=True)
    img = model.encode_image(images, normalize=True)
    expected = (model.logit_scale.exp() * img @ text.T).softmax(dim=-1)
    assert probs.shape == (3, len(NAMES))
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=0)
    # and the same through get_logits
    logits, _ = model.get_logits(images, tokenizer(NAMES))
    if model.logit_bias is None:
        torch.testing.assert_close(probs, logits.softmax(dim=-1), atol=1e-6, rtol=0)


@torch.no_grad()
def test_ensembling_matches_hand_computation(vit):
    model, _, tokenizer = vit
    templates = ["a photo of a {}.", "a drawing of the {}", "{}!"]
    weights = zs.build_classifier(model, tokenizer, NAMES, templates=templates, batch_size=5, cache=False)
    rows = []
    for name in NAMES:
        ids = tokenizer([t.replace("{}", name) for t in templates])
        emb = model.encode_text(ids)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        mean = emb.mean(dim=0)
        rows.append(mean / mean.norm())
    torch.testing.assert_close(weights, torch.stack(rows), atol=1e-6, rtol=0)
    assert weights.dtype == torch.float32 and weights.shape == (len(NAMES), model.embed_dim)


def test_top_k_and_wrapper(vit):
    model, preprocess, tokenizer = vit
    demo_dir = resources.files("kontrast") / "assets" / "demo"
    demo = sorted(str(p) for p in demo_dir.iterdir() if p.name.endswith(".png"))[:3]
    clf = zs.ZeroShotClassifier(model, preprocess, tokenizer, NAMES, templates="simple")
    probs = clf([str(p) for p in demo])
    assert probs.shape == (3, len(NAMES))
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(3))
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(str(p)) for p in demo]))
    torch.testing.assert_close(probs, zs.classify(model, img, clf.weights), atol=1e-6, rtol=0)
    pred = clf.predict([str(p) for p in demo], k=2)
    assert len(pred) == 3 and all(len(r) == 2 for r in pred)
    for row, p in zip(pred, probs):
        assert row[0][0] == NAMES[int(p.argmax())] and row[0][1] == pytest.approx(float(p.max()))
        assert row[0][1] >= row[1][1]
    assert len(zs.top_k(probs, NAMES, k=99)[0]) == len(NAMES)


# ---- caching ----------------------------------------------------------------------------------------
def test_cache_hit_and_miss(vit, tmp_path, monkeypatch):
    model, _, tokenizer = vit
    calls = []
    real = model.encode_text

    def counting(ids, normalize=False):
        calls.append(ids.shape[0])
        return real(ids, normalize=normalize)

    monkeypatch.setattr(model, "encode_text", counting)
    cache = tmp_path / "zs"
    first = zs.build_classifier(model, tokenizer, NAMES, templates="simple", cache_dir=cache)
    n_prompts = len(NAMES) * len(zs.load_templates("simple"))
    assert sum(calls) == n_prompts and len(list(cache.glob("*.npy"))) == 1
    again = zs.build_classifier(model, tokenizer, NAMES, templates="simple", cache_dir=cache)  # memory hit
    assert sum(calls) == n_prompts and torch.equal(first, again)
    zs.clear_memory_cache()
    from_disk = zs.build_classifier(model, tokenizer, NAMES, templates="simple", cache_dir=cache)  # disk hit
    assert sum(calls) == n_prompts and torch.equal(first, from_disk)
    other = zs.build_classifier(model, tokenizer, NAMES, templates=["a photo of a {}."], cache_dir=cache)  # miss
    assert sum(calls) == n_prompts + len(NAMES) and not torch.equal(first, other)
    zs.build_classifier(model, tokenizer, NAMES[:2], templates="simple", cache_dir=cache)  # other names: miss
    assert len(list(cache.glob("*.npy"))) == 3
    again[0, 0] = 123.0  # a caller's edit does not reach the cache
    assert torch.equal(zs.build_classifier(model, tokenizer, NAMES, templates="simple", cache_dir=cache), first)


def test_default_cache_dir_env(vit, tmp_path):
    model, _, tokenizer = vit
    zs.build_classifier(model, tokenizer, ["owl"], templates=["{}"])
    assert zs.default_cache_dir() == tmp_path / "cache" / "zeroshot"
    assert len(list(zs.default_cache_dir().glob("*.npy"))) == 1


def test_bad_class_lists(vit):
    model, _, tokenizer = vit
    with pytest.raises(KontrastError, match="no class names"):
        zs.build_classifier(model, tokenizer, [], cache=False)
    with pytest.raises(KontrastError, match="'cat' is given more than once"):
        zs.build_classifier(model, tokenizer, ["cat", "dog", "cat"], cache=False)


# ---- long texts -------------------------------------------------------------------------------------
LONG = " ".join(f"word{i}" for i in range(120))  # ~240 BPE tokens, well over 77


@torch.no_grad()
def test_long_text_truncate_warns(vit):
    model, _, tokenizer = vit
    with pytest.warns(zs.LongTextWarning, match="1 text"):
        emb = zs.encode_texts(model, tokenizer, ["short", LONG])
    torch.testing.assert_close(emb, model.encode_text(tokenizer(["short", LONG]), normalize=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zs.encode_texts(model, tokenizer, ["short one", "another"])  # no warning when nothing is cut


@torch.no_grad()
def test_long_text_average(vit):
    model, _, tokenizer = vit
    windows = tokenizer.split_windows(LONG)
    assert len(windows) > 1
    ids = torch.zeros(len(windows), model.context_length, dtype=torch.long)
    for i, w in enumerate(windows):
        ids[i, : len(w)] = torch.tensor(w)
    hand = F.normalize(model.encode_text(ids, normalize=True).mean(dim=0), dim=-1)
    emb = zs.encode_texts(model, tokenizer, ["short", LONG, "also short"], long_text="average", batch_size=2)
    torch.testing.assert_close(emb[1], hand, atol=1e-6, rtol=0)
    # texts that fit give the same embedding with either policy
    fits = zs.encode_texts(model, tokenizer, ["short", "also short"])
    torch.testing.assert_close(emb[[0, 2]], fits, atol=1e-6, rtol=0)
    with pytest.raises(KontrastError, match="long_text"):
        zs.encode_texts(model, tokenizer, ["x"], long_text="split")


@torch.no_grad()
def test_classifier_with_long_class_names(vit):
    model, _, tokenizer = vit
    names = ["cat", LONG]
    avg = zs.build_classifier(model, tokenizer, names, templates=["{}"], long_text="average", cache=False)
    with pytest.warns(zs.LongTextWarning):
        cut = zs.build_classifier(model, tokenizer, names, templates=["{}"], cache=False)
    torch.testing.assert_close(avg[0], cut[0])
    assert not torch.allclose(avg[1], cut[1])
