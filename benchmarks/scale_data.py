"""Clustered 512-d unit vectors written as clip-retrieval embedding shards, for ``benchmarks/search_scale.py``.

Layout (what clip-retrieval writes): ``DIR/img_emb/img_emb_{i}.npy`` float16 [rows, dim] shards and
``DIR/queries.npy`` (float32 [q, dim], fresh draws from the same distribution, not in the collection).

Two structures (``--structure``):

- ``concepts`` (default): a point is ``sqrt(r0) mean + sqrt(r1) group + sqrt(r2) concept + sqrt(r3) noise``,
  renormalised: one direction shared by the whole collection (CLIP embeddings sit in a cone), ``n / 500``
  groups, ``n / 10`` concepts (about 10 points each: the same thing drawn, photographed or cropped a few
  times), and noise with a decaying spectrum (variance of the j-th principal direction ~ 1 / (j + 1) after a
  random rotation). ``r = (0.11, 0.55, 0.25, 0.09)`` was fitted (``--calibrate``) to real CLIP embeddings: the
  image embeddings of the 46,542 pictures of the default model's training data and of ../shared/data, made by
  the first run of the second-generation default model, no longer shipped (nearest-neighbour cosine 0.940, 10th neighbour 0.844, random
  pair 0.113; this structure at the same size: 0.937 / 0.844 / 0.121). Checked on what was not fitted: the
  share of 1,024 IVF lists a query must probe to find 90% of its true top-10 is 0.39% here against 0.59% on the
  real embeddings (the real ones need about 1.5 times the ``nprobe``), and 64-byte PQ (all codes scanned) finds
  91% of the top-10 here against 69% on the real ones: PQ codes are kinder to this structure than to real
  embeddings, so recall without the exact re-rank is optimistic on it. Its second run (``default-v2``) gives
  0.928 / 0.804 / 0.117, 0.59% and 74% on the same pictures::

      kontrast embed ~/.cache/kontrast-data/shards/train-*.tar ../shared/data/emoji/*.tar \
          ../shared/data/clipart/*.tar --out /tmp/realemb --layout clip-retrieval --dtype float32 --model default-v2
      python benchmarks/scale_data.py --calibrate /tmp/realemb
- ``clusters`` (the first version of this benchmark): 20,000 concept directions and around each a point at
  cosine ~0.75 with the same decaying noise. Every point of a cluster is about equally far from every other
  (nearest neighbour 0.76, 10th 0.72, random pair 0.006 at 45k points), so the top-10 is decided by
  differences smaller than a code's error (64-byte PQ: 63%); at 10M vectors its neighbours were spread over
  a quarter of 2,048 lists. Harder than the real embeddings measured above.

Each shard draws from its own seed, so shards can be generated (and regenerated) independently and in any
order; concept and group directions are hashed from their ids into a fixed table, so every shard agrees.

    python benchmarks/scale_data.py /work/bench-data/10m --n 10000000 --shard-size 100000
    python benchmarks/scale_data.py --calibrate real.npy     # fit / check the structure against embeddings
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

RATIOS = (0.11, 0.55, 0.25, 0.09)  # mean, group, concept, noise (squared norms); fitted, see the docstring
POINTS_PER_GROUP = 500
POINTS_PER_CONCEPT = 10
TABLE = 65536  # rows of the direction table concept and group directions are hashed from


def _mixing(dim: int, rng: np.random.Generator) -> np.ndarray:
    """[dim, dim]: standard normal noise [b, dim] @ mixing has a decaying spectrum (variances ~ 1/(j+1)), norm ~1."""
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))  # random rotation [dim, dim]
    spectrum = (np.arange(dim) + 1.0) ** -0.5  # standard deviations
    spectrum /= np.sqrt(np.sum(spectrum**2))
    return (spectrum[:, None] * q.T).astype(np.float32)


def _clusters(n: int, dim: int, centres: int, seed: int, shard_seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    mixing = _mixing(dim, rng) * np.float32(0.88)  # |noise| ~ 0.88: cosine ~0.75 to the centre
    rng = np.random.default_rng([seed, shard_seed])
    out = c[rng.integers(0, len(c), n)]
    out += rng.standard_normal((n, dim), dtype=np.float32) @ mixing
    return out


def _directions(table: np.ndarray, ids: np.ndarray, salt: int) -> np.ndarray:
    """A unit direction [len(ids), dim] per id: the normalised sum of two table rows picked by a hash of the id."""
    h = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt)
    a = (h >> np.uint64(16)) % np.uint64(TABLE - 1) + np.uint64(1)  # row 0 is the shared mean direction
    b = (h >> np.uint64(40)) % np.uint64(TABLE - 1) + np.uint64(1)
    v = table[a.astype(np.int64)] + table[b.astype(np.int64)]
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _concepts(n: int, dim: int, total: int, seed: int, shard_seed: int, ratios: tuple[float, ...]) -> np.ndarray:
    rng = np.random.default_rng([seed, 7])
    table = rng.standard_normal((TABLE, dim), dtype=np.float32)
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    mixing = _mixing(dim, rng)
    groups = max(1, total // POINTS_PER_GROUP)
    concepts = max(1, total // POINTS_PER_CONCEPT)
    r0, r1, r2, r3 = (np.float32(np.sqrt(r)) for r in ratios)
    rng = np.random.default_rng([seed, shard_seed])
    concept = rng.integers(0, concepts, n)
    out = r0 * table[0] + r1 * _directions(table, concept % groups, 1) + r2 * _directions(table, concept, 2)
    out += r3 * (rng.standard_normal((n, dim), dtype=np.float32) @ mixing)
    return out


def draw(n: int, dim: int, seed: int, shard_seed: int, structure: str = "concepts", total: int = 10_000_000,
         centres: int = 20_000, ratios: tuple[float, ...] = RATIOS) -> np.ndarray:
    """``n`` unit vectors [n, dim] float32 of a collection of ``total`` vectors, drawn with ``shard_seed``."""
    if structure == "clusters":
        out = _clusters(n, dim, centres, seed, shard_seed)
    else:
        out = _concepts(n, dim, total, seed, shard_seed, ratios)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def neighbour_stats(x: np.ndarray, queries: int = 1000, k: int = 10, nlist: int = 1024) -> dict[str, float]:
    """What ``--calibrate`` compares: mean cosine of the 1st and k-th neighbour and of random pairs, the share
    of ``nlist`` k-means lists to probe for 90% of the true top-k, and 64-byte PQ's recall@k (all codes scanned)."""
    import faiss

    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    q, base = x[perm[:queries]], np.ascontiguousarray(x[perm[queries:]])
    d = base.shape[1]
    scores, truth = faiss.knn(q, base, k, metric=faiss.METRIC_INNER_PRODUCT)  # [q, k]
    km = faiss.Kmeans(d, nlist, niter=20, seed=1)
    km.train(base)
    assign = km.index.search(base, 1)[1][:, 0]  # [n] list of each vector
    order = np.argsort(-(q @ km.centroids.T), axis=1)  # [q, nlist] lists by closeness
    rank = np.argsort(order, axis=1)  # [q, nlist] rank of each list for each query
    ranks = np.take_along_axis(rank, assign[truth], axis=1)  # [q, k] rank of each true neighbour's list
    probe = next(p for p in range(1, nlist + 1) if (ranks < p).mean() >= 0.9)
    pq = faiss.IndexPQ(d, 64, 8, faiss.METRIC_INNER_PRODUCT)
    pq.train(base[:20000])
    pq.add(base)
    found = pq.search(q, k)[1]
    return {"cos_nn1": float(scores[:, 0].mean()), f"cos_nn{k}": float(scores[:, -1].mean()),
            "cos_random": float((q @ base[rng.integers(0, len(base), 2000)].T).mean()),
            "probe_share_90": probe / nlist,
            "pq64_recall": float(np.mean([len(set(a) & set(b)) / k for a, b in zip(truth.tolist(), found.tolist())]))}


def calibrate(path: Path) -> None:
    """Print ``neighbour_stats`` of real embeddings (a .npy [n, d], or a folder with clip-retrieval's
    ``img_emb/img_emb_{i}.npy``) beside both structures at the same n and d."""
    files = sorted(path.glob("img_emb/img_emb_*.npy")) if path.is_dir() else [path]
    real = np.concatenate([np.load(f) for f in files]).astype(np.float32)
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    n, d = real.shape
    rows = {"real": real, "concepts": draw(n, d, 0, 1, "concepts", total=n),
            "clusters": draw(n, d, 0, 1, "clusters", centres=max(1, n // 500))}
    for name, x in rows.items():
        print(name, {k: round(v, 4) for k, v in neighbour_stats(x).items()}, flush=True)


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?")
    ap.add_argument("--structure", choices=["concepts", "clusters"], default="concepts")
    ap.add_argument("--calibrate", type=Path, help="real embeddings (.npy [n, d]) to compare the structures with")
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--shard-size", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--centres", type=int, default=20_000, help="--structure clusters: concept directions")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.calibrate:
        return calibrate(args.calibrate)
    if not args.out:
        ap.error("the output folder is required")
    out = Path(args.out)
    kw = {"structure": args.structure, "total": args.n, "centres": args.centres}
    (out / "img_emb").mkdir(parents=True, exist_ok=True)
    if not (out / "queries.npy").exists():
        _save(out / "queries.npy", draw(args.queries, args.dim, args.seed, 10**9, **kw))
    shards = (args.n + args.shard_size - 1) // args.shard_size
    t0 = time.time()
    for i in range(shards):
        path = out / "img_emb" / f"img_emb_{i}.npy"
        if path.exists():
            continue
        rows = min(args.shard_size, args.n - i * args.shard_size)
        _save(path, draw(rows, args.dim, args.seed, i, **kw).astype(np.float16))
        print(f"shard {i + 1}/{shards} {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
