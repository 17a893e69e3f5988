"""Which FAISS code layout a compressed index should use: 8-bit PQ (``IVF{L},PQ{m}``), 4-bit fast-scan PQ
(``IVF{L},PQ{2m}x4fs``, the same bytes a vector, scanned with SIMD lookup tables) or SQ8 (``IVF{L},SQ8``, a byte a
dimension; what ``ivfpq`` builds when the budget holds it), on the first shards of ``benchmarks/scale_data.py``'s
collection (any factory string can be given).

For each factory string: build time (train on a 65,536 sample, add everything), then recall@10 against exact
search and single-query p50 latency (one thread) at several ``nprobe``, with the top ``cand`` candidates
re-scored exactly from RAM (so the rows show the index's own cost, not the disk's).

    python benchmarks/pq_codecs.py /work/bench-data/1m --shards 10 --queries 300 --nprobe 4 8 16 32 --cand 10 100 \
        --factories "IVF1024,PQ64" "IVF1024,SQ8" "IVF1024,PQ128" "IVF1024,PQ128x4fs"
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    import faiss

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="folder written by benchmarks/scale_data.py")
    ap.add_argument("--shards", type=int, default=10, help="img_emb shards to use (100k vectors each)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--factories", nargs="+", default=["IVF1024,PQ64", "IVF1024,PQ128x4fs", "IVF1024,PQ64x4fs"])
    ap.add_argument("--nprobe", nargs="+", type=int, default=[16, 32, 64])
    ap.add_argument("--cand", nargs="+", type=int, default=[10, 100, 400], help="candidates re-scored exactly")
    args = ap.parse_args(argv)

    x = np.concatenate([np.load(args.data / "img_emb" / f"img_emb_{i}.npy") for i in range(args.shards)])
    x = x.astype(np.float32)  # [n, d]
    q = np.load(args.data / "queries.npy").astype(np.float32)[: args.queries]  # [q, d]
    truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]  # [q, 10] exact ids
    sample = x[np.random.default_rng(0).choice(len(x), min(65536, len(x)), replace=False)]
    print(f"{len(x)} vectors of {x.shape[1]} dims, {len(q)} queries; faiss SIMD level "
          f"{faiss.SIMDConfig.get_level_name()}")
    print("| factory | build s | nprobe | candidates | recall@10 | p50 ms |\n|---|---:|---:|---:|---:|---:|")
    for factory in args.factories:
        index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        t = time.perf_counter()
        index.train(sample)
        index.add(x)
        build = time.perf_counter() - t
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        for nprobe in args.nprobe:
            faiss.extract_index_ivf(index).nprobe = nprobe
            for cand in args.cand:
                times, found = [], []
                for row in q:
                    t0 = time.perf_counter()
                    ids = index.search(row[None], cand)[1][0]
                    ids = ids[ids >= 0]
                    top = ids[np.argsort(-(x[ids] @ row))[:10]]  # exact re-score of the candidates
                    times.append(time.perf_counter() - t0)
                    found.append(top)
                recall = np.mean([len(set(f.tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth)])
                print(f"| {factory} | {build:.0f} | {nprobe} | {cand} | {recall:.3f} | "
                      f"{1000 * np.median(times):.2f} |", flush=True)
        faiss.omp_set_num_threads(threads)


if __name__ == "__main__":
    main()
