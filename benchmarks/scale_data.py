"""Clustered 512-d unit vectors written as clip-retrieval embedding shards, for ``benchmarks/search_scale.py``.

Layout (what clip-retrieval writes): ``DIR/img_emb/img_emb_{i}.npy`` float16 [rows, dim] shards and
``DIR/queries.npy`` (float32 [q, dim], fresh draws from the same distribution, not in the collection).

The distribution imitates the structure of CLIP embeddings rather than isotropic noise: ``--centres``
concept directions (uniform on the sphere), and around each a point spread along a shared, decaying
spectrum (variance of the j-th principal direction ~ (j + 1) ** -1.0 after a random rotation), scaled so
that a point sits at cosine ~0.75 from its centre. Real embedding sets are anisotropic in the same way (a
few directions carry most of the variance); i.i.d. noise around centres would make every point of a
cluster equidistant from every other, a case no compressed index (and no real data) shows. Each shard
draws from its own seed, so shards can be generated (and regenerated) independently and in any order.

    python benchmarks/scale_data.py /work/bench-data/10m --n 10000000 --shard-size 100000
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def _model(dim: int, centres: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(centres [c, dim], mixing [dim, dim])``: noise z [b, dim] @ mixing has the decaying spectrum."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))  # random rotation [dim, dim]
    spectrum = (np.arange(dim) + 1.0) ** -0.5  # standard deviations; variances ~ 1/(j+1)
    spectrum *= 0.88 / np.sqrt(np.sum(spectrum**2))  # |noise| ~ 0.88: cosine ~0.75 to the centre
    return c, (spectrum[:, None] * q.T).astype(np.float32)


def draw(n: int, dim: int, centres: int, seed: int, shard_seed: int) -> np.ndarray:
    """``n`` unit vectors [n, dim] float32 from the model, drawn with ``shard_seed``."""
    c, mixing = _model(dim, centres, seed)
    rng = np.random.default_rng([seed, shard_seed])
    out = c[rng.integers(0, len(c), n)]
    out += rng.standard_normal((n, dim), dtype=np.float32) @ mixing
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--shard-size", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--centres", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    (out / "img_emb").mkdir(parents=True, exist_ok=True)
    if not (out / "queries.npy").exists():
        _save(out / "queries.npy", draw(args.queries, args.dim, args.centres, args.seed, 10**9))
    shards = (args.n + args.shard_size - 1) // args.shard_size
    t0 = time.time()
    for i in range(shards):
        path = out / "img_emb" / f"img_emb_{i}.npy"
        if path.exists():
            continue
        rows = min(args.shard_size, args.n - i * args.shard_size)
        _save(path, draw(rows, args.dim, args.centres, args.seed, i).astype(np.float16))
        print(f"shard {i + 1}/{shards} {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
