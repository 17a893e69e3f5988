"""Benchmark: the compressed (``ivfpq``) index at 10M vectors, beside exact search and autofaiss.

Data: ``benchmarks/scale_data.py`` writes clustered 512-d unit vectors as clip-retrieval float16 shards
(``DIR/img_emb/img_emb_{i}.npy``) and 1,000 held-out queries (``DIR/queries.npy``).

Steps (each prints one line; results go to ``--out`` as JSON too):

- ``build``: ``kontrast.search.bulk.build_compressed`` over the shards into ``--index`` (what
  ``kontrast index --from-embeddings DIR`` does above its threshold), timed, with the peak RSS of the process
  (``ru_maxrss``): run it in its own process (``--steps build``) so that the peak is the build's alone.
- ``eval``: first the exact top-10 of the queries by streaming the shards through ``faiss.knn`` (cached in
  DIR), then the served index (``SearchIndex.search``, memory-mapped) on the queries: recall@10 against the
  truth with and without the exact re-rank, p50/p99 latency of single-query calls.
- ``autofaiss``: ``autofaiss build_index`` on the same shards with the same ``--max-index-memory``, then
  the same recall and latency (the index read with ``IO_FLAG_MMAP`` and autofaiss' own search parameters).

    python benchmarks/scale_data.py /work/bench-data/10m --n 10000000
    python benchmarks/search_scale.py /work/bench-data/10m --index /work/bench-data/idx --steps build --max-index-memory 6G
    OMP_NUM_THREADS=1 python benchmarks/search_scale.py /work/bench-data/10m --index /work/bench-data/idx --steps eval
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


class NpyShard:
    """A clip-retrieval ``img_emb_{i}.npy`` shard as a ``bulk.ShardSource`` (no metadata files)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.key = str(path.resolve())
        st = path.stat()
        self.signature = (st.st_size, st.st_mtime_ns)
        self.rows = int(np.load(path, mmap_mode="r").shape[0])

    def vectors(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r")

    def load(self) -> tuple[np.ndarray, list[dict]]:
        return self.vectors(), [{} for _ in range(self.rows)]


def npy_shards(root: Path, limit: int | None = None) -> list[NpyShard]:
    files = sorted((root / "img_emb").glob("img_emb_*.npy"), key=lambda p: int(re.findall(r"\d+", p.name)[-1]))
    return [NpyShard(p) for p in files[:limit]]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def load_avg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def step_build(args) -> dict:
    from kontrast.search import bulk, compressed

    shards = npy_shards(Path(args.data), args.shards)
    t0 = time.time()
    stats = bulk.build_compressed(args.index, shards, str(Path(args.data).resolve()), "bench", "0" * 16, 512,
                                  compressed.parse_memory(args.max_index_memory), nlist=args.nlist)
    out = {"step": "build", "n": stats.n, "seconds": round(time.time() - t0, 1), "phases": stats.seconds,
           "peak_rss_gb": round(peak_rss_gb(), 2), "params": stats.params, "load": load_avg()}
    return out


def ground_truth(args, queries: np.ndarray) -> np.ndarray:
    import faiss

    shards = npy_shards(Path(args.data), args.shards)
    n = sum(s.rows for s in shards)
    cache = Path(args.data) / f"truth-{n}-{len(queries)}.npy"
    if cache.exists():
        return np.load(cache)
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    start = 0
    for s in shards:
        x = np.asarray(s.vectors(), np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        d, i = faiss.knn(queries, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
        best_s, best_i = np.concatenate([best_s, d], 1), np.concatenate([best_i, i + start], 1)
        order = np.argsort(-best_s, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)
        start += s.rows
    np.save(cache, best_i)
    return best_i


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10].tolist()) & set(t[:10].tolist())) / 10 for f, t in zip(found, truth)]))


def latency(search, queries: np.ndarray) -> tuple[np.ndarray, float, float]:
    found, times = [], []
    for q in queries:
        t = time.perf_counter()
        _, ids = search(q[None, :])
        times.append(time.perf_counter() - t)
        found.append(ids[0])
    ms = np.array(times) * 1000
    return np.array(found), float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def step_eval(args) -> list[dict]:
    import faiss

    from kontrast.search.index import SearchIndex

    faiss.omp_set_num_threads(1)  # one query per call, as the server makes; the other core serves another
    queries = np.load(Path(args.data) / "queries.npy")[: args.queries]
    truth = ground_truth(args, queries)
    from kontrast.search import compressed

    index = SearchIndex(args.index)
    loaded = index.ann("image")
    served = loaded.index
    tuned = loaded.params.nprobe
    rows = []
    for nprobe, rerank in ((tuned, served.rerank or 100), (tuned, 0), (max(1, tuned // 8), served.rerank or 100)):
        served.rerank = rerank
        compressed.set_nprobe(served.index, nprobe)
        index.search(queries[:20], 10)  # warm up
        found, p50, p99 = latency(lambda q: index.search(q, 10), queries)
        rows.append({"step": "eval", "index": f"kontrast {loaded.params.note} nprobe={nprobe}", "rerank": rerank,
                     "recall@10": round(recall(found, truth), 4), "p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
                     "rss_gb": round(peak_rss_gb(), 2), "load": load_avg()})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def step_autofaiss(args) -> list[dict]:
    """Build with autofaiss (in ``--autofaiss-python``'s environment, its own process) and evaluate it here."""
    import faiss

    out = Path(args.index + "-autofaiss")
    out.mkdir(parents=True, exist_ok=True)
    emb = out / "emb"
    emb.mkdir(exist_ok=True)
    for s in npy_shards(Path(args.data), args.shards):  # autofaiss reads every .npy in a folder
        link = emb / s.path.name
        if not link.exists():
            link.symlink_to(s.path)
    code = ("import resource, time, json, sys\nfrom autofaiss import build_index\nt=time.time()\n"
            f"_, info = build_index(embeddings={str(emb)!r}, index_path={str(out / 'knn.index')!r}, "
            f"index_infos_path={str(out / 'infos.json')!r}, max_index_memory_usage={args.max_index_memory!r}, "
            f"current_memory_available='8G', metric_type='ip', nb_cores=2, make_direct_map=False)\n"
            "print(json.dumps({'seconds': round(time.time()-t, 1), 'peak_rss_gb': "
            "round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2), 'info': info}, default=str))\n")
    t0 = time.time()
    try:
        proc = subprocess.run([args.autofaiss_python, "-c", code], capture_output=True, text=True, check=False,
                              timeout=args.autofaiss_timeout)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return [{"step": "autofaiss", "error": f"not finished after {args.autofaiss_timeout} s",
                 "log": [line for line in err.splitlines() if "WARNING clustering" not in line][-8:], "load": load_avg()}]
    if proc.returncode != 0:
        return [{"step": "autofaiss", "error": proc.stderr.strip().splitlines()[-5:]}]
    built = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = [{"step": "autofaiss-build", **built, "wall_s": round(time.time() - t0, 1), "load": load_avg()}]
    faiss.omp_set_num_threads(1)
    queries = np.load(Path(args.data) / "queries.npy")[: args.queries]
    truth = ground_truth(args, queries)
    index = faiss.read_index(str(out / "knn.index"), faiss.IO_FLAG_MMAP)
    params = json.loads((out / "infos.json").read_text()).get("index_param", "")
    if params:
        faiss.ParameterSpace().set_index_parameters(index, params)
    index.search(queries[:20], 10)
    found, p50, p99 = latency(lambda q: index.search(q, 10), queries)
    rows.append({"step": "autofaiss-eval", "index": f"autofaiss {params}", "recall@10": round(recall(found, truth), 4),
                 "p50_ms": round(p50, 2), "p99_ms": round(p99, 2), "load": load_avg()})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="folder written by benchmarks/scale_data.py")
    ap.add_argument("--index", required=True, help="index folder to build / evaluate")
    ap.add_argument("--steps", default="build,eval", help="comma-separated: build, eval, autofaiss")
    ap.add_argument("--shards", type=int, default=None, help="use only the first N shards")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--max-index-memory", default="4G")
    ap.add_argument("--nlist", type=int, default=None, help="IVF lists instead of the automatic choice (build)")
    ap.add_argument("--autofaiss-python", default="/work/afenv/bin/python")
    ap.add_argument("--autofaiss-timeout", type=float, default=None, help="seconds before the autofaiss build is stopped")
    ap.add_argument("--out", default=None, help="append the result lines (JSON) to this file")
    args = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for step in args.steps.split(","):
        result = {"build": step_build, "eval": step_eval, "autofaiss": step_autofaiss}[step](args)
        for line in result if isinstance(result, list) else [result]:
            text = json.dumps(line)
            print(text, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(text + "\n")


if __name__ == "__main__":
    main()
