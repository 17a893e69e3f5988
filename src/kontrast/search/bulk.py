"""Build a compressed (``ivfpq``) index by streaming embedding shards, with bounded memory and crash safety.

Steps (``build_compressed``), each leaving committed state that a rerun picks up:

1. plan (``compressed.plan``) from the row counts of the shards and ``max_memory``; recorded in the
   database (``info.bulk_plan``) with the seeded sample of training rows and of tuning queries.
2. train on the sample (read from the shards' memory maps), written to ``bulk/trained.faiss``.
3. per shard, in order (ids ``start .. start + rows``, ``start`` = rows of the shards before it): its
   vectors copied to ``vectors/img-NNNNNN.npy`` (float16 when the source is, else float32, renormalised),
   its PQ codes to ``bulk/part-NNNNNN.faiss`` (a copy of the trained index holding this shard only) and the
   exact top-11 of the tuning queries within it to ``bulk/knn-NNNNNN.npz``; each file written under a
   temporary name, fsynced and renamed. Then one SQLite transaction commits the shard's metadata rows
   (no vector blobs), its ``shards`` entry and a generation bump. A killed run loses at most this shard.
4. merge: the parts are merged into one IVF-PQ in memory (``n * (m + 8)`` bytes), ``nprobe`` tuned as
   the smallest value whose recall@10 with re-rank reaches ``RECALL_TARGET`` on the tuning queries (their
   exact neighbours merged from the per-shard top-11), and the index written as ``image-<gen>.faiss`` +
   ``.json`` with the commit protocol of ``index.py`` (``kind: ivfpq``). Its readers memory-map it.

A rerun skips shards whose ``shards`` entry matches their (size, mtime) and whose files exist, and
re-merges; the parts are kept so that adding shards later costs only their encoding (the plan is kept
while the collection stays within 4x the size it was trained for).

Peak memory: the training sample (``train_points * d * 4``), one shard as float32, the merged codes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import KontrastError
from . import compressed
from .ann import MAX_PROBE_FRACTION, RECALL_TARGET, SEED, AnnParams
from .index import SearchIndex, WriteLock, _fsync, _unlink

logger = logging.getLogger(__name__)

KIND = "embeddings"  # items.kind of the rows
TUNE_QUERIES = 256
NPROBE_LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ShardSource(Protocol):
    """One shard of embeddings: ``key`` (stable id, e.g. its absolute path), ``signature`` (size, mtime_ns),
    ``rows`` (from the file header, without reading it), ``vectors()`` -> [rows, d] (a memory map is best:
    sampling reads a few rows of each shard) and ``load()`` -> ``(vectors [r, d], meta: r dicts)`` with
    ``r <= rows`` (bad rows dropped) or None when the shard cannot be used (skipped and counted)."""

    key: str
    signature: tuple[int, int]
    rows: int

    def vectors(self) -> np.ndarray: ...

    def load(self) -> tuple[np.ndarray, list[dict[str, Any]]] | None: ...


@dataclass
class BulkStats:
    n: int = 0
    shards: int = 0
    encoded: int = 0  # shards encoded by this run
    unchanged: int = 0
    duplicates: int = 0  # rows whose path was already indexed (left out of the metadata)
    skipped: list[str] = field(default_factory=list)  # shards that could not be read (not marked done)
    seconds: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    _fsync(tmp)
    os.replace(tmp, path)


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)
    _write_atomic(path, write)


def _write_faiss(path: Path, index) -> None:
    import faiss

    _write_atomic(path, lambda tmp: faiss.write_index(index, os.fspath(tmp)))


def _normalised(vectors: np.ndarray) -> np.ndarray:
    x = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _sample_rows(shards: Sequence[ShardSource], rows: np.ndarray) -> np.ndarray:
    """Vectors [len(rows), d] (float32, normalised) of global ``rows`` (sorted), read shard by shard."""
    starts = np.cumsum([0] + [s.rows for s in shards])
    parts = []
    for i, s in enumerate(shards):
        sel = rows[(rows >= starts[i]) & (rows < starts[i + 1])] - starts[i]
        if len(sel):
            vectors = s.vectors()
            sel = sel[sel < len(vectors)]
            parts.append(_normalised(vectors[sel]))
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _row_values(key: str, j: int, meta: dict[str, Any], gen: int, origin: str, sig: tuple[int, int]) -> tuple:
    path = meta.get("image_path") or meta.get("path") or f"{key}:{j}"
    other = {k: v for k, v in meta.items() if k not in ("image_path", "path", "caption", "key", "width", "height")
             and v is not None}
    return (str(path), origin, KIND, str(meta.get("key") or j), "", 0, sig[1], meta.get("width"), meta.get("height"),
            meta.get("caption"), json.dumps(other, default=str) if other else None, gen)


class _Builder:
    def __init__(self, index: SearchIndex, shards: Sequence[ShardSource], origin: str, max_memory: int,
                 stats: BulkStats, progress: Callable[[int, int], None] | None, nlist: int | None = None) -> None:
        self.nlist = nlist
        self.index, self.store, self.shards, self.origin = index, index.store, list(shards), origin
        self.max_memory, self.stats, self.progress = max_memory, stats, progress
        self.folder = index.folder
        (self.folder / "bulk").mkdir(exist_ok=True)
        (self.folder / "vectors").mkdir(exist_ok=True)
        self.starts = np.cumsum([0] + [s.rows for s in self.shards]).astype(np.int64)

    # ------------------------------------------------------------------------------------ plan / train
    def plan(self) -> dict[str, Any]:
        n, dim = int(self.starts[-1]), self.index.dim
        saved = self.store.get_info("bulk_plan")
        if saved:
            state = json.loads(saved)
            old = state["plan"]
            if old["dim"] == dim and n <= 4 * old["n"] and old["n"] <= 4 * n and self.nlist in (None, old["nlist"]) and \
                    (self.folder / "bulk" / "trained.faiss").is_file():
                return state
        p = compressed.plan(n, dim, self.max_memory, nlist=self.nlist)
        rng = np.random.default_rng(SEED)
        state = {"plan": p.to_dict(), "train_rows": np.sort(rng.choice(n, p.train_points, replace=False)).tolist(),
                 "tune_rows": np.sort(rng.choice(n, min(n, TUNE_QUERIES), replace=False)).tolist(), "generation": 0}
        t0 = time.monotonic()
        train = _sample_rows(self.shards, np.array(state["train_rows"], np.int64))
        index = compressed.empty_index(p)
        logger.info("training %s on %d vectors", p.factory, len(train))
        index.train(train)
        del train
        for f in (self.folder / "bulk").glob("*"):  # parts of an older plan are useless now
            _unlink(f)
        _write_faiss(self.folder / "bulk" / "trained.faiss", index)
        with self.store.transaction() as db:
            db.execute("DELETE FROM shards")  # every shard is encoded again with the new quantizers
            self.store.set_info(db, bulk_plan=json.dumps(state))
        self.stats.seconds["train"] = round(time.monotonic() - t0, 1)
        return state

    # ------------------------------------------------------------------------------------------ encode
    def _files(self, i: int) -> dict[str, Path]:
        return {"vectors": self.folder / "vectors" / f"img-{i:06d}.npy",
                "part": self.folder / "bulk" / f"part-{i:06d}.faiss", "knn": self.folder / "bulk" / f"knn-{i:06d}.npz"}

    def _done(self, i: int, s: ShardSource) -> bool:
        row = self.store.db.execute("SELECT size, mtime_ns FROM shards WHERE path = ?", (s.key,)).fetchone()
        files = self._files(i)
        if row is None or (row[0], row[1]) != tuple(s.signature) or not all(p.is_file() for p in files.values()):
            return False
        with np.load(files["knn"]) as z:  # an earlier shard that changed size moves the ids of this one
            return int(z["start"]) == int(self.starts[i]) and int(z["rows"]) == s.rows

    def encode(self, state: dict[str, Any], tune_queries: np.ndarray) -> None:
        import faiss

        trained = faiss.read_index(os.fspath(self.folder / "bulk" / "trained.faiss"))
        for i, s in enumerate(self.shards):
            if self._done(i, s):
                self.stats.unchanged += 1
                if self.progress:
                    self.progress(s.rows, int(self.starts[-1]))
                continue
            loaded = s.load()
            if loaded is None:
                self.stats.skipped.append(s.key)
                continue
            vectors, meta = loaded
            if len(vectors) > s.rows or len(meta) != len(vectors):
                raise KontrastError(f"{s.key}: {len(vectors)} vectors and {len(meta)} metadata rows, its header says "
                                    f"{s.rows}; a shard must not change while it is indexed")
            x = _normalised(vectors)  # [rows, d] float32
            ids = np.arange(self.starts[i], self.starts[i] + len(x), dtype=np.int64)
            files = self._files(i)
            keep = np.float16 if np.asarray(vectors[:1]).dtype == np.float16 else np.float32
            _save_npy(files["vectors"], x.astype(keep))
            part = faiss.clone_index(trained)
            part.add_with_ids(x, ids)
            _write_faiss(files["part"], part)
            del part
            k = min(11, len(x))
            scores, rows = faiss.knn(tune_queries, x, k, metric=faiss.METRIC_INNER_PRODUCT)
            _write_atomic(files["knn"], functools.partial(_savez, scores=scores, ids=ids[rows], start=int(self.starts[i]),
                                                          rows=s.rows))
            del x
            with self.store.transaction() as db:
                gen = self.store.bump_generation(db)
                db.execute("DELETE FROM items WHERE origin = ? AND id >= ? AND id < ?",
                           (self.origin, int(ids[0]) if len(ids) else 0, int(self.starts[i + 1])))
                before = db.total_changes
                db.executemany("INSERT OR IGNORE INTO items(id, path, origin, kind, key, sha256, size, mtime_ns, width, "
                               "height, caption, meta, gen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               ((int(ids[j]), *_row_values(s.key, j, m, gen, self.origin, s.signature))
                                for j, m in enumerate(meta)))
                self.stats.duplicates += len(meta) - (db.total_changes - before)
                db.execute("INSERT OR REPLACE INTO shards(path, size, mtime_ns) VALUES (?, ?, ?)",
                           (s.key, int(s.signature[0]), int(s.signature[1])))
            self.stats.encoded += 1
            if self.progress:
                self.progress(s.rows, int(self.starts[-1]))

    # ------------------------------------------------------------------------------------------- merge
    def merge(self, state: dict[str, Any], tune_queries: np.ndarray) -> AnnParams:
        import faiss

        index = faiss.read_index(os.fspath(self.folder / "bulk" / "trained.faiss"))
        ivf = faiss.extract_index_ivf(index)
        best_s = np.full((len(tune_queries), 0), -np.inf, np.float32)
        best_i = np.zeros((len(tune_queries), 0), np.int64)
        for i in range(len(self.shards)):
            files = self._files(i)
            if not files["part"].is_file():  # a shard that could not be read: its ids stay empty
                continue
            part = faiss.read_index(os.fspath(files["part"]))
            ivf.merge_from(faiss.extract_index_ivf(part), 0)
            index.ntotal = ivf.ntotal
            del part
            with np.load(files["knn"]) as z:
                best_s = np.concatenate([best_s, z["scores"]], axis=1)
                best_i = np.concatenate([best_i, z["ids"]], axis=1)
                order = np.argsort(-best_s, axis=1)[:, :11]
                best_s, best_i = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)
        tune_ids = np.array(state["tune_rows"], np.int64)
        truth = [[int(j) for j in row if j != self_id][:10] for row, self_id in zip(best_i, tune_ids)]
        p = state["plan"]
        params = AnnParams(kind=compressed.KIND, nlist=p["nlist"], built_n=int(ivf.ntotal), requested=compressed.KIND,
                           note=f"{compressed.PQPlan(**p).factory}, {p['m'] + 8} bytes a vector")
        entries = [{"file": f"vectors/img-{i:06d}.npy", "start": int(self.starts[i]),
                    "rows": int(np.load(self._files(i)["vectors"], mmap_mode="r").shape[0])}
                   for i in range(len(self.shards)) if self._files(i)["part"].is_file()]
        served = compressed.CompressedIndex(index, compressed.VectorShards(self.folder, entries))
        extra = _tune(served, tune_queries, tune_ids, truth, params)
        return params, index, {**extra, "vector_shards": entries, "plan": p}

    def commit(self, params: AnnParams, index, extra: dict[str, Any]) -> None:
        gen = self.store.generation()
        final = self.index._path("image", gen, "faiss")
        _write_faiss(final, index)
        meta = self.index._path("image", gen, "json")
        _write_atomic(meta, lambda tmp: tmp.write_text(json.dumps({**params.to_dict(), **extra})))
        _fsync(self.folder)
        for (name, g), exts in self.index._files().items():
            if g != gen or name != "image":
                for ext in exts:
                    _unlink(self.index._path(name, g, ext))


def _savez(path: Path, scores: np.ndarray, ids: np.ndarray, start: int, rows: int) -> None:
    with open(path, "wb") as f:
        np.savez(f, scores=scores, ids=ids, start=start, rows=rows)


def _tune(served: compressed.CompressedIndex, queries: np.ndarray, query_ids: np.ndarray, truth: list[list[int]],
          params: AnnParams) -> dict[str, Any]:
    """Smallest nprobe reaching ``RECALL_TARGET`` recall@10 with re-rank (recall without it recorded too), at most
    ``MAX_PROBE_FRACTION`` of the lists (the recall reached there is recorded when the target is not)."""
    def recall(ids: np.ndarray) -> float:
        hits = sum(len({int(i) for i in got if i != q} & set(t)) for got, q, t in zip(ids, query_ids, truth))
        return hits / max(1, sum(len(t) for t in truth))

    out: dict[str, Any] = {}
    limit = max(1, int(MAX_PROBE_FRACTION * params.nlist))  # beyond this, a scan of most codes: not an index
    for nprobe in [p for p in NPROBE_LADDER if p < limit] + [limit]:
        compressed.set_nprobe(served.index, nprobe)
        served.rerank = compressed.RERANK
        with_rerank = recall(served.search(queries, 11)[1])
        served.rerank = 0
        without = recall(served.search(queries, 11)[1])
        logger.info("tune ivfpq nprobe=%d recall@10 %.3f (re-ranked) %.3f (PQ scores)", nprobe, with_rerank, without)
        params.nprobe, params.tuned_recall = nprobe, round(with_rerank, 4)
        out = {"tuned_recall_no_rerank": round(without, 4), "rerank": compressed.RERANK}
        if with_rerank >= RECALL_TARGET:
            break
    compressed.set_nprobe(served.index, params.nprobe)
    return out


def build_compressed(folder: str | os.PathLike, shards: Sequence[ShardSource], origin: str, model_spec: str,
                     model_fingerprint: str, dim: int, max_memory: int = compressed.DEFAULT_MAX_MEMORY,
                     progress: Callable[[int, int], None] | None = None, nlist: int | None = None) -> BulkStats:
    """Create or continue the compressed index in ``folder`` over ``shards`` (all of ``origin``, in order);
    ``nlist``: lists of the IVF instead of the automatic choice (a rerun with another value trains again)."""
    stats = BulkStats(shards=len(shards))
    with WriteLock(folder):
        index = SearchIndex.create(folder, model_spec, model_fingerprint, dim, compressed.KIND)
        index.check_model(model_fingerprint, model_spec)
        if index.store.count("image_vec") or index.store.db.execute(
                "SELECT 1 FROM items WHERE origin != ? LIMIT 1", (origin,)).fetchone():
            raise KontrastError(f"index {folder} holds other items; a compressed index is built from one embeddings "
                                "folder: give a new --index DIR")
        with index.store.transaction() as db:
            index.store.set_info(db, index_type=compressed.KIND)
        b = _Builder(index, shards, origin, max_memory, stats, progress, nlist)
        stats.n = int(b.starts[-1])
        t0 = time.monotonic()
        state = b.plan()
        tune_queries = _sample_rows(b.shards, np.array(state["tune_rows"], np.int64))
        t1 = time.monotonic()
        b.encode(state, tune_queries)
        stats.seconds["encode"] = round(time.monotonic() - t1, 1)
        keys = {s.key for s in shards}
        with index.store.transaction() as db:  # shards gone from the folder: their rows go
            gone = [r[0] for r in db.execute("SELECT path FROM shards") if r[0] not in keys]
            for key in gone:
                db.execute("DELETE FROM shards WHERE path = ?", (key,))
            if gone or db.execute("SELECT 1 FROM items WHERE id >= ? LIMIT 1", (stats.n,)).fetchone():
                db.execute("DELETE FROM items WHERE id >= ?", (stats.n,))
                index.store.bump_generation(db)
        for f in (b.folder / "bulk").glob("part-*.faiss"):
            if int(f.stem.split("-")[1]) >= len(shards):
                _unlink(f)
        t2 = time.monotonic()
        params, merged, extra = b.merge(state, tune_queries)
        b.commit(params, merged, extra)
        stats.seconds["merge_tune_write"] = round(time.monotonic() - t2, 1)
        stats.seconds["total"] = round(time.monotonic() - t0, 1)
        stats.params = {**params.to_dict(), **{k: v for k, v in extra.items() if k != "vector_shards"}}
        index.close()
    return stats


# ------------------------------------------------------------------------------- --from-embeddings
class EmbeddingShardSource:
    """An ``embedding_sources.ShardFiles`` as a ``ShardSource`` (image embeddings; rows read by ``read_shard``)."""

    def __init__(self, shard, dim: int, skipped: list) -> None:
        from .embedding_sources import count_embeddings_of

        self.shard, self.dim, self.skipped_parts = shard, dim, skipped
        self.key = shard.key
        self.signature = shard.signature()
        self.rows = count_embeddings_of(shard) if shard.image is not None else 0

    def vectors(self) -> np.ndarray:
        if self.shard.image is None:
            return np.zeros((0, self.dim), np.float32)
        return np.load(self.shard.image, mmap_mode="r", allow_pickle=False)

    def load(self) -> tuple[np.ndarray, list[dict[str, Any]]] | None:
        from .embedding_sources import read_shard

        read = read_shard(self.shard, self.dim, self.skipped_parts)
        if read is None or read.image is None:
            return None
        return read.image, read.meta


def use_compressed(n: int, dim: int, index_type: str | None, current: str | None, max_memory: int | None) -> bool:
    """Whether ``kontrast index --from-embeddings`` builds the compressed kind for ``n`` vectors.

    Forced with ``--index-type ivfpq`` (or kept for an index that is already compressed); with ``auto`` (or
    nothing) above ``compressed.COMPRESS_ABOVE`` vectors, or when the float32 vectors would not fit
    ``--max-index-memory``.
    """
    wanted = index_type or current or "auto"
    if wanted == compressed.KIND:
        return True
    if wanted != "auto":
        return False
    return n > compressed.COMPRESS_ABOVE or (max_memory is not None and n * (dim * 4 + 8) > max_memory)


def import_compressed(src: str | os.PathLike, folder: str | os.PathLike, model_spec: str, fingerprint: str, dim: int,
                      layout: str | None = None, max_memory: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> tuple[BulkStats, list]:
    """``build_compressed`` over an embeddings folder (kontrast's or clip-retrieval's layout); also returns
    the ``SkippedPart``s of shards (or rows) that could not be read."""
    from .embedding_sources import collection_dim, detect_layout, list_shards

    layout = layout or detect_layout(src)
    found = collection_dim(src, layout)
    if found is not None and found != dim:
        raise KontrastError(f"the embeddings in {src} have dimension {found} but model {model_spec} makes {dim}: "
                            "pass the --model (and --pretrained) that made them")
    skipped: list = []
    shards = [EmbeddingShardSource(s, dim, skipped) for s in list_shards(src, layout) if s.image is not None]
    if not shards:
        raise KontrastError(f"{src} holds no image embeddings to build a compressed index from")
    stats = build_compressed(folder, shards, os.path.abspath(os.fspath(src)), model_spec, fingerprint, dim,
                             max_memory or compressed.DEFAULT_MAX_MEMORY, progress)
    return stats, skipped
