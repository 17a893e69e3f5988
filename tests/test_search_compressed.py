"""The compressed (ivfpq) index: plan under a memory budget, recall with and without re-rank, memory-mapped
serving through ``SearchIndex``, kill-and-resume of the streaming build, and the HTTP server on top of it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kontrast.errors import KontrastError
from kontrast.search import bulk, compressed
from kontrast.search.index import SearchIndex

REPO = Path(__file__).resolve().parents[1]
DIM, N, SHARDS = 32, 12_000, 4


def clustered(n: int, dim: int, seed: int, centres: int = 300) -> np.ndarray:
    """Unit vectors [n, dim] around ``centres`` directions with a decaying spectrum (like embeddings)."""
    rng = np.random.default_rng(0)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    scale = (np.arange(dim) + 1.0) ** -0.5
    scale *= 0.9 / np.sqrt(np.sum(scale**2))
    r = np.random.default_rng(seed)
    x = c[r.integers(0, centres, n)] + (r.standard_normal((n, dim)) * scale).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Shard:
    """A ``bulk.ShardSource`` over an .npy file; ``kill_on_meta``: SIGKILL this process when encoded."""

    def __init__(self, path: Path, kill_on_meta: bool = False) -> None:
        self.path, self.kill = path, kill_on_meta
        self.key = str(path)
        st = path.stat()
        self.signature = (st.st_size, st.st_mtime_ns)
        self.rows = int(np.load(path, mmap_mode="r").shape[0])

    def vectors(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r")

    def load(self) -> tuple[np.ndarray, list[dict]]:
        if self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.vectors(), [{"image_path": f"{self.path.stem}/{j}.jpg", "caption": f"item {j}"}
                                for j in range(self.rows)]


def write_shards(root: Path, n: int = N, shards: int = SHARDS, dim: int = DIM) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    x = clustered(n, dim, seed=1).astype(np.float16)
    paths = []
    for i, part in enumerate(np.array_split(x, shards)):
        paths.append(root / f"img_emb_{i}.npy")
        np.save(paths[-1], part)
    return paths


PQ_BUDGET = 300 << 10  # 12,000 SQ8 codes of 32 dims need ~512 KB: this budget makes the planner take PQ


def build(folder: Path, paths: list[Path], max_memory: int = 64 << 20, dim: int = DIM, fp: str = "0" * 16,
          spec: str = "m") -> bulk.BulkStats:
    return bulk.build_compressed(folder, [Shard(p) for p in paths], str(paths[0].parent), spec, fp, dim, max_memory)


def exact_top10(paths: list[Path], queries: np.ndarray) -> np.ndarray:
    x = np.concatenate([np.load(p).astype(np.float32) for p in paths])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.argsort(-(queries @ x.T), axis=1)[:, :10]  # ids are row numbers in shard order


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10].tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("compressed")
    paths = write_shards(root / "emb")
    stats = build(root / "idx", paths, max_memory=PQ_BUDGET)
    return root, paths, stats


def test_plan_fits_budget_and_parse_memory():
    p = compressed.plan(10_000_000, 512, compressed.parse_memory("4G"))
    assert p.index_bytes() <= 4 << 30 and p.m == compressed.MAX_CODE and p.nlist == compressed.MAX_NLIST
    assert p.factory == "IVF8192,PQ64" and compressed.plan(10_000_000, 512, 4 << 30, opq=True).opq_dim == 256
    sq8 = compressed.plan(10_000_000, 512, compressed.parse_memory("6G"))  # a byte a dimension fits: SQ8
    assert sq8.factory == "IVF8192,SQ8" and sq8.m == 512 and 4.8e9 < sq8.index_bytes() <= 6 << 30
    assert compressed.plan(10_000_000, 512, 6 << 30, opq=True).factory == "OPQ64_256,IVF8192,PQ64"
    assert compressed.PQPlan(**{k: v for k, v in p.to_dict().items() if k != "codec"}) == p  # plans saved before SQ8
    assert compressed.plan(10_000_000, 512, 6 << 30, nlist=16384).factory == "IVF16384,SQ8"  # past the automatic cap
    with pytest.raises(KontrastError, match="nlist 1000 must be between 1 and 25"):
        compressed.plan(1000, 512, nlist=1000)
    small = compressed.plan(10_000_000, 512, compressed.parse_memory("500M"))
    assert small.m < p.m and small.index_bytes() <= 500 << 20
    with pytest.raises(compressed.MemoryBudgetError):
        compressed.plan(10_000_000, 512, 100 << 20)
    assert compressed.parse_memory("1.5G") == int(1.5 * (1 << 30)) and compressed.parse_memory("512MB") == 512 << 20
    with pytest.raises(KontrastError, match="not a size"):
        compressed.parse_memory("lots")
    # the automatic choice: compressed above 1M vectors, or when float32 vectors exceed the budget
    assert bulk.use_compressed(1_500_000, 512, None, None, None) and bulk.use_compressed(10, 512, "ivfpq", None, None)
    assert not bulk.use_compressed(500_000, 512, "auto", None, None)
    assert bulk.use_compressed(500_000, 512, "auto", None, 512 << 20) and not bulk.use_compressed(500_000, 512, "ivf", None, 1)
    assert bulk.use_compressed(10, 512, None, "ivfpq", None)  # an index that is compressed stays so


def test_recall_rerank_budget_and_mmap(built):
    import faiss

    root, paths, stats = built
    assert stats.n == N and stats.encoded == SHARDS
    index = SearchIndex(root / "idx")
    loaded = index.ann("image")
    assert loaded.params.kind == "ivfpq" and loaded.params.built_n == N
    faiss_file = next((root / "idx").glob("image-*.faiss"))
    assert faiss_file.stat().st_size <= 64 << 20  # the budget given to build()
    ivf = faiss.extract_index_ivf(loaded.index.index)
    assert isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)  # memory-mapped
    assert not list((root / "idx").glob("index.sqlite")) or index.store.count("image_vec") == 0  # no vector blobs
    queries = clustered(200, DIM, seed=7)
    truth = exact_top10(paths, queries)
    _, ids = index.search(queries, 10)
    with_rerank = recall(ids, truth)
    loaded.index.rerank = 0
    _, ids_pq = index.search(queries, 10)
    without = recall(ids_pq, truth)
    assert with_rerank >= 0.95 and with_rerank > without, (with_rerank, without)
    assert loaded.params.tuned_recall >= 0.95 and ",PQ" in loaded.params.note
    index.close()


def test_sq8_codes_when_the_budget_allows(built, tmp_path):
    """A budget that holds a byte a dimension gets SQ8 codes: recall without the re-rank near exact, memory-mapped."""
    import faiss

    _, paths, _ = built
    stats = build(tmp_path / "sq8", paths)  # 64 MB
    assert stats.n == N
    index = SearchIndex(tmp_path / "sq8")
    loaded = index.ann("image")
    assert loaded.params.kind == "ivfpq" and loaded.params.note.startswith("IVF256,SQ8, 40 bytes")
    ivf = faiss.extract_index_ivf(loaded.index.index)
    assert isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)
    assert isinstance(faiss.downcast_index(ivf), faiss.IndexIVFScalarQuantizer)
    queries = clustered(200, DIM, seed=7)
    truth = exact_top10(paths, queries)
    with_rerank = recall(index.search(queries, 10)[1], truth)
    loaded.index.rerank = 0
    without = recall(index.search(queries, 10)[1], truth)
    assert with_rerank >= 0.95 and without >= 0.95, (with_rerank, without)
    index.close()
    # lists chosen by the caller; a rerun with another number trains again rather than mixing quantizers
    for nlist in (64, 128):
        bulk.build_compressed(tmp_path / "n", [Shard(p) for p in paths], str(paths[0].parent), "m", "0" * 16, DIM,
                              nlist=nlist)
        index = SearchIndex(tmp_path / "n")
        assert index.ann("image").params.nlist == nlist and index.ann("image").params.note.startswith(f"IVF{nlist},")
        assert recall(index.search(queries, 10)[1], truth) >= 0.9  # tuned to 0.95 on collection vectors
        index.close()


def test_rows_match_ids(built):
    root, paths, _ = built
    index = SearchIndex(root / "idx")
    per = N // SHARDS
    row = index.store.rows([per + 5])[per + 5]  # id = position in shard order: shard 1, row 5
    assert row["path"] == f"{paths[1].stem}/5.jpg" and row["caption"] == "item 5"
    assert index.store.count() == N
    index.close()


def test_killed_build_resumes_and_equals_one_go(built, tmp_path):
    root, paths, _ = built
    folder = tmp_path / "idx"
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path\n"
              "from test_search_compressed import Shard, bulk\n"
              "paths = [Path(p) for p in sys.argv[3:]]\n"
              "shards = [Shard(p, kill_on_meta=(i == 2)) for i, p in enumerate(paths)]\n"
              "bulk.build_compressed(sys.argv[2], shards, str(paths[0].parent), 'm', '0' * 16, 32, 64 << 20)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, str(REPO / "tests"), str(folder), *map(str, paths)],
                          env=env, capture_output=True, check=False, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    index = SearchIndex(folder)
    assert index.store.db.execute("SELECT COUNT(*) FROM shards").fetchone()[0] == 2  # shards 0, 1 committed
    assert index.store.count() == 2 * (N // SHARDS) and not list(folder.glob("image-*.json"))
    assert index.ann("image") is None  # nothing served before the first complete build
    index.close()
    stats = build(folder, paths)
    assert (stats.unchanged, stats.encoded) == (2, 2)
    resumed, one_go = SearchIndex(folder), SearchIndex(root / "idx")
    queries = clustered(50, DIM, seed=9)
    assert resumed.ann("image").params.nprobe == one_go.ann("image").params.nprobe
    _, i1 = resumed.search(queries, 10)
    _, i2 = one_go.search(queries, 10)
    np.testing.assert_array_equal(i1, i2)
    assert resumed.store.count() == N
    resumed.close()
    one_go.close()


def test_rerun_unchanged_is_cheap_and_refuses_mixing(built, tmp_path):
    root, paths, _ = built
    stats = build(root / "idx", paths)
    assert (stats.unchanged, stats.encoded) == (SHARDS, 0)
    with pytest.raises(KontrastError, match="model"):
        build(root / "idx", paths, fp="1" * 16, spec="other")


def test_server_searches_compressed_index(tmp_path, fixtures_dir):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    import kontrast
    from kontrast.record import fingerprint
    from kontrast.search.query import Searcher
    from kontrast.search.server import create_app

    model_path = str(fixtures_dir / "openai_vit.pt")
    model, _, _ = kontrast.load(model_path)
    dim = int(model.embed_dim)
    paths = write_shards(tmp_path / "emb", n=8000, shards=2, dim=dim)
    build(tmp_path / "idx", paths, dim=dim, fp=fingerprint(model), spec=model_path)
    searcher = Searcher.open(str(tmp_path / "idx"))
    app = create_app(searcher)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        health = client.get("/health").json()
        assert health["image_index"]["kind"] == "ivfpq" and health["items"] == health["images"] == 8000
        res = client.get("/search", params={"q": "a red flag", "k": 5}).json()["results"]
        direct = searcher.search(text="a red flag", k=5)
        assert [r["id"] for r in res] == [r.id for r in direct] and len(res) == 5
        assert res[0]["path"].startswith("img_emb_") and res[0]["score"] >= res[-1]["score"]
        # --exclude reads the hits' vectors: from the vector shards of a compressed index
        excl = client.get("/search", params={"q": "a red flag", "k": 5, "exclude": "a keycap"}).json()["results"]
        assert excl and len(excl) <= 5
        vec = searcher.index.vectors([res[0]["id"]])[res[0]["id"]]
        np.testing.assert_allclose(vec, np.load(paths[0] if res[0]["id"] < 4000 else paths[1])[res[0]["id"] % 4000],
                                   atol=2e-3)


def test_cli_from_embeddings_builds_ivfpq(tmp_path, fixtures_dir, capsys):
    """``kontrast index --from-embeddings`` (clip-retrieval layout) switches to ivfpq when forced or over budget."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    import kontrast
    from kontrast.cli import main

    model_path = str(fixtures_dir / "openai_vit.pt")
    dim = int(kontrast.load(model_path)[0].embed_dim)
    emb = tmp_path / "emb"
    (emb / "img_emb").mkdir(parents=True)
    (emb / "metadata").mkdir()
    x = clustered(6000, dim, seed=3).astype(np.float16)
    for i, part in enumerate(np.array_split(x, 3)):
        np.save(emb / "img_emb" / f"img_emb_{i}.npy", part)
        pq.write_table(pa.table({"image_path": [f"s{i}/{j}.jpg" for j in range(len(part))],
                                 "caption": [f"caption {i} {j}" for j in range(len(part))]}),
                       emb / "metadata" / f"metadata_{i}.parquet")
    args = ["index", "--from-embeddings", str(emb), "--model", model_path, "--no-progress"]
    # 6000 float32 vectors need ~1.5 MB: a 1M budget makes the automatic choice the compressed index
    capsys.readouterr()
    assert main([*args, "--index", str(tmp_path / "auto"), "--max-index-memory", "1M"]) == 0
    assert "ivfpq" in capsys.readouterr().out
    index = SearchIndex(tmp_path / "auto")
    loaded = index.ann("image")
    assert loaded.params.kind == "ivfpq" and index.store.count() == 6000
    _, ids = index.search(x[2500].astype(np.float32), 1)
    assert index.store.rows([int(ids[0][0])])[int(ids[0][0])]["path"] == "s1/500.jpg"  # itself, by path
    index.close()
    assert main([*args, "--index", str(tmp_path / "flat")]) == 0  # small and no budget: today's flat index
    assert SearchIndex(tmp_path / "flat").ann("image").params.kind == "flat"
    capsys.readouterr()
    assert main([*args, "--index", str(tmp_path / "auto"), "--index-type", "flat"]) == 2  # one-line refusals
    assert "compressed (ivfpq)" in capsys.readouterr().err
    (tmp_path / "images").mkdir()
    assert main(["index", str(tmp_path / "images"), "--index", str(tmp_path / "auto"), "--model", model_path,
                 "--no-progress", "--workers", "0"]) == 2
    assert "compressed (ivfpq)" in capsys.readouterr().err
