"""FAISS indexes over normalised embeddings (inner product = cosine), chosen and tuned by size.

Every index holds explicit int64 ids (the SQLite row ids of ``store.py``):

- ``flat``: exact search, ``IndexIDMap2(IndexFlatIP)``. Used below ``FLAT_LIMIT`` vectors, where an
  exhaustive scan costs a few milliseconds a query and needs no training.
- ``ivf``: ``IndexIVFFlat`` with ``nlist`` ~ sqrt(n) lists (a power of two), trained with k-means on a
  seeded sample of 64 points per list. FAISS suggests 4-16 * sqrt(n) lists for the fastest queries, but
  on a 2-core CPU the k-means and the list assignment then take ~15 min for 1M 512-d vectors instead of
  ~2. Supports adding and removing ids, so incremental updates stay cheap. The IVF stores the ids
  itself, NOT inside an ``IndexIDMap``: ``IndexIDMap.remove_ids`` compacts its id table as if the
  wrapped index renumbered its entries, which an IVF does not, so ids shift after a removal.
- ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)`` (M = 32). Only when forced: it cannot remove ids (deletions
  mean a rebuild), and ``benchmarks/search.py`` measured its build at 104-276 s for 200k 512-d vectors
  on 2 busy cores, against 20-55 s for the IVF (including tuning), with no better recall or latency.

Recall target: the search parameter (``nprobe`` / ``efSearch``) is tuned on the data itself, as the
smallest value whose recall@10 against exact search reaches ``RECALL_TARGET`` (0.95) on a seeded sample
of the indexed vectors used as queries (each query's own id excluded). When the automatic choice finds
that an IVF would have to probe more than ``MAX_PROBE_FRACTION`` of its lists to reach the target (data
without cluster structure, such as i.i.d. random vectors), it keeps the flat index: exhaustive search
is then as fast, and exact.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import KontrastError

logger = logging.getLogger(__name__)

INDEX_TYPES = ("auto", "flat", "ivf", "hnsw")
FLAT_LIMIT = 100_000  # below this many vectors the automatic choice is exact search
RECALL_TARGET = 0.95  # recall@10 vs exact search that tuning aims for
MAX_PROBE_FRACTION = 0.25  # an IVF probing more of its lists than this is no faster than flat
TUNE_QUERIES = 256  # indexed vectors used as tuning queries
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
TRAIN_POINTS_PER_LIST = 64  # k-means sample size per IVF list
SEED = 1234


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise KontrastError("search needs faiss: pip install 'kontrast[search]' (faiss-cpu)") from exc
    return faiss


@dataclass
class AnnParams:
    """How an index was built and how to search it; stored next to each index file."""

    kind: str = "flat"  # flat | ivf | hnsw
    nlist: int = 0  # IVF lists
    nprobe: int = 0  # IVF lists probed per query
    ef_search: int = 0  # HNSW candidate list size per query
    built_n: int = 0  # vectors when the structure was (re)trained / chosen
    tuned_recall: float | None = None  # recall@10 measured at the tuned setting
    requested: str = "auto"  # what the user asked for (auto | flat | ivf | hnsw)
    note: str = ""  # why the automatic choice is what it is

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AnnParams:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def ivf_nlist(n: int) -> int:
    """IVF list count for ``n`` vectors: a power of two near sqrt(n), with >= 39 points per list."""
    if n < 39 * 2:
        return 1
    target = math.sqrt(n)
    nlist = 2 ** round(math.log2(target))
    while nlist > 1 and n < 39 * nlist:
        nlist //= 2
    return int(min(nlist, 65536))


def empty_index(dim: int, params: AnnParams):
    """An empty, untrained id-mapped index of ``params.kind`` (IVF needs ``train`` before ``add``)."""
    faiss = _faiss()
    if params.kind == "flat":
        inner = faiss.IndexFlatIP(dim)
    elif params.kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFFlat(quantizer, dim, max(1, params.nlist), faiss.METRIC_INNER_PRODUCT)
        ivf.own_fields = True  # the IVF owns its quantizer (kept alive with it)
        quantizer.this.disown()
        return ivf  # holds external ids itself (see the module docstring)
    elif params.kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    else:
        raise KontrastError(f"index type {params.kind!r} is not one of {', '.join(INDEX_TYPES[1:])}")
    index = faiss.IndexIDMap2(inner)
    index.own_fields = True
    inner.this.disown()
    return index


def _inner(index):
    """The index inside an ``IndexIDMap2`` (or the index itself for an IVF)."""
    faiss = _faiss()
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else faiss.downcast_index(index)


def kind_of(index) -> str:
    faiss = _faiss()
    inner = _inner(index)
    if isinstance(inner, faiss.IndexIVF):
        return "ivf"
    return "hnsw" if isinstance(inner, faiss.IndexHNSW) else "flat"


def apply_search_params(index, params: AnnParams) -> None:
    """Set ``nprobe`` / ``efSearch`` on the index."""
    inner = _inner(index)
    if params.kind == "ivf" and params.nprobe:
        inner.nprobe = int(params.nprobe)
    elif params.kind == "hnsw" and params.ef_search:
        inner.hnsw.efSearch = int(params.ef_search)


def supports_remove(kind: str) -> bool:
    return kind != "hnsw"


def _sample(n: int, size: int, seed: int = SEED) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, size), replace=False))


def recall_at_10(index, vectors: np.ndarray, ids: np.ndarray, rows: np.ndarray) -> float:
    """Mean recall@10 of ``index`` vs exact search, querying with ``vectors[rows]`` (self excluded)."""
    faiss = _faiss()
    queries = np.ascontiguousarray(vectors[rows])
    k = min(11, len(ids))
    _, exact = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    _, approx = index.search(queries, k)
    hits, total = 0, 0
    for qi, row in enumerate(rows):
        self_id = ids[row]
        truth = [ids[j] for j in exact[qi] if j >= 0 and ids[j] != self_id][:10]
        got = {int(i) for i in approx[qi] if i >= 0 and i != self_id}
        hits += sum(1 for t in truth if int(t) in got)
        total += len(truth)
    return hits / total if total else 1.0


def tune(index, vectors: np.ndarray, ids: np.ndarray, params: AnnParams, target: float = RECALL_TARGET,
         limit: int | None = None) -> AnnParams:
    """Smallest ``nprobe`` / ``efSearch`` reaching ``target`` recall@10 (the largest tried if none does).

    ``limit``: stop trying above this value (the caller gives up on the index type beyond it).
    """
    if params.kind == "flat" or len(ids) < 12:
        return params
    rows = _sample(len(ids), TUNE_QUERIES, SEED + 1)
    if params.kind == "ivf":
        ladder = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if p < params.nlist] + [params.nlist]
        field = "nprobe"
    else:
        ladder = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
        field = "ef_search"
    if limit is not None:
        ladder = [v for v in ladder if v <= max(1, limit)]
    recall = 0.0
    for value in ladder:
        setattr(params, field, value)
        apply_search_params(index, params)
        recall = recall_at_10(index, vectors, ids, rows)
        logger.info("tune %s %s=%d recall@10=%.3f", params.kind, field, value, recall)
        if recall >= target:
            break
    params.tuned_recall = round(float(recall), 4)
    return params


def build(vectors: np.ndarray, ids: np.ndarray, requested: str = "auto", tune_search: bool = True) -> tuple[Any, AnnParams]:
    """An index holding ``vectors`` [n, D] (normalised float32) under int64 ``ids``, chosen by size.

    ``requested``: ``auto`` (flat below ``FLAT_LIMIT``, else a tuned IVF, falling back to flat when the
    IVF does not pay, see the module docstring), or a forced ``flat`` / ``ivf`` / ``hnsw``.
    """
    if requested not in INDEX_TYPES:
        raise KontrastError(f"--index-type {requested!r} is not one of {', '.join(INDEX_TYPES)}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n, dim = vectors.shape
    kind = requested if requested != "auto" else ("flat" if n < FLAT_LIMIT else "ivf")
    params = AnnParams(kind=kind, built_n=n, requested=requested)
    if kind == "ivf":
        params.nlist = ivf_nlist(n)
    index = empty_index(dim, params)
    if kind == "ivf":
        train = vectors[_sample(n, TRAIN_POINTS_PER_LIST * params.nlist)] if n else vectors
        if n:
            index.train(train)
    if n:
        index.add_with_ids(vectors, ids)
    if tune_search:
        limit = int(MAX_PROBE_FRACTION * params.nlist) if requested == "auto" and kind == "ivf" else None
        params = tune(index, vectors, ids, params, limit=limit)
    if tune_search and requested == "auto" and kind == "ivf" and (params.tuned_recall or 0.0) < RECALL_TARGET:
        note = (f"ivf nlist={params.nlist} reached recall@10 {params.tuned_recall} at nprobe={params.nprobe} "
                f"({MAX_PROBE_FRACTION:.0%} of its lists), short of {RECALL_TARGET}: exact search instead")
        logger.info(note)
        return build(vectors, ids, "flat", tune_search=False)[0], AnnParams("flat", built_n=n, requested="auto", note=note)
    apply_search_params(index, params)
    return index, params


def needs_rebuild(params: AnnParams, n: int, requested: str) -> bool:
    """Whether an index built as ``params`` should be rebuilt now that it holds ``n`` vectors.

    A forced type that differs, an automatic flat index that has doubled past ``FLAT_LIMIT`` (the choice
    is re-made), or an IVF that has grown 4x (or shrunk 4x) since its k-means training.
    """
    if requested != "auto":
        return params.kind != requested or params.requested != requested
    if params.requested != "auto":
        return True
    if params.kind == "flat":  # re-choose when crossing FLAT_LIMIT, then each time the size doubles
        return n >= FLAT_LIMIT and (params.built_n < FLAT_LIMIT or n >= 2 * params.built_n)
    if params.kind == "ivf":
        return n < FLAT_LIMIT or n >= 4 * params.built_n or n * 4 <= params.built_n
    return False


def write_index(index, path: str | os.PathLike) -> None:
    _faiss().write_index(index, os.fspath(path))


def read_index(path: str | os.PathLike):
    return _faiss().read_index(os.fspath(path))


def index_ids(index) -> np.ndarray:
    """The ids an index holds (sorted int64), to check it against the metadata store."""
    faiss = _faiss()
    if isinstance(index, faiss.IndexIDMap2):
        return np.sort(faiss.vector_to_array(index.id_map).astype(np.int64))
    invlists = faiss.extract_index_ivf(index).invlists
    parts = [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
             for i in range(invlists.nlist) if invlists.list_size(i)]
    return np.sort(np.concatenate(parts).astype(np.int64)) if parts else np.zeros(0, np.int64)


def reconstruct(index, ids: np.ndarray) -> np.ndarray:
    """Stored vectors [n, D] of ``ids`` (exact copies: every kind here stores full float32 vectors)."""
    faiss = _faiss()
    if not isinstance(index, faiss.IndexIDMap2):
        ivf = faiss.extract_index_ivf(index)
        if ivf.direct_map.type != faiss.DirectMap.Hashtable:
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    if len(ids) == 0:
        return np.zeros((0, index.d), np.float32)
    return np.stack([index.reconstruct(int(i)) for i in ids])
