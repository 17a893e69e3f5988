"""The SQLite half of a search index: one row per indexed image, with its vectors, and the generation counter.

SQLite is the source of truth; the FAISS files are caches that can be rebuilt from it. The database runs
in WAL mode and every unit of work (a chunk of files, or a shard) is one transaction that also bumps
``generation``, so a crash loses at most the unit in flight.

Tables:
- ``info(key, value)``: ``schema``, ``generation``, ``model_fingerprint``, ``model_spec``, ``embed_dim``,
  ``index_type`` (what the user asked for: auto, flat, ivf, hnsw).
- ``items``: ``id`` (AUTOINCREMENT, never reused: it is the FAISS id), ``path`` (absolute file path, or
  ``<shard path>:<member name>``; unique), ``origin`` (the folder / CSV / shard given to ``kontrast index``),
  ``kind`` (folder, csv, webdataset), ``key``, ``sha256`` of the bytes, ``size``, ``mtime_ns`` (of the
  file, or of the shard), ``width``, ``height``, ``caption``, ``meta`` (JSON), ``alias_of`` (duplicate
  content: the id of the row that holds the vector; such rows have no image vector), ``gen`` (generation
  in which the row's vectors were last written), ``image_vec`` / ``text_vec`` (float32 blobs; ``text_vec``
  is the caption's embedding, NULL without caption), ``caption_sig`` (``"size:mtime_ns"`` of a folder
  image's caption file, NULL without one: a caption edited on its own is noticed; schema 2).
- ``removed(id, gen)``: ids whose vectors were dropped or replaced at ``gen``; a FAISS file older than
  ``gen`` still holds them (purged once a newer FAISS file is written).
- ``shards(path, size, mtime_ns)``: shards fully indexed, to skip unchanged ones on the next run.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import KontrastError

SCHEMA_VERSION = 2
DB_NAME = "index.sqlite"
# Statements that bring a database from schema N to N + 1 (run by a writer; readers accept any listed version).
_MIGRATIONS = {1: ["ALTER TABLE items ADD COLUMN caption_sig TEXT"]}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    origin TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER,
    width INTEGER,
    height INTEGER,
    caption TEXT,
    meta TEXT,
    alias_of INTEGER,
    gen INTEGER NOT NULL,
    image_vec BLOB,
    text_vec BLOB,
    caption_sig TEXT
);
CREATE INDEX IF NOT EXISTS items_sha ON items(sha256);
CREATE INDEX IF NOT EXISTS items_origin ON items(origin);
CREATE INDEX IF NOT EXISTS items_gen ON items(gen);
CREATE INDEX IF NOT EXISTS items_alias ON items(alias_of);
CREATE TABLE IF NOT EXISTS removed (id INTEGER NOT NULL, gen INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS shards (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL);
"""

# Columns returned to callers (everything but the vector blobs).
META_COLUMNS = ("id", "path", "origin", "kind", "key", "sha256", "size", "mtime_ns", "width", "height", "caption",
                "meta", "alias_of", "gen")


def to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_blobs(blobs: Iterable[bytes], dim: int) -> np.ndarray:
    """Stack float32 blobs into [n, dim]."""
    buf = b"".join(blobs)
    return np.frombuffer(buf, dtype="<f4").reshape(-1, dim).astype(np.float32)  # [n * dim] -> [n, dim]


class Store:
    """A connection per thread to one index database (the server reads from a thread pool)."""

    def __init__(self, folder: str | Path, create: bool = False, readonly: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        if self.folder.exists() and not self.folder.is_dir():
            raise KontrastError(f"{self.folder} is a file, not an index folder; give a folder (--index NEW_DIR "
                                "creates one)")
        if not self.path.is_file() and not create:
            raise KontrastError(f"{self.folder} is not a kontrast search index (no {DB_NAME}); "
                                "build one with: kontrast index PATH --index DIR")
        self.readonly = readonly
        self._local = threading.local()
        try:
            if create:
                self.folder.mkdir(parents=True, exist_ok=True)
                fresh = self.get_info_if_table("schema") is None
                if fresh:
                    self.db.executescript(_SCHEMA)  # executescript commits by itself
                    with self.transaction() as db:
                        self._set(db, "schema", SCHEMA_VERSION)
                        self._set(db, "generation", 0)
            schema = self.get_info("schema")
            if schema is not None and not readonly:
                schema = self._migrate(int(schema))
        except sqlite3.DatabaseError as exc:
            raise KontrastError(f"{self.path} is not a readable index database ({exc}); move it away and "
                                "rebuild the index") from None
        if schema is None or not 1 <= int(schema) <= SCHEMA_VERSION:
            raise KontrastError(f"{self.path}: index schema {schema} is not one this kontrast reads "
                                f"(1..{SCHEMA_VERSION}); rebuild the index")

    def get_info_if_table(self, key: str) -> str | None:
        """``get_info`` on a database that may not have its tables yet."""
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'info'").fetchone() is None:
            return None
        return self.get_info(key)

    def _migrate(self, schema: int) -> int:
        """Bring the database up to ``SCHEMA_VERSION`` (writers only), one transaction per step."""
        while schema < SCHEMA_VERSION:
            with self.transaction() as db:
                for statement in _MIGRATIONS[schema]:
                    db.execute(statement)
                schema += 1
                self._set(db, "schema", schema)
        return schema

    # ---------------------------------------------------------------------------------- connections
    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                if self.readonly:
                    conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30, isolation_level=None,
                                           check_same_thread=False)
                else:
                    conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a process kill
            except sqlite3.Error as exc:
                raise KontrastError(f"cannot open index database {self.path}: {exc}") from exc
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    class _Txn:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type, exc, tb) -> None:
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def transaction(self) -> Store._Txn:
        """``with store.transaction() as db:`` one atomic write (BEGIN IMMEDIATE ... COMMIT/ROLLBACK)."""
        return Store._Txn(self.db)

    def snapshot(self) -> _Snapshot:
        """``with store.snapshot() as db:`` consistent reads across several queries (one read transaction)."""
        return _Snapshot(self.db)

    # ---------------------------------------------------------------------------------------- info
    @staticmethod
    def _set(db: sqlite3.Connection, key: str, value: Any) -> None:
        db.execute("INSERT OR REPLACE INTO info(key, value) VALUES (?, ?)", (key, str(value)))

    def get_info(self, key: str, db: sqlite3.Connection | None = None) -> str | None:
        row = (db or self.db).execute("SELECT value FROM info WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_info(self, db: sqlite3.Connection, **values: Any) -> None:
        for key, value in values.items():
            self._set(db, key, value)

    def generation(self, db: sqlite3.Connection | None = None) -> int:
        return int(self.get_info("generation", db) or 0)

    def bump_generation(self, db: sqlite3.Connection) -> int:
        gen = self.generation(db) + 1
        self._set(db, "generation", gen)
        return gen

    # ------------------------------------------------------------------------------------- reading
    def rows(self, ids: Iterable[int], db: sqlite3.Connection | None = None) -> dict[int, dict[str, Any]]:
        """Metadata of ``ids`` (missing ids are left out), ``meta`` decoded from JSON."""
        ids = [int(i) for i in ids]
        out: dict[int, dict[str, Any]] = {}
        cols = ", ".join(META_COLUMNS)
        for start in range(0, len(ids), 500):
            chunk = ids[start: start + 500]
            marks = ",".join("?" * len(chunk))
            for row in (db or self.db).execute(f"SELECT {cols} FROM items WHERE id IN ({marks})", chunk):
                d = dict(row)
                d["meta"] = json.loads(d["meta"]) if d["meta"] else {}
                out[d["id"]] = d
        return out

    def aliases(self, ids: Iterable[int]) -> dict[int, list[str]]:
        """Paths of duplicate-content rows pointing at each of ``ids``."""
        ids = [int(i) for i in ids]
        out: dict[int, list[str]] = {}
        if not ids:
            return out
        marks = ",".join("?" * len(ids))
        for row in self.db.execute(f"SELECT alias_of, path FROM items WHERE alias_of IN ({marks}) ORDER BY id", ids):
            out.setdefault(row[0], []).append(row[1])
        return out

    def vectors(self, ids: Iterable[int], column: str, dim: int) -> dict[int, np.ndarray]:
        """Stored vectors of ``ids`` for ``column`` (``image_vec`` / ``text_vec``); ids without one are left out."""
        _check_column(column)
        ids = [int(i) for i in ids]
        out: dict[int, np.ndarray] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start: start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(f"SELECT id, {column} FROM items WHERE id IN ({marks}) AND {column} IS NOT NULL",
                                       chunk):
                out[row[0]] = from_blobs([row[1]], dim)[0]
        return out

    def iter_vectors(self, column: str, dim: int, db: sqlite3.Connection, min_gen: int = -1,
                     batch: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids [b], vectors [b, dim])`` batches of rows with a ``column`` vector and ``gen > min_gen``, by id."""
        _check_column(column)
        cur = db.execute(f"SELECT id, {column} FROM items WHERE {column} IS NOT NULL AND gen > ? ORDER BY id",
                         (min_gen,))
        while True:
            rows = cur.fetchmany(batch)
            if not rows:
                return
            yield np.array([r[0] for r in rows], np.int64), from_blobs((r[1] for r in rows), dim)

    def count(self, column: str | None = None) -> int:
        if column is None:
            return int(self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        _check_column(column)
        return int(self.db.execute(f"SELECT COUNT(*) FROM items WHERE {column} IS NOT NULL").fetchone()[0])


class _Snapshot:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN")
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.db.execute("COMMIT")


def _check_column(column: str) -> None:
    if column not in ("image_vec", "text_vec"):
        raise ValueError(f"unknown vector column {column!r}")
