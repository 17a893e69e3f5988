"""Build and update a search index: plan what changed, embed it with the batch pipeline, commit unit by unit.

Incremental rules (an *origin* is one folder, CSV file or shard given to ``kontrast index``):

- folders / CSV files: a file whose (size, mtime) matches its row, and whose caption did not change (a
  folder image's ``.txt`` by its own size and mtime, a CSV row's caption by its text), is skipped without
  being read; a new file is added; any other is re-read, and re-embedded if its sha256 or caption changed
  (otherwise only its stat is updated); rows of the origin whose file is gone (or no longer decodes, or
  became a symlink out of the folder) are deleted. Deletion only looks at the origins named in this run.
  ``verify=True`` (``kontrast index --verify``) re-hashes files whose stat matches, which finds a file
  swapped for another of the same size with its mtime restored.
- shards: a shard whose (size, mtime) matches a finished run is skipped (``verify`` re-reads it);
  otherwise every member is re-read, members are matched to rows by path (``<shard>:<member>``) and
  sha256, and rows of the shard that are no longer in it are deleted. A damaged shard (corrupt headers,
  cut short: see ``data.sources``) keeps the rows it could not read, is reported in ``IndexStats.damaged``
  and is not recorded as finished, so the next run reads it again.
- captions that are not UTF-8 (or cannot be read) are left out of their row and counted
  (``IndexStats.caption_errors``); the image is indexed.
- only an image's own decode or I/O error (an ``ImageError``) skips it; any other exception stops the run
  with its traceback, and no row is deleted because of it.
- duplicates by content: an image whose sha256 is already indexed is recorded as an *alias* row (its path,
  caption and metadata, ``alias_of`` = the row holding the vector) but adds no image vector, so results
  never show the same picture twice; search results list the alias paths. The duplicate is detected
  after decoding, so its embedding is computed and dropped. When the row holding the vector is deleted
  or changes, its first alias inherits the vector.

A unit (``commit_every`` files, or one shard) is one SQLite transaction; the FAISS files are rewritten
every ``checkpoint_seconds`` and at the end (see ``index.py`` for why a crash loses nothing else).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.sources import Record, Source, TarSource
from ..errors import KontrastError
from ..pipeline import Skipped, embed_units
from . import ann
from .index import COLUMNS, LoadedAnn, SearchIndex, WriteLock
from .plan import Plan, open_sources, plan_files, plan_shards
from .store import to_blob

logger = logging.getLogger(__name__)


@dataclass
class IndexStats:
    """What one ``update_index`` run did."""

    added: int = 0  # new rows
    updated: int = 0  # rows whose content (or caption) changed and were re-embedded
    unchanged: int = 0  # rows left as they were (same stat, or same sha256 and caption)
    removed: int = 0  # rows deleted (file gone, or no longer a readable image)
    duplicates: int = 0  # new or changed rows stored as aliases of identical content
    skipped: list[Skipped] = field(default_factory=list)  # unreadable images (not indexed)
    damaged: list[Skipped] = field(default_factory=list)  # parts of shards that could not be read (retried next run)
    caption_errors: list[Skipped] = field(default_factory=list)  # images indexed without their unreadable caption
    items: int = 0  # rows in the index afterwards
    vectors: int = 0  # image vectors in the index afterwards
    index_types: dict[str, str] = field(default_factory=dict)


class _HashingSource(Source):
    """Wraps a source; adds the sha256 of each record's bytes to its meta (runs in the DataLoader workers)."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.kind = inner.kind

    def units(self) -> list[Any]:
        return self.inner.units()

    def unit_name(self, unit: Any) -> str:
        return self.inner.unit_name(unit)

    def iter_unit(self, unit: Any) -> Iterator[Record]:
        for record in self.inner.iter_unit(unit):
            if record.data is not None:
                record.meta = {**record.meta, "_sha256": hashlib.sha256(record.data).hexdigest(),
                               "_size": len(record.data)}
            yield record


class _Pending:
    """Vector changes committed to SQLite but not yet applied to an in-memory FAISS index."""

    def __init__(self) -> None:
        self.remove: set[int] = set()
        self.add: dict[int, np.ndarray] = {}

    def drop(self, row_id: int) -> None:
        self.add.pop(row_id, None)
        self.remove.add(row_id)

    def put(self, row_id: int, vector: np.ndarray) -> None:
        self.add[row_id] = vector


class IndexUpdater:
    """Applies one run's changes to an open ``SearchIndex`` (holding the write lock)."""

    def __init__(self, index: SearchIndex, stats: IndexStats) -> None:
        self.index, self.store, self.stats = index, index.store, stats
        self.pending = {name: _Pending() for name in COLUMNS}

    # ---------------------------------------------------------------------------------- row updates
    def _release(self, db, row, gen: int) -> None:
        """Row ``row`` loses its vectors: tombstone it; if it held the vector of aliases, the first inherits it."""
        db.execute("INSERT INTO removed(id, gen) VALUES (?, ?)", (row["id"], gen))
        for p in self.pending.values():
            p.drop(row["id"])
        if row["alias_of"] is not None:
            return
        heir = db.execute("SELECT id, text_vec FROM items WHERE alias_of = ? ORDER BY id LIMIT 1", (row["id"],)).fetchone()
        if heir is None:
            return
        db.execute("UPDATE items SET alias_of = NULL, gen = ?, image_vec = (SELECT image_vec FROM items WHERE id = ?) "
                   "WHERE id = ?", (gen, row["id"], heir["id"]))
        db.execute("UPDATE items SET alias_of = ? WHERE alias_of = ?", (heir["id"], row["id"]))
        db.execute("INSERT INTO removed(id, gen) VALUES (?, ?)", (heir["id"], gen))
        dim = self.index.dim
        image_vec = db.execute("SELECT image_vec FROM items WHERE id = ?", (heir["id"],)).fetchone()[0]
        self.pending["image"].put(heir["id"], np.frombuffer(image_vec, "<f4").reshape(dim).copy())
        if heir["text_vec"] is not None:
            self.pending["caption"].drop(heir["id"])
            self.pending["caption"].put(heir["id"], np.frombuffer(heir["text_vec"], "<f4").reshape(dim).copy())

    def delete(self, db, path: str, gen: int) -> bool:
        row = db.execute("SELECT id, alias_of FROM items WHERE path = ?", (path,)).fetchone()
        if row is None:
            return False
        self._release(db, row, gen)
        db.execute("DELETE FROM items WHERE id = ?", (row["id"],))
        self.stats.removed += 1
        return True

    def upsert(self, db, gen: int, path: str, origin: str, kind: str, meta: dict[str, Any], stat: tuple[int, int],
               image_vec: np.ndarray, text_vec: np.ndarray | None, caption_sig: str | None = None) -> None:
        """Insert or update the row of ``path`` (see the module docstring for duplicates)."""
        extra = dict(meta.get("meta") or {})
        sha = extra.pop("_sha256")
        extra.pop("_size", None)
        caption = meta.get("caption") or None
        fields = {"origin": origin, "kind": kind, "key": meta["key"], "size": stat[0], "mtime_ns": stat[1],
                  "caption_sig": caption_sig, "width": meta.get("width"), "height": meta.get("height"),
                  "meta": json.dumps(extra, ensure_ascii=False, default=str) if extra else None}
        existing = db.execute("SELECT id, sha256, caption, alias_of FROM items WHERE path = ?", (path,)).fetchone()
        if existing is not None and existing["sha256"] == sha and existing["caption"] == caption:
            sets = ", ".join(f"{k} = ?" for k in fields)
            db.execute(f"UPDATE items SET {sets} WHERE id = ?", (*fields.values(), existing["id"]))
            self.stats.unchanged += 1
            return
        if existing is not None:
            self._release(db, existing, gen)
        own_id = existing["id"] if existing is not None else -1
        same = db.execute("SELECT id FROM items WHERE sha256 = ? AND alias_of IS NULL AND id != ? ORDER BY id LIMIT 1",
                          (sha, own_id)).fetchone()
        alias_of = same["id"] if same is not None else None
        text_blob = to_blob(text_vec) if caption and text_vec is not None else None
        values = {**fields, "sha256": sha, "caption": caption, "alias_of": alias_of, "gen": gen,
                  "image_vec": None if alias_of is not None else to_blob(image_vec), "text_vec": text_blob}
        if existing is not None:
            sets = ", ".join(f"{k} = ?" for k in values)
            db.execute(f"UPDATE items SET {sets} WHERE id = ?", (*values.values(), own_id))
            row_id = own_id
            self.stats.updated += 1
        else:
            cols = ", ".join(["path", *values])
            marks = ", ".join("?" * (len(values) + 1))
            row_id = db.execute(f"INSERT INTO items({cols}) VALUES ({marks})", (path, *values.values())).lastrowid
            self.stats.added += 1
        if alias_of is not None:
            self.stats.duplicates += 1
        else:
            self.pending["image"].put(row_id, np.asarray(image_vec, np.float32))
        if text_blob is not None:
            self.pending["caption"].put(row_id, np.asarray(text_vec, np.float32))

    # --------------------------------------------------------------------------------- FAISS updates
    def apply_pending(self) -> None:
        """Apply committed vector changes to the in-memory FAISS indexes."""
        gen = self.store.generation()
        for name, pending in self.pending.items():
            if not pending.remove and not pending.add:
                continue
            loaded = self.index.ann(name)
            if loaded is None:  # first vectors of this column: start exact; finish() picks the final type
                loaded = LoadedAnn(ann.empty_index(self.index.dim, ann.AnnParams("flat", requested=self.index.index_type)),
                                   ann.AnnParams("flat", requested=self.index.index_type), gen)
                self.index.set_ann(name, loaded)
            if pending.remove:
                if ann.supports_remove(loaded.params.kind):
                    loaded.index.remove_ids(np.fromiter(pending.remove, np.int64))
                else:
                    loaded.needs_rebuild = True
            if pending.add and not loaded.needs_rebuild:
                ids = np.fromiter(pending.add.keys(), np.int64, len(pending.add))
                loaded.index.add_with_ids(np.stack(list(pending.add.values())).astype(np.float32), ids)
            loaded.generation = gen
            self.pending[name] = _Pending()

    def checkpoint(self) -> None:
        """Write the FAISS files for the current generation, unless one must first be rebuilt."""
        loaded = [self.index.ann(name) for name in COLUMNS]
        if not any(a is not None and a.needs_rebuild for a in loaded):
            self.index.write_anns()

    def finish(self) -> None:
        """Rebuild indexes whose type should change (size, ``--index-type``, HNSW deletions), then write."""
        requested = self.index.index_type
        for name, column in COLUMNS.items():
            n = self.store.count(column)
            loaded = self.index.ann(name)
            if n == 0:
                self.index.set_ann(name, None)
                continue
            if loaded is None or loaded.needs_rebuild or ann.needs_rebuild(loaded.params, n, requested):
                with self.store.snapshot() as db:
                    parts = list(self.store.iter_vectors(column, self.index.dim, db))
                ids = np.concatenate([p[0] for p in parts])
                vecs = np.concatenate([p[1] for p in parts])
                logger.info("building the %s index (%s) over %d vectors", name, requested, n)
                index, params = ann.build(vecs, ids, requested)
                self.index.set_ann(name, LoadedAnn(index, params, self.store.generation()))
            self.stats.index_types[name] = self.index.ann(name).params.kind
        self.index.write_anns()


# ------------------------------------------------------------------------------------------- the run
def update_index(
    folder: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    model,
    preprocess: Callable,
    tokenizer: Callable | None,
    model_spec: str,
    batch_size: int = 64,
    workers: int = 0,
    index_type: str | None = None,
    commit_every: int = 256,
    checkpoint_seconds: float = 60.0,
    progress: Callable[[int, int | None], None] | None = None,
    verify: bool = False,
    follow_symlinks: bool = False,
) -> IndexStats:
    """Create or update the index in ``folder`` from ``paths`` (folders, CSV files, shards).

    ``tokenizer`` given: captions are embedded too (for ``--captions`` search). ``index_type``: auto,
    flat, ivf or hnsw (None keeps the index's current choice). ``progress(n, total)`` is called with the
    images done since the last call and the planned total of the current source (None for shards).
    ``verify``: re-hash files (and re-read shards) whose size and mtime match their rows.
    ``follow_symlinks``: read symlinks that lead out of the folders (see ``data.sources``).
    Refuses (``ModelMismatchError``) a model whose fingerprint differs from the index's.
    """
    from ..record import fingerprint

    if index_type is not None and index_type not in ann.INDEX_TYPES:
        raise KontrastError(f"--index-type {index_type!r} is not one of {', '.join(ann.INDEX_TYPES)}")
    if commit_every < 1:
        raise KontrastError(f"commit_every={commit_every} must be >= 1")
    sources = open_sources(paths, follow_symlinks)
    stats = IndexStats()
    fp = fingerprint(model)
    with WriteLock(folder):
        index = SearchIndex.create(folder, model_spec, fp, int(model.embed_dim), index_type or "auto")
        index.check_model(fp, model_spec)
        if index.index_type == "ivfpq":  # compressed.KIND: vectors live in the embedding shards it was built from
            raise KontrastError(f"index {folder} is a compressed (ivfpq) index built from embeddings; update it with "
                                "kontrast index --from-embeddings, or give a new --index DIR")
        if index_type is not None and index_type != index.index_type:
            with index.store.transaction() as db:
                index.store.set_info(db, index_type=index_type)
        for name in COLUMNS:  # load (and catch up) the FAISS indexes before this run changes the database
            index.ann(name)
        updater = IndexUpdater(index, stats)
        last_write = time.monotonic()
        for origin, src in sources:
            if isinstance(src, list):
                (plan, unchanged), gone = plan_shards(index.store, src, verify), []
            else:
                plan, gone, unchanged = plan_files(index.store, src, origin, commit_every, verify)
            stats.unchanged += unchanged
            if gone:
                with index.store.transaction() as db:
                    gen = index.store.bump_generation(db)
                    for path in gone:
                        updater.delete(db, path, gen)
                updater.apply_pending()
            if not plan.units:
                continue
            cb = (lambda n, total=plan.total: progress(n, total)) if progress else None
            for result in embed_units(model, preprocess, _HashingSource(plan.source), units=plan.units,
                                      batch_size=batch_size, workers=workers, tokenizer=tokenizer, progress=cb):
                _commit_unit(index, updater, plan, result)
                if time.monotonic() - last_write > checkpoint_seconds:
                    updater.checkpoint()
                    last_write = time.monotonic()
        updater.finish()
        stats.items = index.store.count()
        stats.vectors = index.store.count("image_vec")
        index.close()
    return stats


def _commit_unit(index: SearchIndex, updater: IndexUpdater, plan: Plan, result) -> None:
    """One unit's rows in one transaction (with the generation bump), then the in-memory FAISS update."""
    is_shard = isinstance(plan.source, TarSource)
    damaged = result.damaged
    with index.store.transaction() as db:
        gen = index.store.bump_generation(db)
        seen: set[str] = set()
        for i, meta in enumerate(result.metas):
            path = meta["source"] if is_shard else os.path.abspath(meta["source"])
            seen.add(path)
            origin = plan.origin_of(path)
            stat = (meta["meta"]["_size"], plan.stat[origin][1]) if is_shard else plan.stat.get(path, (0, 0))
            text_vec = result.text_embeddings[i] if result.text_embeddings is not None else None
            updater.upsert(db, gen, path, origin, plan.source.kind, meta, stat, result.image_embeddings[i], text_vec,
                           plan.caption_sig.get(path))
        updater.stats.caption_errors.extend(result.caption_errors)
        for skipped in result.skipped:
            if skipped.incomplete_unit:
                updater.stats.damaged.append(skipped)
                continue
            updater.stats.skipped.append(skipped)
            if not is_shard:
                updater.delete(db, os.path.abspath(skipped.source), gen)
        if is_shard and not damaged:  # a damaged shard keeps the rows it could not read, and is read again
            shard = result.unit
            for (path,) in db.execute("SELECT path FROM items WHERE origin = ?", (shard,)).fetchall():
                if path not in seen:
                    updater.delete(db, path, gen)
            st = plan.stat[shard]
            db.execute("INSERT OR REPLACE INTO shards(path, size, mtime_ns) VALUES (?, ?, ?)", (shard, st[0], st[1]))
        elif is_shard:
            db.execute("DELETE FROM shards WHERE path = ?", (result.unit,))
    updater.apply_pending()
