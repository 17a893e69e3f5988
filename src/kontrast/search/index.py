"""A search index on disk: SQLite metadata + vectors (``store.py``) and FAISS files, one per column and generation.

Layout of an index folder::

    index.sqlite (+ -wal, -shm)      rows, vectors (float32 blobs), generation counter, model fingerprint
    image-0000000042.faiss / .json   FAISS index of the image vectors as of generation 42, and its AnnParams
    caption-0000000042.faiss / .json the same for caption (text) vectors, when captions were indexed
    .lock                            held by the one process that writes

Commit protocol: each unit of work is one SQLite transaction that bumps ``generation``. FAISS files are
written afterwards (at the end of a run, and every ``checkpoint_seconds`` during it) to a temporary name,
fsynced and ``os.replace``d, the ``.json`` last (a pair without its ``.json`` is ignored); older pairs are
then deleted. On open, the newest pair at or below the database's generation is loaded and brought up to
date from the database (``removed`` ids dropped, rows with a newer ``gen`` added), or rebuilt from the
stored vectors when none is usable. A crash or kill at any point therefore leaves the last committed state,
and nothing is lost that the next run cannot redo.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from ..errors import KontrastError
from . import ann, compressed
from .store import Store

logger = logging.getLogger(__name__)

COLUMNS = {"image": "image_vec", "caption": "text_vec"}  # FAISS file prefix -> SQLite vector column
_FILE_RE = re.compile(r"^(image|caption)-(\d{10})\.(faiss|json)$")


class ModelMismatchError(KontrastError):
    """The model given is not the one the index was built with."""


@dataclass
class LoadedAnn:
    index: Any  # FAISS index with explicit ids
    params: ann.AnnParams
    generation: int  # database generation this index reflects
    needs_rebuild: bool = False  # holds stale ids it cannot remove (HNSW), or its type should change


class SearchIndex:
    """Open an index folder for searching (``readonly=True``) or for updates by ``build.update_index``."""

    def __init__(self, folder: str | os.PathLike, readonly: bool = True) -> None:
        self.folder = Path(folder)
        self.store = Store(self.folder, readonly=readonly)
        self.readonly = readonly
        self._anns: dict[str, LoadedAnn | None] = {}  # replaced as a whole when a new generation is loaded
        self._load_lock = threading.Lock()  # server threads: load each FAISS index once
        self._served: int | None = None  # database generation the loaded FAISS indexes reflect (at least)
        self._poll: float | None = None  # follow(): seconds between generation checks
        self._checked = 0.0
        self._reloading = False
        self._fingerprint: str | None = None  # model of the index when follow() started
        self.reloads = 0  # generations switched to by follow() (for /health and tests)

    @classmethod
    def create(cls, folder: str | os.PathLike, model_spec: str, model_fingerprint: str, embed_dim: int,
               index_type: str = "auto") -> SearchIndex:
        """Create (or reopen for writing) an index folder, recording the model the vectors come from."""
        store = Store(folder, create=True)
        if store.get_info("model_fingerprint") is None:
            with store.transaction() as db:
                store.set_info(db, model_fingerprint=model_fingerprint, model_spec=model_spec, embed_dim=embed_dim,
                               index_type=index_type)
        store.close()
        return cls(folder, readonly=False)

    # --------------------------------------------------------------------------------------- info
    @property
    def model_fingerprint(self) -> str:
        return self.store.get_info("model_fingerprint") or ""

    @property
    def model_spec(self) -> str:
        return self.store.get_info("model_spec") or ""

    @property
    def dim(self) -> int:
        return int(self.store.get_info("embed_dim") or 0)

    @property
    def index_type(self) -> str:
        return self.store.get_info("index_type") or "auto"

    def check_model(self, fingerprint: str, spec: str) -> None:
        """Refuse a model whose fingerprint differs from the one the index was built with."""
        if fingerprint != self.model_fingerprint:
            raise ModelMismatchError(
                f"index {self.folder} was built with model {self.model_fingerprint} ({self.model_spec}) but "
                f"{spec} is model {fingerprint}; use the original model, or build a new index with --index NEW_DIR")

    def stats(self) -> dict[str, Any]:
        """Counts, generation and index parameters, for ``/health`` and the CLI."""
        out: dict[str, Any] = {"items": self.store.count(), "images": self.store.count("image_vec"),
                               "captions": self.store.count("text_vec"), "generation": self.store.generation(),
                               "serving_generation": self._served,
                               "model_fingerprint": self.model_fingerprint, "model": self.model_spec, "dim": self.dim}
        anns = self._anns
        for name in COLUMNS:
            loaded = anns.get(name)
            if loaded is not None:
                out[f"{name}_index"] = loaded.params.to_dict()
                if loaded.params.kind == compressed.KIND:  # its vectors are in .npy shards, not in SQLite
                    out["images" if name == "image" else "captions"] = loaded.index.ntotal
        return out

    # ---------------------------------------------------------------------------------- FAISS files
    def _files(self) -> dict[tuple[str, int], set[str]]:
        found: dict[tuple[str, int], set[str]] = {}
        for entry in os.listdir(self.folder):
            m = _FILE_RE.match(entry)
            if m:
                found.setdefault((m.group(1), int(m.group(2))), set()).add(m.group(3))
        return found

    def _path(self, name: str, gen: int, ext: str) -> Path:
        return self.folder / f"{name}-{gen:010d}.{ext}"

    def ann(self, name: str) -> LoadedAnn | None:
        """The FAISS index of column ``name`` ("image" or "caption"), up to date; None when it has no vectors."""
        if self._poll is not None:
            self._maybe_reload()
        anns = self._anns
        if name not in anns:
            with self._load_lock:
                anns = self._anns
                if name not in anns:
                    if self._served is None:
                        self._served = self.store.generation()
                    anns[name] = self._load(name)
        return anns[name]

    # ------------------------------------------------------------------------------ following updates
    def follow(self, poll_seconds: float = 1.0) -> None:
        """Keep up with a writer in another process (the server does this; read-only indexes only).

        At most every ``poll_seconds`` a search checks the database's generation (one small query). When it
        is newer than the loaded FAISS indexes, a background thread loads the new generation (the newest
        FAISS files, caught up from the database) while searches go on with the old one, then swaps all
        columns in at once: a search sees either the old or the new generation, and none waits for the load.
        """
        if not self.readonly:
            raise RuntimeError("follow() is for read-only indexes; the writer knows its own changes")
        self._poll = max(0.0, float(poll_seconds))
        self._fingerprint = self.model_fingerprint

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self._poll or self._reloading:
            return
        with self._load_lock:
            if now - self._checked < self._poll or self._reloading:
                return
            self._checked = now
            if self._served is not None and self.store.generation() <= self._served:
                return
            self._reloading = True
        threading.Thread(target=self._reload, name="kontrast-index-reload", daemon=True).start()

    def _reload(self) -> None:
        """Load every column at the database's current generation and swap them in (runs in a thread)."""
        try:
            gen = self.store.generation()
            if self.model_fingerprint != self._fingerprint:
                logger.error("%s: the index was rebuilt with another model (%s); still serving generation %s: "
                             "restart the server", self.folder, self.model_fingerprint, self._served)
                self._served = gen
                return
            fresh = {name: self._load(name) for name in COLUMNS}
            with self._load_lock:
                self._anns, self._served = fresh, gen
                self.reloads += 1
            logger.info("%s: now serving generation %d", self.folder, gen)
        except (sqlite3.Error, OSError, RuntimeError, ValueError, KontrastError) as exc:
            logger.warning("%s: cannot load the new index generation yet (%s); serving the previous one", self.folder, exc)
        finally:
            self.store.close()  # this thread's connection
            self._reloading = False

    def _load(self, name: str) -> LoadedAnn | None:
        for _attempt in range(5):  # a writer may delete the file we picked; pick again
            try:
                return self._load_once(name, newer_ok=True)
            except FileNotFoundError:
                continue
        return self._load_once(name, newer_ok=False)  # give up on files: rebuild from the database

    def _load_once(self, name: str, newer_ok: bool) -> LoadedAnn | None:
        column, dim = COLUMNS[name], self.dim
        with self.store.snapshot() as db:
            gen = self.store.generation(db)
            files = self._files()
            pairs = sorted((g for (n, g), exts in files.items() if n == name and g <= gen
                            and {"faiss", "json"} <= exts), reverse=True)
            if newer_ok and not pairs and any(n == name and g > gen for n, g in files):
                raise FileNotFoundError(name)  # a writer just replaced the files: read a newer snapshot
            loaded: LoadedAnn | None = None
            if pairs:
                f = pairs[0]
                try:
                    meta = json.loads(self._path(name, f, "json").read_text())
                    params = ann.AnnParams.from_dict(meta)
                    if params.kind == compressed.KIND:  # memory-mapped, served as it was committed
                        return LoadedAnn(compressed.open_index(self.folder, self._path(name, f, "faiss"), meta), params, f)
                    index = ann.read_index(self._path(name, f, "faiss"))
                except (RuntimeError, ValueError, TypeError, FileNotFoundError) as exc:  # unreadable: rebuild
                    if newer_ok and not all(self._path(name, f, ext).exists() for ext in ("faiss", "json")):
                        raise FileNotFoundError(self._path(name, f, "faiss")) from exc  # a writer replaced it
                    logger.warning("%s: cannot read %s index file (%s); rebuilding it", self.folder, name, exc)
                else:
                    ann.apply_search_params(index, params)
                    loaded = LoadedAnn(index, params, f)
                    if f < gen and not self._catch_up(loaded, column, dim, db, gen):
                        loaded = None
            if loaded is None:
                ids_parts, vec_parts = [], []
                for ids, vecs in self.store.iter_vectors(column, dim, db):
                    ids_parts.append(ids)
                    vec_parts.append(vecs)
                if not ids_parts:
                    return None
                ids, vecs = np.concatenate(ids_parts), np.concatenate(vec_parts)
                logger.info("building the %s index from %d stored vectors", name, len(ids))
                index, params = ann.build(vecs, ids, self.index_type)
                loaded = LoadedAnn(index, params, gen)
            if loaded.index.ntotal == 0 and self.store.count(column) == 0:
                return None
            return loaded

    def _catch_up(self, loaded: LoadedAnn, column: str, dim: int, db, gen: int) -> bool:
        """Bring an index from its file's generation to ``gen``; False when it must be rebuilt instead."""
        removed = np.array([r[0] for r in db.execute("SELECT DISTINCT id FROM removed WHERE gen > ?",
                                                     (loaded.generation,))], np.int64)
        if self._purged_since(loaded.generation, db):
            return False  # tombstones newer than the file were purged (its successor is gone): rebuild
        if len(removed):
            if not ann.supports_remove(loaded.params.kind):
                return False
            loaded.index.remove_ids(removed)
        added = 0
        for ids, vecs in self.store.iter_vectors(column, dim, db, min_gen=loaded.generation):
            loaded.index.add_with_ids(vecs, ids)
            added += len(ids)
        logger.info("%s index: caught up from generation %d to %d (-%d +%d)", column, loaded.generation, gen,
                    len(removed), added)
        loaded.generation = gen
        return True

    def _purged_since(self, gen: int, db) -> bool:
        purged = self.store.get_info("removed_purged_through", db)
        return purged is not None and int(purged) > gen

    def write_anns(self) -> None:
        """Write every column's FAISS index for the current generation, then drop older files (writer only)."""
        if self.readonly:
            raise RuntimeError("index opened read-only")
        gen = self.store.generation()
        for name in COLUMNS:
            loaded = self.ann(name)
            if loaded is None:
                continue
            loaded.generation = gen
            self._write_pair(name, gen, loaded)
        for (name, g), exts in self._files().items():
            if g < gen or (name in COLUMNS and self._anns.get(name) is None):
                for ext in exts:
                    _unlink(self._path(name, g, ext))
        with self.store.transaction() as db:
            db.execute("DELETE FROM removed WHERE gen <= ?", (gen,))
            self.store.set_info(db, removed_purged_through=gen)
        for entry in os.listdir(self.folder):
            if entry.startswith(".") and ".tmp-" in entry:
                _unlink(self.folder / entry)

    def _write_pair(self, name: str, gen: int, loaded: LoadedAnn) -> None:
        final = self._path(name, gen, "faiss")
        tmp = self.folder / f".{final.name}.tmp-{os.getpid()}"
        ann.write_index(loaded.index, tmp)
        _fsync(tmp)
        os.replace(tmp, final)
        meta = self._path(name, gen, "json")
        tmp_meta = self.folder / f".{meta.name}.tmp-{os.getpid()}"
        tmp_meta.write_text(json.dumps(loaded.params.to_dict()))
        _fsync(tmp_meta)
        os.replace(tmp_meta, meta)
        _fsync(self.folder)

    def set_ann(self, name: str, loaded: LoadedAnn | None) -> None:
        self._anns[name] = loaded

    # ---------------------------------------------------------------------------------------- search
    def search(self, queries: np.ndarray, k: int, name: str = "image") -> tuple[np.ndarray, np.ndarray]:
        """``(scores [q, k'], ids [q, k'])`` by inner product, k' = min(k, vectors); ids -1 pad missing hits."""
        loaded = self.ann(name)
        if loaded is None:
            what = "captions (index folders or CSV files with captions to search them)" if name == "caption" else "images"
            raise KontrastError(f"index {self.folder} has no {what}")
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)  # [D] or [q, D] -> [q, D]
        k = max(1, min(int(k), loaded.index.ntotal))
        return loaded.index.search(queries, k)

    def vectors(self, ids, name: str = "image") -> dict[int, np.ndarray]:
        """Stored vectors of ``ids`` (those that have one): from SQLite, or a compressed index's vector shards."""
        loaded = self.ann(name)
        if loaded is not None and loaded.params.kind == compressed.KIND and loaded.index.vectors is not None:
            ids = np.fromiter((int(i) for i in ids), np.int64)
            vecs, found = loaded.index.vectors.gather(ids)
            return {int(i): v for i, v, ok in zip(ids, vecs, found) if ok}
        return self.store.vectors(ids, COLUMNS[name], self.dim)

    def close(self) -> None:
        self.store.close()


class WriteLock:
    """An exclusive ``flock`` on ``DIR/.lock``: one writer at a time, released when the process dies."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            self.fd = None
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise KontrastError(f"index {self.path.parent} is being updated by another process; "
                                    "wait for it to finish") from None
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
