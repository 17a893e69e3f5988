"""Planning an index update: which files, CSV rows and shards must be read again, and which rows are gone.

See ``build.py`` for the rules; this module only compares what is on disk with the rows of the index
(stat, caption signature, and with ``verify`` the sha256 and caption text read back now).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.sources import CsvSource, FolderSource, Source, TarSource, expand_paths, read_caption
from ..errors import KontrastError
from .store import Store


@dataclass
class Plan:
    """One source's work: the filtered source, its units, and the stat of each planned file."""

    source: Source
    units: list[Any]
    origin_of: Callable[[str], str]  # record path -> origin
    stat: dict[str, tuple[int, int]]  # path -> (size, mtime_ns) at planning time
    total: int | None  # planned images (None for shards: unknown before reading)
    caption_sig: dict[str, str | None] = field(default_factory=dict)  # folder image -> its caption file's stat


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _caption_sig(image_path: str) -> str | None:
    """``"size:mtime_ns"`` of a folder image's caption file (``.txt`` next to it); None without one."""
    st = _stat(os.path.splitext(image_path)[0] + ".txt")
    return None if st is None else f"{st[0]}:{st[1]}"


def _sha256_file(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


_KNOWN_COLUMNS = "path, size, mtime_ns, caption_sig, caption, sha256"


def _known(store: Store, origin: str) -> dict[str, sqlite3.Row]:
    return {r[0]: r for r in store.db.execute(f"SELECT {_KNOWN_COLUMNS} FROM items WHERE origin = ?", (origin,))}


def _known_by_path(store: Store, paths: Sequence[str]) -> dict[str, sqlite3.Row]:
    out: dict[str, sqlite3.Row] = {}
    for start in range(0, len(paths), 500):
        chunk = list(paths[start: start + 500])
        marks = ",".join("?" * len(chunk))
        for r in store.db.execute(f"SELECT {_KNOWN_COLUMNS} FROM items WHERE path IN ({marks})", chunk):
            out[r[0]] = r
    return out


def _unchanged(row: sqlite3.Row | None, path: str, st: tuple[int, int], caption: Any, verify: bool) -> bool:
    """Whether the indexed ``row`` of ``path`` still holds: same stat, same caption (the folder caption file's
    stat, or a CSV row's text), and with ``verify`` the same sha256 (and caption text) read back now."""
    if row is None or (row["size"], row["mtime_ns"]) != st:
        return False
    if isinstance(caption, tuple):  # CSV: ("text", caption)
        if (caption[1] or None) != row["caption"]:
            return False
    elif caption != row["caption_sig"]:
        return False
    if not verify:
        return True
    if _sha256_file(path) != row["sha256"]:
        return False
    if isinstance(caption, tuple) or caption is None:
        return True
    text, _ = read_caption(Path(os.path.splitext(path)[0] + ".txt"), Path(path).parent, follow_symlinks=True)
    return (text or None) == row["caption"]


def plan_files(store: Store, source: FolderSource | CsvSource, origin: str, commit_every: int,
               verify: bool = False) -> tuple[Plan, list[str], int]:
    """``(plan, gone, unchanged)``: the files of a folder / CSV that need (re-)embedding (the source is
    filtered to them), the paths of the origin's rows whose file is gone, and how many rows still hold."""
    folder = isinstance(source, FolderSource)
    if folder:
        entries = [(str(p), p) for p in source.files]  # paths are absolute: the root was made absolute
    else:
        entries = [(os.path.abspath(r[source.path_column] if os.path.isabs(r[source.path_column])
                                    else source.path.parent / r[source.path_column]), r) for r in source.rows]
    known = _known(store, origin)
    others = _known_by_path(store, [p for p, _ in entries if p not in known])
    stat: dict[str, tuple[int, int]] = {}
    sigs: dict[str, str | None] = {}
    keep, present = [], set()
    unchanged = 0
    for path, entry in entries:
        st = _stat(path)
        if st is None:
            keep.append(entry)  # the pipeline reports it as skipped (file not found)
            continue
        present.add(path)
        stat[path] = st
        caption = _caption_sig(path) if folder else ("text", entry.get("caption"))
        if folder:
            sigs[path] = caption
        if _unchanged(known.get(path) or others.get(path), path, st, caption, verify):
            unchanged += 1
        else:
            keep.append(entry)
    if folder:
        source.files = keep
    else:
        source.rows = keep
    units = [(i, min(i + commit_every, len(keep))) for i in range(0, len(keep), commit_every)]
    gone = [p for p in known if p not in present]
    return Plan(source, units, lambda _p: origin, stat, len(keep), sigs), gone, unchanged


def plan_shards(store: Store, shards: list[str], verify: bool = False) -> tuple[Plan, int]:
    """``(plan, unchanged)``: the shards to read (all with ``verify``), and the rows of the finished ones."""
    done = {r[0]: (r[1], r[2]) for r in store.db.execute("SELECT path, size, mtime_ns FROM shards")}
    todo, stat = [], {}
    unchanged = 0
    for shard in shards:
        st = _stat(shard)
        if st is not None and done.get(shard) == st and not verify:
            unchanged += int(store.db.execute("SELECT COUNT(*) FROM items WHERE origin = ?", (shard,)).fetchone()[0])
            continue
        todo.append(shard)
        stat[shard] = st or (0, 0)
    source = TarSource(todo)
    return Plan(source, list(todo), lambda p: p.rsplit(":", 1)[0], stat, None), unchanged


def open_sources(paths: Sequence[str | os.PathLike],
                  follow_symlinks: bool = False) -> list[tuple[str, Source | list[str]]]:
    """``[(origin, FolderSource | CsvSource), ..., ("shards", [shard paths])]`` with absolute paths."""
    out: list[tuple[str, Any]] = []
    shards: list[str] = []
    for spec in paths:
        expanded = [os.path.abspath(p) for p in expand_paths(os.path.expanduser(os.fspath(spec)))]
        for path in expanded:
            if os.path.isdir(path):
                out.append((path, FolderSource(path, follow_symlinks)))
            elif path.lower().endswith((".csv", ".tsv")):
                out.append((path, CsvSource(path, follow_symlinks=follow_symlinks)))
            elif path.endswith((".tar", ".tar.gz", ".tgz")):
                shards.append(path)
            else:
                raise KontrastError(f"{path}: not a folder, a .csv file or a .tar shard")
    if shards:
        out.append(("shards", sorted(dict.fromkeys(shards))))
    return out
