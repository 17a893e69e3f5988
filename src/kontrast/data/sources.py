"""Image(-caption) collections as raw records: image folders, CSV files and webdataset tar shards.

A *source* is split into *units* (a shard, or a chunk of files) so that ranks and DataLoader workers
can share the work; each unit yields ``Record`` objects with the raw image bytes, undecoded, so that
decoding happens in workers and a bad file is one skipped record, never a crash.
"""

from __future__ import annotations

import csv
import glob
import io
import itertools
import json
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import KontrastError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
FOLDER_CHUNK = 256  # files per work unit for folders and CSV files


@dataclass
class Record:
    key: str  # unique in the collection: relative path, or "<shard>/<member key>"
    source: str  # where the bytes came from: a file path, or "<shard path>:<member name>"
    data: bytes | None  # raw image bytes; None when the file could not be read (see ``error``)
    caption: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> three names (zero padding kept); ``{x,y}`` alternatives; nested left to right."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    head, tail = pattern[: m.start()], pattern[m.end():]
    return [name for opt in options for name in expand_braces(head + opt + tail)]


def expand_paths(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expand brace patterns and globs; every pattern must match something."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    out: list[str] = []
    for s in specs:
        for name in expand_braces(os.fspath(s)):
            matches = sorted(glob.glob(os.path.expanduser(name))) if glob.has_magic(name) else [os.path.expanduser(name)]
            matches = [p for p in matches if os.path.exists(p)]
            if not matches:
                raise KontrastError(f"no such file or folder: {name}")
            out.extend(matches)
    return out


class Source:
    """Base: ``units()`` lists work units, ``iter_unit(unit)`` yields its records."""

    kind = "source"

    def units(self) -> list[Any]:
        raise NotImplementedError

    def iter_unit(self, unit: Any) -> Iterator[Record]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Record]:
        for unit in self.units():
            yield from self.iter_unit(unit)

    def unit_name(self, unit: Any) -> str:
        return str(unit)


def _read_bytes(path: Path) -> tuple[bytes | None, str | None]:
    try:
        return path.read_bytes(), None
    except OSError as exc:
        return None, f"{type(exc).__name__}: {exc.strerror or exc}"


class FolderSource(Source):
    """Images found recursively under a folder; an optional same-name ``.txt`` holds the caption."""

    kind = "folder"

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.files = sorted(
            p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")
        )

    def units(self) -> list[tuple[int, int]]:
        return [(i, min(i + FOLDER_CHUNK, len(self.files))) for i in range(0, len(self.files), FOLDER_CHUNK)]

    def unit_name(self, unit: tuple[int, int]) -> str:
        return f"{self.root}[{unit[0]}:{unit[1]}]"

    def iter_unit(self, unit: tuple[int, int]) -> Iterator[Record]:
        for path in self.files[unit[0]: unit[1]]:
            data, error = _read_bytes(path)
            txt = path.with_suffix(".txt")
            caption = txt.read_text(encoding="utf-8").strip() if txt.is_file() else None
            rel = path.relative_to(self.root).as_posix()
            label = path.parent.relative_to(self.root).as_posix() if path.parent != self.root else None
            meta = {"label": label} if label else {}
            yield Record(rel, str(path), data, caption, meta, error)


class CsvSource(Source):
    """A CSV with a ``filepath`` column (relative to the CSV's folder) and ``caption`` and/or ``label``."""

    kind = "csv"

    def __init__(self, path: str | os.PathLike, path_column: str = "filepath") -> None:
        self.path = Path(path)
        with self.path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or path_column not in reader.fieldnames:
                raise KontrastError(
                    f"{self.path}: no {path_column!r} column (found {reader.fieldnames}); expected a header like filepath,caption"
                )
            self.rows = list(reader)
        self.path_column = path_column

    def units(self) -> list[tuple[int, int]]:
        return [(i, min(i + FOLDER_CHUNK, len(self.rows))) for i in range(0, len(self.rows), FOLDER_CHUNK)]

    def unit_name(self, unit: tuple[int, int]) -> str:
        return f"{self.path}[{unit[0]}:{unit[1]}]"

    def iter_unit(self, unit: tuple[int, int]) -> Iterator[Record]:
        for row in self.rows[unit[0]: unit[1]]:
            rel = row[self.path_column]
            path = Path(rel) if os.path.isabs(rel) else self.path.parent / rel
            data, error = _read_bytes(path)
            meta = {k: v for k, v in row.items() if k not in (self.path_column, "caption")}
            yield Record(rel, str(path), data, row.get("caption"), meta, error)


class TarSource(Source):
    """webdataset shards: members grouped by key (name up to the first dot in the basename)."""

    kind = "webdataset"

    def __init__(self, shards: Sequence[str]) -> None:
        self.shards = list(shards)

    def units(self) -> list[str]:
        return self.shards

    def iter_unit(self, shard: str) -> Iterator[Record]:
        shard_name = Path(shard).name
        try:
            tar = tarfile.open(shard, mode="r|*")
        except (OSError, tarfile.TarError) as exc:
            yield Record(shard_name, shard, None, error=f"cannot open shard: {exc}")
            return
        group: dict[str, Any] = {}
        current: str | None = None
        try:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                prefix = member.name[: len(member.name) - len(base)]
                full_key = prefix + key
                if current is not None and full_key != current:
                    yield self._record(shard, shard_name, current, group)
                    group = {}
                current = full_key
                fh = tar.extractfile(member)
                group[ext.lower()] = (member.name, fh.read() if fh else b"")
        except (OSError, tarfile.TarError, EOFError) as exc:
            if current is not None:
                group.setdefault("__error__", f"truncated shard: {exc}")
        finally:
            tar.close()
        if current is not None:
            yield self._record(shard, shard_name, current, group)

    @staticmethod
    def _record(shard: str, shard_name: str, key: str, group: dict[str, Any]) -> Record:
        image_ext = next((e for e in ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff", "img") if e in group), None)
        caption = group["txt"][1].decode("utf-8", "replace").strip() if "txt" in group else None
        meta: dict[str, Any] = {}
        if "json" in group:
            try:
                meta = json.loads(group["json"][1].decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                meta = {}
        if "cls" in group:
            meta.setdefault("label", group["cls"][1].decode("utf-8", "replace").strip())
        error = group.get("__error__")
        if image_ext is None:
            return Record(f"{shard_name}/{key}", f"{shard}:{key}", None, caption, meta, error or "no image member")
        member, data = group[image_ext]
        return Record(f"{shard_name}/{key}", f"{shard}:{member}", data, caption, meta, error)


def open_source(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> Source:
    """A folder, a ``.csv`` file, or tar shards (paths, globs, brace patterns)."""
    paths = expand_paths(spec)
    if len(paths) == 1 and os.path.isdir(paths[0]):
        return FolderSource(paths[0])
    if len(paths) == 1 and paths[0].lower().endswith((".csv", ".tsv")):
        return CsvSource(paths[0])
    bad = [p for p in paths if not p.endswith(".tar") and not p.endswith((".tar.gz", ".tgz"))]
    if bad:
        raise KontrastError(f"{bad[0]}: not a folder, a .csv file or a .tar shard")
    return TarSource(paths)


def split_units(units: list[Any], rank: int, world_size: int) -> list[Any]:
    """Units of one rank: round-robin, so every unit goes to exactly one rank."""
    return list(itertools.islice(units, rank, None, world_size))


def open_image_bytes(data: bytes):
    """PIL image from bytes (lazy decode); errors propagate for the caller to count."""
    from PIL import Image

    return Image.open(io.BytesIO(data))
