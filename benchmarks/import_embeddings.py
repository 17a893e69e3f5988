"""Benchmark: ``kontrast index --from-embeddings`` on a clip-retrieval folder (rows/s, a rerun, peak RSS).

Writes ``--n`` random unit vectors (``--dim``, float16, as ``clip-retrieval inference`` stores them) with
caption embeddings in ``--shards`` shards (``img_emb/``, ``text_emb/``, ``metadata/`` with image_path, caption,
url), then times ``search.import_embeddings.import_embeddings`` into a new index (SQLite rows + the FAISS
indexes ``auto`` picks), then a rerun (every shard unchanged: nothing read). No model is loaded: the index
records a made-up spec and fingerprint. Prints the CPU flags that matter for FAISS and the load average.

    python benchmarks/import_embeddings.py --n 200000 --shards 20
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kontrast.search.import_embeddings import import_embeddings


def write_folder(root: Path, n: int, dim: int, shards: int) -> None:
    rng = np.random.default_rng(0)
    for sub in ("img_emb", "text_emb", "metadata"):
        (root / sub).mkdir(parents=True)
    pad = len(str(shards - 1))
    bounds = np.linspace(0, n, shards + 1).astype(int)
    for i in range(shards):
        lo, hi = bounds[i], bounds[i + 1]
        tag = str(i).zfill(pad)
        for sub, name in (("img_emb", "img_emb"), ("text_emb", "text_emb")):
            x = rng.standard_normal((hi - lo, dim)).astype(np.float32)
            np.save(root / sub / f"{name}_{tag}.npy", (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16))
        pq.write_table(pa.table({"image_path": [f"/data/{j:09d}.jpg" for j in range(lo, hi)],
                                 "caption": [f"a photo number {j}" for j in range(lo, hi)],
                                 "url": [f"https://example.com/{j:09d}.jpg" for j in range(lo, hi)]}),
                       root / "metadata" / f"metadata_{tag}.parquet")


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next(line for line in text.splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni") if f in flags)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--shards", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, index = Path(tmp) / "emb", Path(tmp) / "index"
        t = time.perf_counter()
        write_folder(src, args.n, args.dim, args.shards)
        print(f"wrote {args.n} x {args.dim} float16 (+ captions) in {args.shards} shards: {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        stats = import_embeddings(src, index, "bench-model", "0" * 16, args.dim)
        took = time.perf_counter() - t
        print(f"import: {took:.1f} s, {args.n / took:,.0f} rows/s; {stats.items} items, index types {stats.index_types}")
        t = time.perf_counter()
        again = import_embeddings(src, index, "bench-model", "0" * 16, args.dim)
        print(f"rerun: {time.perf_counter() - t:.1f} s ({again.unchanged} shards unchanged, {again.imported} imported)")
        db = sum(f.stat().st_size for f in index.iterdir() if f.name.startswith("index.sqlite"))
        print(f"index.sqlite: {db / 1e6:.0f} MB; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.0f} MB")
    print(f"CPU flags: {cpu_flags()}; {os.cpu_count()} cores; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
