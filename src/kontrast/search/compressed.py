"""The compressed index kind (``ivfpq``: IVF with PQ or SQ8 codes): collections larger than memory, served
memory-mapped.

Below ``COMPRESS_ABOVE`` (1M) vectors, and while the float32 vectors fit ``--max-index-memory``, ``ann.py``'s
flat / IVF-Flat indexes are used: they keep every vector in RAM, and SQLite keeps a float32 copy (4.7 KB a
512-d row in ``index.sqlite``: 946 MB for 200k rows, ``benchmarks/import_embeddings.py``). Measured peaks:
6.3 GB RSS for 1M vectors (``benchmarks/search.py``), 3.1 GB for a 200k import; both grow linearly, so
above 1M the 8 GB goal is out of reach that way, and this kind is chosen.

Structure, in the FAISS factory's terms ``IVF{nlist},SQ8`` or ``IVF{nlist},PQ{m}``:

- SQ8 codes (a byte a dimension: ``n * (d + 8)`` bytes with the ids) whenever they fit ``max_memory``
  (``--max-index-memory``): on the first 1M vectors of ``benchmarks/scale_data.py``'s collection they gave
  recall@10 0.996 without a re-rank against 0.891 for 64-byte PQ, trained and filled in 21 s against 148 s,
  at 0.7 against 0.5 ms a query at nprobe 4 (``benchmarks/pq_codecs.py``).
- else ``m`` bytes of PQ code a vector (8-bit sub-quantizers of >= 4 dimensions), the largest of
  ``CODE_SIZES`` whose codes and ids (``n * (m + 8)`` bytes, plus the coarse centroids) fit the budget;
  capped at ``MAX_CODE`` (64): 128-byte PQ took 273 s to train and fill 1M vectors for recall 0.917, where
  SQ8 costs 4x the bytes of 128-byte PQ for 0.996 in a tenth of the time.
- no OPQ rotation by default (``plan(opq=True)`` adds one to ``4 m`` dimensions, as autofaiss does): with
  the FAISS wheel installed here (faiss-cpu 1.15.1, run-time SIMD dispatch at AVX512) OPQ made training 9x
  slower at small scale (121 s against 13 s, 20k 64-d vectors) and ``OPQ64_256,IVF4096_HNSW32,PQ64`` on 262k
  vectors had not finished after 14 minutes, longer than the whole 10M build without it (591 s); the exact
  re-rank brings recall@10 to the target instead.
- ``nlist`` ~ 4 sqrt(n) (a power of two) capped at ``MAX_NLIST`` (8192), with an exact (flat) coarse
  quantizer. Measured at 10M vectors (``benchmarks/search_scale.py`` on ``scale_data.py``'s calibrated
  collection, SQ8 codes): 2,048 lists needed nprobe 128 for recall@10 0.95 (p50 185 ms a query), 8,192 lists
  nprobe 2 (p50 4.5 ms), for a build 3x as long (the assignment to the centroids is most of it: 2,011 s
  against 633 s, on a machine shared with a training run). On the first 10M set (``scale_data.py --structure
  clusters``) with the FAISS wheel here, an HNSW coarse quantizer (autofaiss' choice) put 7% of the vectors in
  a list other than their nearest at 2048 lists (efSearch 16), 36% at 8192, and was slower than the BLAS
  assignment to 2048 centroids (1.2 s vs 0.9 s for 20k vectors).
- trained on a seeded sample of at most ``TRAIN_POINTS_PER_LIST * nlist`` (and ``MAX_TRAIN``) vectors;
  polysemous training off (it only helps Hamming filtering, which is not used).

Serving: the index file is read with ``faiss.IO_FLAG_MMAP`` (its inverted lists become ``OnDiskInvertedLists``
over the file: only the probed lists are paged in). The raw vectors stay in the ``.npy`` shards written at
build time (float16 when the source was float16), read row by row (``os.pread``); each query's top ``rerank``
candidates (``RERANK`` = 100) are re-scored exactly against them, which is what brings recall@10 from the
PQ approximation to >= 0.95 (with SQ8 codes it adds little recall, 0.950 -> 0.953 at 10M, but the scores
returned are then exact similarities). ``nprobe`` is tuned at build time (``bulk.py``) on sampled collection vectors.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import KontrastError

KIND = "ivfpq"
COMPRESS_ABOVE = 1_000_000  # vectors; see the module docstring
DEFAULT_MAX_MEMORY = 4 << 30  # bytes of index (codes, ids, centroids) when --max-index-memory is not given
CODE_SIZES = (4, 8, 16, 32, 48, 64, 96, 128)  # PQ bytes a vector that the planner picks from
MAX_CODE = 64
MIN_SUB_DIM = 4  # dimensions a sub-quantizer at least (m <= d / 4)
MAX_NLIST = 8192  # the automatic choice's cap; plan(nlist=...) may go past it
MIN_POINTS_PER_LIST = 39  # FAISS warns below this many training points a centroid
TRAIN_POINTS_PER_LIST = 50
MAX_TRAIN = 131_072
RERANK = 100


class MemoryBudgetError(KontrastError):
    """``--max-index-memory`` is too small for the collection or not a size."""


def parse_memory(text: str | int) -> int:
    """``"4G"``, ``"512M"``, ``"1.5GB"`` or a byte count -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not m:
        raise MemoryBudgetError(f"--max-index-memory {text!r} is not a size such as 4G, 512M or 2000000000")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)]
    return int(float(m.group(1)) * scale)


@dataclass
class PQPlan:
    """The shape of a compressed index, chosen from the collection size and the memory budget."""

    n: int
    dim: int
    m: int  # code bytes a vector (PQ sub-quantizers; ``dim`` for SQ8)
    opq_dim: int  # dimensions after the OPQ rotation (0: no OPQ)
    nlist: int
    train_points: int
    codec: str = "pq"  # "pq" (8-bit product quantizer) or "sq8" (8-bit scalar quantizer, a byte a dimension)

    @property
    def factory(self) -> str:
        if self.codec == "sq8":
            return f"IVF{self.nlist},SQ8"
        opq = f"OPQ{self.m}_{self.opq_dim}," if self.opq_dim else ""
        return f"{opq}IVF{self.nlist},PQ{self.m}"

    def index_bytes(self, n: int | None = None) -> int:
        """Memory the index needs for ``n`` vectors: codes + ids, coarse centroids, OPQ, the quantizer's tables."""
        n = self.n if n is None else n
        d = self.opq_dim or self.dim
        tables = 2 * d * 4 if self.codec == "sq8" else 256 * d * 4
        return n * (self.m + 8) + self.nlist * d * 4 + (self.dim * d * 4 if self.opq_dim else 0) + tables

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "dim": self.dim, "m": self.m, "opq_dim": self.opq_dim, "nlist": self.nlist,
                "train_points": self.train_points, "codec": self.codec}


def nlist_for(n: int) -> int:
    """~4 sqrt(n) lists (a power of two), at most ``MAX_NLIST``, with >= ``MIN_POINTS_PER_LIST`` each."""
    nlist = 2 ** max(0, round(math.log2(max(1.0, 4 * math.sqrt(n)))))
    while nlist > 1 and n < MIN_POINTS_PER_LIST * nlist:
        nlist //= 2
    return int(min(nlist, MAX_NLIST))


def plan(n: int, dim: int, max_memory: int = DEFAULT_MAX_MEMORY, opq: bool = False, nlist: int | None = None) -> PQPlan:
    """SQ8 codes when they fit ``max_memory`` bytes, else the largest PQ code (up to ``MAX_CODE``,
    ``dim / MIN_SUB_DIM``) that does.

    ``opq``: PQ only, rotated (and reduced to ``4 m`` dimensions) with OPQ first, as autofaiss does; off by
    default because its training took longer than the rest of the build here (see the module docstring).
    ``nlist``: the number of lists instead of ``nlist_for(n)`` (more lists: a slower build, faster queries).
    """
    if nlist is not None and not 1 <= nlist <= n // MIN_POINTS_PER_LIST:
        raise KontrastError(f"nlist {nlist} must be between 1 and {n // MIN_POINTS_PER_LIST} for {n} vectors "
                            f"(at least {MIN_POINTS_PER_LIST} vectors a list)")
    nlist = nlist or nlist_for(n)
    train = int(min(n, MAX_TRAIN, max(TRAIN_POINTS_PER_LIST * nlist, 256 * MIN_POINTS_PER_LIST)))
    sq8 = PQPlan(n=n, dim=dim, m=dim, opq_dim=0, nlist=nlist, train_points=train, codec="sq8")
    if not opq and sq8.index_bytes() <= max_memory:
        return sq8
    for m in sorted((c for c in CODE_SIZES if c <= MAX_CODE and c * MIN_SUB_DIM <= dim), reverse=True):
        if dim % m:
            continue
        p = PQPlan(n=n, dim=dim, m=m, opq_dim=min(dim, 4 * m) if opq else 0, nlist=nlist, train_points=train)
        if p.index_bytes() <= max_memory:
            return p
    smallest = PQPlan(n=n, dim=dim, m=min(CODE_SIZES), opq_dim=0, nlist=nlist, train_points=train)
    raise MemoryBudgetError(f"--max-index-memory {max_memory} bytes is too small for {n} vectors of {dim} dimensions: "
                            f"the smallest compressed index needs {smallest.index_bytes()} bytes")


def empty_index(p: PQPlan):
    """An untrained ``IndexIVFPQ`` (after an OPQ ``IndexPreTransform`` when planned), inner product."""
    import faiss

    index = faiss.index_factory(p.dim, p.factory, faiss.METRIC_INNER_PRODUCT)
    if p.codec == "pq":
        faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
    return index


def set_nprobe(index, nprobe: int) -> None:
    import faiss

    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = int(nprobe)


# ---------------------------------------------------------------------------------------- raw vectors
class VectorShards:
    """The ``.npy`` vector shards; shard ``i`` holds the vectors of ids ``start_i .. start_i + rows_i``.

    Rows are read with ``os.pread`` rather than through a memory map: a re-rank touches ~100 random rows a
    query, and every page touched through a map (with the kernel's fault-around, 64 KB at a time) stays in the
    process' resident set; after a few thousand queries that was most of the 10 GB of shards (measured).
    """

    def __init__(self, folder: Path, entries: list[dict[str, Any]]) -> None:
        self.entries = sorted(entries, key=lambda e: e["start"])
        self.starts = np.array([e["start"] for e in self.entries], np.int64)
        self.files: list[tuple[int, int, np.dtype, int]] = []  # (fd, data offset, dtype, dim)
        for e in self.entries:
            path = folder / e["file"]
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(f)
                offset = f.tell()
            if shape[0] != e["rows"] or fortran or len(shape) != 2:
                raise KontrastError(f"{path} holds {shape[0]} vectors, its index expects {e['rows']}; rebuild the index")
            self.files.append((os.open(path, os.O_RDONLY), offset, np.dtype(dtype), int(shape[1])))

    def close(self) -> None:
        for fd, *_ in self.files:
            os.close(fd)
        self.files = []

    def __del__(self) -> None:
        self.close()

    def gather(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors [len(ids), d] float32, found [len(ids)] bool)``; ids outside every shard are not found."""
        ids = np.asarray(ids, np.int64)
        d = self.files[0][3] if self.files else 0
        out = np.zeros((len(ids), d), np.float32)
        found = np.zeros(len(ids), bool)
        if not self.files or not len(ids):
            return out, found
        shard = np.searchsorted(self.starts, ids, side="right") - 1
        for k, (s, row) in enumerate(zip(shard.tolist(), (ids - self.starts[np.maximum(shard, 0)]).tolist())):
            if s < 0 or row >= self.entries[s]["rows"]:
                continue
            fd, offset, dtype, dim = self.files[s]
            size = dim * dtype.itemsize
            out[k] = np.frombuffer(os.pread(fd, size, offset + row * size), dtype)
            found[k] = True
        return out, found


class CompressedIndex:
    """An ``ivfpq`` index opened for serving: ``search`` like a FAISS index, with the exact re-rank."""

    kind = KIND

    def __init__(self, index, vectors: VectorShards | None, rerank: int = RERANK) -> None:
        self.index = index
        self.vectors = vectors
        self.rerank = rerank if vectors is not None else 0

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def d(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [q, k], ids [q, k])`` by inner product, re-scored exactly when the vectors are on disk."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        fetch = max(k, self.rerank)
        scores, ids = self.index.search(queries, fetch)
        if not self.rerank:
            return scores[:, :k], ids[:, :k]
        out_s = np.full((len(queries), k), -np.inf, np.float32)
        out_i = np.full((len(queries), k), -1, np.int64)
        for qi in range(len(queries)):
            cand = ids[qi][ids[qi] >= 0]
            vecs, found = self.vectors.gather(cand)
            exact = np.where(found, vecs @ queries[qi], -np.inf)
            top = np.argsort(-exact, kind="stable")[:k]
            top = top[np.isfinite(exact[top])]
            out_s[qi, : len(top)] = exact[top]
            out_i[qi, : len(top)] = cand[top]
        return out_s, out_i

    def add_with_ids(self, *_: Any) -> None:
        raise KontrastError("a compressed (ivfpq) index is built from embedding shards: add vectors with "
                            "kontrast index --from-embeddings DIR")

    remove_ids = add_with_ids


def open_index(folder: Path, faiss_path: Path, meta: dict[str, Any]) -> CompressedIndex:
    """Open a committed ``ivfpq`` index memory-mapped, with its vector shards when they are all present."""
    import faiss

    index = faiss.read_index(os.fspath(faiss_path), faiss.IO_FLAG_MMAP)
    set_nprobe(index, int(meta.get("nprobe") or 1))
    entries = meta.get("vector_shards") or []
    vectors = None
    if entries and all((folder / e["file"]).is_file() for e in entries):
        vectors = VectorShards(folder, entries)
    return CompressedIndex(index, vectors, int(meta.get("rerank", RERANK)))
