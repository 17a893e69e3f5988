"""Image(-caption) collections as raw records: image folders, CSV files and webdataset tar shards.

A *source* is split into *units* (a shard, or a chunk of files) so that ranks and DataLoader workers
can share the work; each unit yields ``Record`` objects with the raw image bytes, undecoded, so that
decoding happens in workers and a bad file is one skipped record, never a crash.

What is read, and what is refused:

- Symlinks: a file (image or caption) that is a symlink leading outside the folder being read (for a CSV,
  the folder of the listed path) is not read unless ``follow_symlinks=True``; it becomes a record with an
  error (counted as skipped), so a link next to an image cannot make ``/etc/passwd`` a caption or serve a
  private picture. Symlinked sub-folders are only walked with ``follow_symlinks`` (each real folder once).
- Captions must be UTF-8: one that is not (or cannot be read) is dropped from its record with a
  ``caption_error`` that callers count; the image is still used.
- Tar shards are read with tar's ``ignore_zeros`` recovery: a corrupt member header is skipped and reading
  continues at the next valid header, instead of ending the shard silently there. Each damaged region, a
  shard cut short, or one that cannot be opened yields a record with ``incomplete_unit=True`` naming the
  byte offset and what was lost, so callers can report it and must not mark the shard as done.
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
    caption_error: str | None = None  # the caption could not be read (not UTF-8, unreadable, refused symlink)
    incomplete_unit: bool = False  # not an item: reports that part of its unit (a shard) could not be read


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


def decode_caption(data: bytes) -> tuple[str | None, str | None]:
    """``(caption, None)`` for UTF-8 bytes (stripped), else ``(None, reason)``."""
    try:
        return data.decode("utf-8").strip(), None
    except UnicodeDecodeError as exc:
        return None, (f"caption is not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}); "
                      "re-save it as UTF-8")


def symlink_escape(path: Path, root: str | os.PathLike) -> str | None:
    """Why ``path`` must not be read: it is a symlink whose target lies outside ``root`` (None: it may be)."""
    if not path.is_symlink():
        return None
    target = os.path.realpath(path)
    real_root = os.path.realpath(root)
    if target == real_root or target.startswith(real_root.rstrip(os.sep) + os.sep):
        return None
    return f"symlink to {target}, outside {root}; not followed (pass --follow-symlinks to allow it)"


def read_caption(path: Path, root: str | os.PathLike, follow_symlinks: bool) -> tuple[str | None, str | None]:
    """``(caption, problem)`` of an optional caption file: ``(None, None)`` when there is none."""
    if not path.is_file():
        return None, None
    refused = None if follow_symlinks else symlink_escape(path, root)
    if refused:
        return None, f"caption file {path.name}: {refused}"
    data, error = _read_bytes(path)
    if data is None:
        return None, f"cannot read caption file {path.name}: {error}"
    caption, problem = decode_caption(data)
    return caption, (f"{path.name}: {problem}" if problem else None)


def walk_images(root: Path, follow_symlinks: bool = False) -> list[Path]:
    """Image files under ``root`` (sorted; hidden files left out). Symlinked folders are walked only with
    ``follow_symlinks`` (each real folder once, so link cycles end); symlinked files are listed either way
    and checked when read."""
    out: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks):
        if follow_symlinks:
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen:
                dirnames[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
        for name in filenames:
            p = Path(dirpath) / name
            if p.suffix.lower() in IMAGE_EXTS and not name.startswith(".") and p.is_file():
                out.append(p)
    return sorted(out)


class FolderSource(Source):
    """Images found recursively under a folder; an optional same-name ``.txt`` holds the caption.

    ``follow_symlinks=False``: symlinks leading out of ``root`` are not read (see the module docstring).
    """

    kind = "folder"

    def __init__(self, root: str | os.PathLike, follow_symlinks: bool = False) -> None:
        self.root = Path(root)
        self.follow_symlinks = follow_symlinks
        self.files = walk_images(self.root, follow_symlinks)

    def units(self) -> list[tuple[int, int]]:
        return [(i, min(i + FOLDER_CHUNK, len(self.files))) for i in range(0, len(self.files), FOLDER_CHUNK)]

    def unit_name(self, unit: tuple[int, int]) -> str:
        return f"{self.root}[{unit[0]}:{unit[1]}]"

    def iter_unit(self, unit: tuple[int, int]) -> Iterator[Record]:
        for path in self.files[unit[0]: unit[1]]:
            refused = None if self.follow_symlinks else symlink_escape(path, self.root)
            data, error = (None, refused) if refused else _read_bytes(path)
            caption, caption_error = read_caption(path.with_suffix(".txt"), self.root, self.follow_symlinks)
            rel = path.relative_to(self.root).as_posix()
            label = path.parent.relative_to(self.root).as_posix() if path.parent != self.root else None
            meta = {"label": label} if label else {}
            yield Record(rel, str(path), data, caption, meta, error, caption_error)


class CsvSource(Source):
    """A CSV with a ``filepath`` column (relative to the CSV's folder) and ``caption`` and/or ``label``."""

    kind = "csv"

    def __init__(self, path: str | os.PathLike, path_column: str = "filepath", follow_symlinks: bool = False) -> None:
        self.path = Path(path)
        self.follow_symlinks = follow_symlinks
        try:
            with self.path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or path_column not in reader.fieldnames:
                    raise KontrastError(f"{self.path}: no {path_column!r} column (found {reader.fieldnames}); "
                                        "expected a header like filepath,caption")
                self.rows = list(reader)
        except UnicodeDecodeError as exc:
            raise KontrastError(f"{self.path} is not UTF-8 (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                                "re-save it as UTF-8") from None
        except (OSError, csv.Error) as exc:
            raise KontrastError(f"cannot read CSV file {self.path}: {exc}") from None
        self.path_column = path_column

    def units(self) -> list[tuple[int, int]]:
        return [(i, min(i + FOLDER_CHUNK, len(self.rows))) for i in range(0, len(self.rows), FOLDER_CHUNK)]

    def unit_name(self, unit: tuple[int, int]) -> str:
        return f"{self.path}[{unit[0]}:{unit[1]}]"

    def iter_unit(self, unit: tuple[int, int]) -> Iterator[Record]:
        for row in self.rows[unit[0]: unit[1]]:
            rel = row[self.path_column]
            path = Path(rel) if os.path.isabs(rel) else self.path.parent / rel
            root = path.parent if os.path.isabs(rel) else self.path.parent
            refused = None if self.follow_symlinks else symlink_escape(path, root)
            data, error = (None, refused) if refused else _read_bytes(path)
            meta = {k: v for k, v in row.items() if k not in (self.path_column, "caption")}
            yield Record(rel, str(path), data, row.get("caption"), meta, error)


class _TarDamage:
    """What a tar reader met besides valid headers: corrupt header blocks (grouped into regions), end blocks."""

    def __init__(self) -> None:
        self.regions: list[tuple[int, int]] = []  # closed (start, end) byte ranges of corrupt blocks
        self._open: list[int] | None = None  # [start, end) of the region being read
        self.end_marker = False  # saw tar's all-zero end-of-archive block
        self.cut_at: int | None = None  # the shard ended inside a header block

    def bad(self, offset: int) -> None:
        if self._open is not None and self._open[1] == offset:
            self._open[1] = offset + tarfile.BLOCKSIZE
        else:
            self.close()
            self._open = [offset, offset + tarfile.BLOCKSIZE]

    def close(self) -> None:
        if self._open is not None:
            self.regions.append((self._open[0], self._open[1]))
            self._open = None

    def take(self) -> list[tuple[int, int]]:
        """Regions closed since the last call."""
        out, self.regions = self.regions, []
        return out


class _CheckedTarInfo(tarfile.TarInfo):
    """A ``TarInfo`` that notes corrupt headers on its ``TarFile`` (``tar.damage``) before tarfile skips them.

    With ``ignore_zeros=True`` tarfile steps over a header that fails its checksum one block at a time until
    the next valid header; without it, it stops there as if the archive had ended. Either way it says nothing:
    this records where it happened."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        damage: _TarDamage = tar.damage  # type: ignore[attr-defined]
        offset = tar.offset
        try:
            info = super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            damage.close()
            damage.end_marker = True
            raise
        except tarfile.InvalidHeaderError:
            damage.bad(offset)
            raise
        except tarfile.TruncatedHeaderError:
            damage.close()
            damage.cut_at = offset
            raise
        damage.close()
        return info


class _CheckedTarFile(tarfile.TarFile):
    """``TarFile`` whose headers go through ``_CheckedTarInfo``; ``damage`` exists before the first header."""

    tarinfo = _CheckedTarInfo

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.damage = _TarDamage()
        super().__init__(*args, **kwargs)


def open_tar(shard: str | os.PathLike, stream: bool = True) -> tarfile.TarFile:
    """A shard opened with corrupt-header recovery; ``tar.damage`` says what was skipped (see ``_TarDamage``)."""
    return _CheckedTarFile.open(shard, mode="r|*" if stream else "r:*", ignore_zeros=True)


class TarSource(Source):
    """webdataset shards: members grouped by key (name up to the first dot in the basename).

    A damaged shard (see the module docstring) still yields every sample that can be read, plus one
    ``incomplete_unit`` record per damaged region saying what was lost.
    """

    kind = "webdataset"

    def __init__(self, shards: Sequence[str]) -> None:
        self.shards = list(shards)

    def units(self) -> list[str]:
        return self.shards

    def iter_unit(self, shard: str) -> Iterator[Record]:
        shard_name = Path(shard).name
        try:
            tar = open_tar(shard)
        except (OSError, tarfile.TarError) as exc:
            yield Record(shard_name, shard, None, error=f"cannot open shard: {exc}", incomplete_unit=True)
            return
        damage: _TarDamage = tar.damage  # type: ignore[attr-defined]
        group: dict[str, Any] = {}
        current: str | None = None
        read_error: str | None = None
        try:
            for member in tar:
                yield from self._damage_records(shard, shard_name, damage.take())
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
            read_error = f"read error at byte {tar.offset}: {exc}"
            if current is not None:
                group.setdefault("__error__", f"truncated shard: {exc}")
        finally:
            tar.close()
        if current is not None:
            yield self._record(shard, shard_name, current, group)
        damage.close()
        yield from self._damage_records(shard, shard_name, damage.take())
        if read_error is None and damage.cut_at is not None:
            read_error = f"the shard ends inside a header at byte {damage.cut_at} (cut short?)"
        elif read_error is None and not damage.end_marker:
            read_error = "the shard has no end-of-archive blocks (cut short? members after its last one may be missing)"
        if read_error is not None:
            yield Record(f"{shard_name}@end", f"{shard}:@end", None, error=f"damaged shard: {read_error}",
                         incomplete_unit=True)

    @staticmethod
    def _damage_records(shard: str, shard_name: str, regions: list[tuple[int, int]]) -> Iterator[Record]:
        for start, end in regions:
            yield Record(f"{shard_name}@{start}", f"{shard}:@{start}", None, incomplete_unit=True,
                         error=f"damaged shard: corrupt tar header at byte {start} ({end - start} bytes skipped; "
                               "the member it started is lost)")

    @staticmethod
    def _record(shard: str, shard_name: str, key: str, group: dict[str, Any]) -> Record:
        image_ext = next((e for e in ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff", "img") if e in group), None)
        caption, caption_error = decode_caption(group["txt"][1]) if "txt" in group else (None, None)
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
            return Record(f"{shard_name}/{key}", f"{shard}:{key}", None, caption, meta, error or "no image member",
                          caption_error)
        member, data = group[image_ext]
        return Record(f"{shard_name}/{key}", f"{shard}:{member}", data, caption, meta, error, caption_error)


def open_source(spec: str | os.PathLike | Sequence[str | os.PathLike], follow_symlinks: bool = False) -> Source:
    """A folder, a ``.csv`` file, or tar shards (paths, globs, brace patterns)."""
    paths = expand_paths(spec)
    if len(paths) == 1 and os.path.isdir(paths[0]):
        return FolderSource(paths[0], follow_symlinks)
    if len(paths) == 1 and paths[0].lower().endswith((".csv", ".tsv")):
        return CsvSource(paths[0], follow_symlinks=follow_symlinks)
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
