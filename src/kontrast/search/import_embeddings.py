"""Build a search index from precomputed embeddings (``kontrast index --from-embeddings DIR``), no image read.

The folder is read with ``embedding_sources`` (kontrast's ``embed`` layout or clip-retrieval's). Each shard
becomes rows of the index: ``path`` is the row's ``image_path`` (``<shard file>:<row>`` when it has none;
the file need not exist: such a result shows no image), ``caption``, ``key``, ``width`` / ``height`` when the
metadata has them, ``meta`` the other columns as JSON (``url``, ...), ``image_vec`` / ``text_vec`` the shard's
rows as float32, renormalised to unit length (float16 storage loses ~1e-3 of it). A caption embedding is kept
only with a caption, as ``kontrast index`` does. ``sha256`` is empty and ``size`` 0: the bytes were not read
(``kontrast index PATH`` over the same files later re-embeds them, since their hash is unknown).

Crash safety and resuming follow ``build``: one shard is one SQLite transaction (its rows, its entry in the
``shards`` table with the size and mtime of its files, the generation bump), so a killed run loses at most the
shard in flight, and a rerun skips shards whose files did not change. A changed shard is imported again (its
old rows deleted in the same transaction); rows of shards that are gone from the folder are deleted. A row
whose ``image_path`` is already indexed (by another shard, or by ``kontrast index``) is counted as a
duplicate and left out; a row with a zero image vector is skipped and counted.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import KontrastError
from . import ann
from .build import IndexUpdater
from .embedding_sources import (
    FIXED_COLUMNS,
    ShardFiles,
    SkippedPart,
    collection_dim,
    count_embeddings,
    count_embeddings_of,
    detect_layout,
    list_shards,
    read_shard,
)
from .index import SearchIndex, WriteLock
from .store import to_blob

logger = logging.getLogger(__name__)

KIND = "embeddings"  # items.kind of imported rows


@dataclass
class ImportStats:
    """What one ``import_embeddings`` run did (``removed`` / ``index_types`` are filled by ``IndexUpdater``)."""

    layout: str = ""
    shards: int = 0  # shards listed in the folder
    imported: int = 0  # shards imported by this run
    unchanged: int = 0  # shards skipped: imported before, files unchanged
    added: int = 0  # rows added
    removed: int = 0  # rows deleted (their shard changed or is gone)
    duplicates: int = 0  # rows whose path was already indexed
    zero_rows: int = 0  # rows with an all-zero image vector (skipped)
    skipped: list[SkippedPart] = field(default_factory=list)  # shards (or rows) the reader left out
    items: int = 0
    vectors: int = 0
    captions: int = 0
    index_types: dict[str, str] = field(default_factory=dict)

    @property
    def skipped_rows(self) -> int:
        return sum(s.rows for s in self.skipped) + self.zero_rows


def _unit_rows(array: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(float32 unit rows [n, d], norm > 0 mask [n])`` of a shard array (None stays None)."""
    if array is None:
        return None, None
    x = np.asarray(array, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # [n, 1]
    ok = norms[:, 0] > 0
    return x / np.where(norms > 0, norms, 1.0), ok


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


_FIELDS = ("caption", "key", "width", "height", "meta")  # the columns _row_fields fills, in this order


def _row_fields(shard: ShardFiles, j: int, meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(path, column values)`` of row ``j`` from its metadata dict."""
    path = meta.get("image_path")
    path = str(path) if path not in (None, "") else f"{shard.key}:{j}"
    caption = meta.get("caption")
    caption = str(caption) if caption not in (None, "") else None
    extra = {k: v for k, v in meta.items() if k not in FIXED_COLUMNS and v is not None}
    key = meta.get("key")
    return path, {"caption": caption, "key": str(key) if key not in (None, "") else os.path.basename(path),
                  "width": _int_or_none(meta.get("width")), "height": _int_or_none(meta.get("height")),
                  "meta": json.dumps(extra, ensure_ascii=False, default=str) if extra else None}


class _Importer:
    def __init__(self, index: SearchIndex, stats: ImportStats) -> None:
        self.index, self.store, self.stats = index, index.store, stats
        self.updater = IndexUpdater(index, stats)  # deletions (tombstones, alias heirs) and FAISS bookkeeping

    def done(self, shard: ShardFiles, signature: tuple[int, int]) -> bool:
        row = self.store.db.execute("SELECT size, mtime_ns FROM shards WHERE path = ?", (shard.key,)).fetchone()
        return row is not None and (row[0], row[1]) == signature

    def forget(self, shard: ShardFiles) -> None:
        """A shard that can no longer be read: keep its old rows, but read it again next run."""
        with self.store.transaction() as db:
            db.execute("DELETE FROM shards WHERE path = ?", (shard.key,))

    def drop_origins(self, origins: list[str]) -> None:
        with self.store.transaction() as db:
            gen = self.store.bump_generation(db)
            for origin in origins:
                for (path,) in db.execute("SELECT path FROM items WHERE origin = ?", (origin,)).fetchall():
                    self.updater.delete(db, path, gen)
                db.execute("DELETE FROM shards WHERE path = ?", (origin,))
        self.updater.apply_pending()

    def commit(self, shard: ShardFiles, read, signature: tuple[int, int]) -> int:
        """The shard's rows in one transaction; returns the rows it read."""
        image, image_ok = _unit_rows(read.image)
        text, text_ok = _unit_rows(read.text)
        dim = self.index.dim
        with self.store.transaction() as db:
            gen = self.store.bump_generation(db)
            for (path,) in db.execute("SELECT path FROM items WHERE origin = ?", (shard.key,)).fetchall():
                self.updater.delete(db, path, gen)  # an earlier version of this shard
            candidates = []
            for j, meta in enumerate(read.meta):
                if image is not None and not image_ok[j]:
                    self.stats.zero_rows += 1
                    continue
                candidates.append((j, *_row_fields(shard, j, meta)))
            taken: set[str] = set()  # paths indexed already (by another shard, or by 'kontrast index')
            for start in range(0, len(candidates), 500):
                chunk = [c[1] for c in candidates[start:start + 500]]
                taken.update(r[0] for r in db.execute(
                    f"SELECT path FROM items WHERE path IN ({','.join('?' * len(chunk))})", chunk))
            records, vectors = [], []
            for j, path, fields in candidates:
                if path in taken:
                    self.stats.duplicates += 1
                    continue
                taken.add(path)
                image_vec = None if image is None else image[j]
                text_vec = text[j] if text is not None and text_ok[j] and fields["caption"] else None
                records.append((path, shard.key, KIND, "", 0, None, *fields.values(), None, gen,
                                None if image_vec is None else to_blob(image_vec),
                                None if text_vec is None else to_blob(text_vec)))
                vectors.append((path, image_vec, text_vec))
            cols = ("path", "origin", "kind", "sha256", "size", "mtime_ns", *_FIELDS, "alias_of", "gen",
                    "image_vec", "text_vec")
            db.executemany(f"INSERT INTO items({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", records)
            ids = dict(db.execute("SELECT path, id FROM items WHERE origin = ?", (shard.key,)).fetchall())
            for path, image_vec, text_vec in vectors:
                if image_vec is not None:
                    self.updater.pending["image"].put(ids[path], image_vec.reshape(dim))
                if text_vec is not None:
                    self.updater.pending["caption"].put(ids[path], text_vec.reshape(dim))
            self.stats.added += len(records)
            db.execute("INSERT OR REPLACE INTO shards(path, size, mtime_ns) VALUES (?, ?, ?)",
                       (shard.key, *signature))
        self.updater.apply_pending()
        return len(read.meta)


def import_embeddings(
    src: str | os.PathLike,
    index_folder: str | os.PathLike,
    model_spec: str,
    fingerprint: str,
    dim: int,
    *,
    layout: str | None = None,
    pretrained: str | None = None,
    index_type: str | None = None,
    checkpoint_seconds: float = 60.0,
    progress: Callable[[int, int | None], None] | None = None,
) -> ImportStats:
    """Create or update the index in ``index_folder`` from the embeddings folder ``src`` (see the module docstring).

    ``model_spec`` / ``pretrained`` / ``fingerprint``: the model that made the embeddings, recorded in the index
    (text queries load it); ``dim`` its embedding size: a folder of another dimension is refused, and so is an
    existing index of another model (``ModelMismatchError``). ``progress(n, total)``: rows read since the last call,
    and the folder's total from the ``.npy`` headers.
    """
    if index_type is not None and index_type not in ann.INDEX_TYPES:
        raise KontrastError(f"--index-type {index_type!r} is not one of {', '.join(ann.INDEX_TYPES)}")
    layout = layout or detect_layout(src)
    found = collection_dim(src, layout)
    if found is not None and found != dim:
        raise KontrastError(f"the embeddings in {src} have dimension {found} but model {model_spec} makes {dim}: "
                            "pass the --model (and --pretrained) that made them")
    shards = list_shards(src, layout)
    total = count_embeddings(src, layout)
    stats = ImportStats(layout=layout, shards=len(shards))
    with WriteLock(index_folder):
        index = SearchIndex.create(index_folder, model_spec, fingerprint, dim, index_type or "auto")
        index.check_model(fingerprint, model_spec)
        with index.store.transaction() as db:
            if pretrained and index.store.get_info("model_pretrained", db) is None:
                index.store.set_info(db, model_pretrained=pretrained)
            if index_type is not None and index_type != index.index_type:
                index.store.set_info(db, index_type=index_type)
        for name in ("image", "caption"):  # load (and catch up) the FAISS indexes before this run changes anything
            index.ann(name)
        importer = _Importer(index, stats)
        root = os.path.abspath(os.fspath(src)) + os.sep
        keys = {s.key for s in shards}
        gone = [o for (o,) in index.store.db.execute("SELECT DISTINCT origin FROM items WHERE kind = ?", (KIND,))
                if o.startswith(root) and o not in keys]
        if gone:
            importer.drop_origins(gone)
        last_write = time.monotonic()
        for shard in shards:
            try:
                signature = shard.signature()
            except OSError as exc:  # a file removed while we run
                stats.skipped.append(SkippedPart(shard.name, f"cannot stat its files ({exc})"))
                continue
            if importer.done(shard, signature):
                stats.unchanged += 1
                if progress:
                    progress(count_embeddings_of(shard), total)
                continue
            read = read_shard(shard, dim, stats.skipped)
            if read is None:
                importer.forget(shard)
                continue
            n = importer.commit(shard, read, signature)
            stats.imported += 1
            if progress:
                progress(n, total)
            if time.monotonic() - last_write > checkpoint_seconds:
                importer.updater.checkpoint()
                last_write = time.monotonic()
        importer.updater.finish()
        stats.items = index.store.count()
        stats.vectors = index.store.count("image_vec")
        stats.captions = index.store.count("text_vec")
        index.close()
    return stats
