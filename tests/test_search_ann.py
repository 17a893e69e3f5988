"""FAISS index choice, tuning, id handling (kontrast.search.ann), on small synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from kontrast.errors import KontrastError
from kontrast.search import ann


def _clustered(n: int, dim: int = 32, centres: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _uniform(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_auto_is_flat_below_limit():
    x = _clustered(500)
    index, params = ann.build(x, np.arange(10, 510), "auto")
    assert params.kind == "flat" and ann.kind_of(index) == "flat"
    _, ids = index.search(x[:3], 1)
    assert ids[:, 0].tolist() == [10, 11, 12]  # explicit ids, not positions


def test_ivf_tuned_to_target_on_structured_data():
    x = _clustered(4000)
    ids = np.arange(4000, dtype=np.int64) * 3 + 7
    index, params = ann.build(x, ids, "ivf")
    assert params.kind == "ivf" and params.nlist == ann.ivf_nlist(4000) == 64
    assert params.tuned_recall >= ann.RECALL_TARGET and params.nprobe < params.nlist
    assert ann.recall_at_10(index, x, ids, np.arange(0, 4000, 37)) >= 0.9
    assert sorted(ann.index_ids(index).tolist()) == sorted(ids.tolist())


def test_auto_keeps_flat_when_ivf_does_not_pay(monkeypatch):
    monkeypatch.setattr(ann, "FLAT_LIMIT", 1000)
    _, params = ann.build(_uniform(3000), np.arange(3000), "auto")  # no structure: IVF must scan ~everything
    assert params.kind == "flat" and "nprobe" in params.note
    _, params = ann.build(_clustered(3000), np.arange(3000), "auto")
    assert params.kind == "ivf" and params.requested == "auto"


def test_ivf_remove_keeps_ids():
    """IVF holds its ids itself: removing some leaves the others found under their own ids."""
    x = _clustered(2000)
    ids = np.arange(100, 2100, dtype=np.int64)
    index, params = ann.build(x, ids, "ivf")
    ann.apply_search_params(index, ann.AnnParams("ivf", nlist=params.nlist, nprobe=params.nlist))
    index.remove_ids(ids[:10])
    _, found = index.search(x[100:105], 1)
    assert found[:, 0].tolist() == ids[100:105].tolist()
    np.testing.assert_array_equal(ann.reconstruct(index, ids[100:102]), x[100:102])
    assert len(ann.index_ids(index)) == 1990


def test_hnsw_forced_and_cannot_remove():
    x = _clustered(600)
    index, params = ann.build(x, np.arange(600), "hnsw")
    assert params.kind == "hnsw" and params.ef_search >= 16 and not ann.supports_remove("hnsw")
    _, found = index.search(x[:5], 1)
    assert found[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_needs_rebuild_rules(monkeypatch):
    monkeypatch.setattr(ann, "FLAT_LIMIT", 1000)
    flat = ann.AnnParams("flat", built_n=0)
    assert not ann.needs_rebuild(flat, 999, "auto") and ann.needs_rebuild(flat, 1000, "auto")
    kept_flat = ann.AnnParams("flat", built_n=1500)  # a past choice at 1500: re-made when the size doubles
    assert not ann.needs_rebuild(kept_flat, 2999, "auto") and ann.needs_rebuild(kept_flat, 3000, "auto")
    ivf = ann.AnnParams("ivf", nlist=16, built_n=2000)
    assert not ann.needs_rebuild(ivf, 7000, "auto") and ann.needs_rebuild(ivf, 8000, "auto")
    assert ann.needs_rebuild(ivf, 900, "auto")  # shrunk below the flat limit
    assert ann.needs_rebuild(flat, 10, "ivf") and ann.needs_rebuild(ivf, 2000, "flat")
    forced = ann.AnnParams("ivf", nlist=16, built_n=2000, requested="ivf")
    assert not ann.needs_rebuild(forced, 2500, "ivf") and ann.needs_rebuild(forced, 2500, "auto")


def test_bad_type():
    with pytest.raises(KontrastError, match="index-type"):
        ann.build(_uniform(10), np.arange(10), "annoy")
