"""Read folders of precomputed embeddings shard by shard: kontrast's ``embed`` output and clip-retrieval's layout.

Two layouts are recognised (``detect_layout``):

- ``"kontrast"``: what ``kontrast embed --out DIR`` writes (``manifest.json``, ``unit-000007.npy``,
  ``unit-000007.text.npy``, ``unit-000007.parquet`` / ``.csv``, ``unit-000007.done.json``; see ``kontrast.embed``).
  Only units with their ``done.json`` are read.
- ``"clip-retrieval"``: what ``clip-retrieval inference`` (and ``kontrast embed --layout clip-retrieval``) writes::

      img_emb/img_emb_{i}.npy         image embeddings [n, d] (float16, L2-normalised)
      text_emb/text_emb_{i}.npy       caption embeddings [n, d], row-aligned with the images (when captions)
      metadata/metadata_{i}.parquet   n rows: image_path, caption, and the other metadata columns (url, ...)

  ``{i}`` is zero-padded to the width of the partition count (``img_emb_07.npy``); shards are read in numeric
  order of ``i``, and the three files of one ``i`` are one shard.

Each shard comes back as an ``EmbeddingShard``: ``image`` / ``text`` arrays (memory-mapped ``.npy``: nothing is
copied until the caller reads rows) and ``meta``, one dict per row with ``image_path``, ``caption`` and every
other metadata column (kontrast's layout: ``key``, ``width``, ``height`` and the entries of its ``meta`` JSON).

A shard that cannot be used whole (unreadable file, row counts of image / text / metadata that differ, a
dimension other than the collection's) is skipped; rows holding NaN or infinite values are dropped. Either
is logged as a warning and, with ``skipped=[...]``, appended to that list as a ``SkippedPart`` (name, reason,
rows lost): a batch job goes on and reports the count. A folder in neither layout is one ``KontrastError``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import KontrastError

logger = logging.getLogger(__name__)

LAYOUTS = ("kontrast", "clip-retrieval")
FIXED_COLUMNS = ("image_path", "caption", "key", "width", "height")  # metadata that has its own column in an index
_CR_RE = {"image": re.compile(r"^img_emb_(\d+)\.npy$"), "text": re.compile(r"^text_emb_(\d+)\.npy$"),
          "meta": re.compile(r"^metadata_(\d+)\.parquet$")}
_CR_DIRS = {"image": "img_emb", "text": "text_emb", "meta": "metadata"}
_UNIT_RE = re.compile(r"^unit-(\d+)\.done\.json$")


@dataclass
class EmbeddingShard:
    """One shard of a collection: row ``j`` of ``image``, ``text`` and ``meta`` describe the same item."""

    name: str  # e.g. "img_emb_0.npy" or "unit-000003.npy"
    image: np.ndarray | None  # [n, d] (possibly a read-only memmap; float16 or float32), None without images
    text: np.ndarray | None  # [n, d] aligned with image rows, or None
    meta: list[dict[str, Any]]  # n dicts: image_path, caption, url, ... (whatever columns the metadata has)


@dataclass
class ShardFiles:
    """The files of one shard before it is read (for resuming: ``key`` / ``size`` / ``mtime_ns`` identify it)."""

    name: str
    layout: str
    image: Path | None = None
    text: Path | None = None
    meta: Path | None = None

    @property
    def files(self) -> list[Path]:
        return [p for p in (self.image, self.text, self.meta) if p is not None]

    @property
    def key(self) -> str:
        """Absolute path of the shard's first file: a stable id of the shard."""
        return os.path.abspath(self.files[0])

    def signature(self) -> tuple[int, int]:
        """``(total size, newest mtime_ns)`` of its files: a shard that changed since it was imported differs."""
        stats = [p.stat() for p in self.files]
        return sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)


@dataclass
class SkippedPart:
    """A shard (or rows of one) left out, and why."""

    name: str
    reason: str
    rows: int = 0  # rows lost, where known
    whole: bool = True  # the shard was left out (False: only some rows were dropped)


# ---------------------------------------------------------------------------------------------- layout
def detect_layout(path: str | os.PathLike) -> str:
    """``"kontrast"`` or ``"clip-retrieval"``; a one-line ``KontrastError`` naming ``path`` otherwise.

    A folder with ``img_emb/`` or ``text_emb/`` is clip-retrieval's layout (even with a kontrast ``manifest.json``,
    which ``kontrast embed --layout clip-retrieval`` writes next to it); one with kontrast's manifest is kontrast's.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise KontrastError(f"{path} is not a folder of embeddings (not found, or a file); give the folder written by "
                            "'kontrast embed' or 'clip-retrieval inference'")
    if (root / "img_emb").is_dir() or (root / "text_emb").is_dir():
        return "clip-retrieval"
    manifest = root / "manifest.json"
    if manifest.is_file():
        try:
            fmt = json.loads(manifest.read_text(encoding="utf-8")).get("format")
        except (OSError, ValueError, AttributeError) as exc:
            raise KontrastError(f"{manifest} is not readable JSON ({exc}); is {path} a 'kontrast embed' folder?") from None
        if fmt == "kontrast-embeddings":
            return "kontrast"
    raise KontrastError(f"{path} holds neither kontrast embeddings (manifest.json, unit-*.npy) nor clip-retrieval's "
                        "layout (img_emb/img_emb_N.npy, text_emb/, metadata/metadata_N.parquet)")


def _layout(path: str | os.PathLike, layout: str | None) -> str:
    if layout is None:
        return detect_layout(path)
    if layout not in LAYOUTS:
        raise KontrastError(f"layout {layout!r} is not one of: {', '.join(LAYOUTS)}")
    return layout


def read_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The kontrast ``manifest.json`` of an embeddings folder (either layout), or None without one."""
    manifest = Path(path).expanduser() / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KontrastError(f"{manifest} is not readable JSON ({exc}); remove it or repair it") from None
    return data if isinstance(data, dict) and data.get("format") == "kontrast-embeddings" else None


# ---------------------------------------------------------------------------------------------- listing
def list_shards(path: str | os.PathLike, layout: str | None = None) -> list[ShardFiles]:
    """The shards of a folder in numeric order, without reading them (kontrast's layout: finished units only)."""
    root = Path(path).expanduser()
    layout = _layout(root, layout)
    if layout == "kontrast":
        return _kontrast_units(root)
    found: dict[int, ShardFiles] = {}
    for part, folder in _CR_DIRS.items():
        sub = root / folder
        if not sub.is_dir():
            continue
        for entry in os.listdir(sub):
            m = _CR_RE[part].match(entry)
            if m:
                i = int(m.group(1))
                shard = found.setdefault(i, ShardFiles(name="", layout=layout))
                setattr(shard, part, sub / entry)
    out = []
    for i in sorted(found):
        shard = found[i]
        shard.name = (shard.image or shard.text or shard.meta).name
        out.append(shard)
    return out


def _kontrast_units(root: Path) -> list[ShardFiles]:
    manifest = read_manifest(root) or {}
    total = int(manifest.get("units_total", 0) or 0)
    done = sorted(int(m.group(1)) for m in map(_UNIT_RE.match, os.listdir(root)) if m)
    if total and len(done) < total:
        logger.warning("%s: %d of %d units are finished; reading those (rerun kontrast embed to finish the rest)",
                       root, len(done), total)
    text = bool(manifest.get("text"))
    out = []
    for i in done:
        stem = f"unit-{i:06d}"
        meta = root / f"{stem}.parquet"
        out.append(ShardFiles(name=f"{stem}.npy", layout="kontrast", image=root / f"{stem}.npy",
                              text=root / f"{stem}.text.npy" if text else None,
                              meta=meta if meta.is_file() else root / f"{stem}.csv"))
    return out


# ---------------------------------------------------------------------------------------------- reading
def _npy_shape(path: Path) -> tuple[int, ...]:
    """Shape from the ``.npy`` header alone."""
    return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)  # maps the file; reads only the header


def _load_npy(path: Path) -> np.ndarray:
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.ndim != 2:
        raise ValueError(f"shape {array.shape} is not [rows, dim]")
    if array.dtype not in (np.float16, np.float32, np.float64):
        raise ValueError(f"dtype {array.dtype} is not a float type")
    return array


def _clip_retrieval_meta(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    for row in rows:
        row.pop("__index_level_0__", None)  # a pandas index written as a column
    return rows


def _kontrast_meta(path: Path) -> list[dict[str, Any]]:
    from ..embed import _read_metadata

    out = []
    for r in _read_metadata(path):
        row = {"image_path": r["source"], "caption": r.get("caption"), "key": r.get("key"),
               "width": r.get("width"), "height": r.get("height")}
        for k, v in (r.get("meta") or {}).items():
            row.setdefault(k, v)
        out.append(row)
    return out


def read_shard(shard: ShardFiles, dim: int | None = None,
               skipped: list[SkippedPart] | None = None) -> EmbeddingShard | None:
    """Read one shard; None (logged, and appended to ``skipped``) when it cannot be used whole.

    ``dim``: the collection's dimension; a shard of another dimension is skipped. Rows with NaN or infinite
    values (in the image or the text embedding) are dropped and counted.
    """
    def skip(reason: str, rows: int = 0, whole: bool = True) -> None:
        logger.warning("%s %s: %s", "skipping" if whole else "reading", shard.name, reason)
        if skipped is not None:
            skipped.append(SkippedPart(shard.name, reason, rows, whole))

    arrays: dict[str, np.ndarray | None] = {"image": None, "text": None}
    for part in arrays:
        p = getattr(shard, part)
        if p is None:
            continue
        try:
            arrays[part] = _load_npy(p)
        except (OSError, ValueError, EOFError) as exc:
            skip(f"cannot read {p.name} ({exc})")
            return None
    image, text = arrays["image"], arrays["text"]
    n = len(image) if image is not None else len(text) if text is not None else 0
    if image is None and text is None:
        skip("no embeddings (metadata only)")
        return None
    if shard.meta is None or not shard.meta.is_file():
        skip("no metadata file", n)
        return None
    try:
        meta = _kontrast_meta(shard.meta) if shard.layout == "kontrast" else _clip_retrieval_meta(shard.meta)
    except Exception as exc:  # noqa: BLE001 - pyarrow/csv raise many types for a damaged file; the shard is skipped
        skip(f"cannot read {shard.meta.name} ({type(exc).__name__}: {exc})", n)
        return None
    counts = {"image": None if image is None else len(image), "text": None if text is None else len(text),
              "metadata": len(meta)}
    if len({c for c in counts.values() if c is not None}) != 1:
        skip("row counts differ (" + ", ".join(f"{k} {v}" for k, v in counts.items() if v is not None) + ")",
             max(c for c in counts.values() if c is not None))
        return None
    dims = {a.shape[1] for a in (image, text) if a is not None}
    if len(dims) != 1 or (dim is not None and dims != {dim}):
        skip(f"dimension {'/'.join(map(str, sorted(dims)))} is not the collection's {dim}", n)
        return None
    bad = np.zeros(n, bool)
    for a in (image, text):
        if a is not None:
            for start in range(0, n, 65536):  # chunks: a memmap is read once, in pieces
                bad[start:start + 65536] |= ~np.isfinite(a[start:start + 65536]).all(axis=1)
    if bad.any():
        keep = np.flatnonzero(~bad)
        skip(f"{int(bad.sum())} rows with NaN or infinite values dropped", int(bad.sum()), whole=False)
        image = None if image is None else np.asarray(image[keep])
        text = None if text is None else np.asarray(text[keep])
        meta = [meta[i] for i in keep.tolist()]
    return EmbeddingShard(shard.name, image, text, meta)


def collection_dim(path: str | os.PathLike, layout: str | None = None) -> int | None:
    """The embedding dimension of a folder: its manifest's, else the first readable ``.npy`` header's."""
    layout = _layout(path, layout)
    manifest = read_manifest(path)
    if manifest and manifest.get("dim"):
        return int(manifest["dim"])
    for shard in list_shards(path, layout):
        for p in (shard.image, shard.text):
            shape = _readable_shape(p)
            if shape is not None and len(shape) == 2:
                return int(shape[1])
    return None


def _readable_shape(path: Path | None) -> tuple[int, ...] | None:
    """The shape in an ``.npy`` header, or None for no file or an unreadable header."""
    if path is None:
        return None
    try:
        return _npy_shape(path)
    except (OSError, ValueError, EOFError):
        return None


def iter_embedding_shards(path: str | os.PathLike, layout: str | None = None, *,
                          skipped: list[SkippedPart] | None = None) -> Iterator[EmbeddingShard]:
    """Every usable shard of ``path`` in numeric order (see the module docstring for what is skipped)."""
    layout = _layout(path, layout)
    dim = collection_dim(path, layout)
    for shard in list_shards(path, layout):
        read = read_shard(shard, dim, skipped)
        if read is not None:
            yield read


def count_embeddings(path: str | os.PathLike, layout: str | None = None) -> int:
    """Rows in the folder's shards, from the ``.npy`` headers alone (unreadable headers count 0)."""
    total = 0
    for shard in list_shards(path, layout):
        total += count_embeddings_of(shard)
    return total


def count_embeddings_of(shard: ShardFiles) -> int:
    """Rows of one shard from its ``.npy`` header (0 when unreadable)."""
    shape = _readable_shape(shard.image or shard.text)
    return int(shape[0]) if shape else 0
