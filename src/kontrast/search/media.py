"""Reading indexed images back for the server: original bytes (verified by sha256) and cached thumbnails.

Only rows of the index are ever read, looked up by their integer id; the path comes from the database,
never from the client. The bytes must still hash to the sha256 recorded at indexing time, so a file
replaced after indexing (or a symlink re-pointed elsewhere) is refused instead of served.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import tarfile
import threading
from collections import OrderedDict
from typing import Any

from PIL import Image, ImageOps

from ..data.sources import open_tar
from ..errors import ImageError, KontrastError
from .decode import DecodeGate

THUMB_SIZES = (64, 128, 256, 512)
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp",
               "TIFF": "image/tiff"}


class StaleItemError(KontrastError):
    """The indexed file is gone or no longer has the indexed content."""


class LRUBytes:
    """A thread-safe LRU cache of byte strings bounded by their total size."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[Any, tuple[bytes, str]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: Any) -> tuple[bytes, str] | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Any, value: tuple[bytes, str]) -> None:
        if len(value[0]) > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._size -= len(old[0])
            self._data[key] = value
            self._size += len(value[0])
            while self._size > self.max_bytes:
                _, (data, _) = self._data.popitem(last=False)
                self._size -= len(data)

    def __len__(self) -> int:
        return len(self._data)


class _ShardMembers:
    """Member name -> (data offset, size) of uncompressed tar shards, a few shards cached."""

    def __init__(self, max_shards: int = 8) -> None:
        self._maps: OrderedDict[str, dict[str, tuple[int, int]]] = OrderedDict()
        self._max = max_shards
        self._lock = threading.Lock()

    def read(self, shard: str, member: str) -> bytes:
        with self._lock:
            members = self._maps.get(shard)
            if members is not None:
                self._maps.move_to_end(shard)
        if members is None:
            if shard.endswith((".gz", ".tgz")):  # no random access: scan
                with tarfile.open(shard, "r:*") as tar:
                    fh = tar.extractfile(member)
                    if fh is None:
                        raise FileNotFoundError(member)
                    return fh.read()
            with open_tar(shard, stream=False) as tar:  # past a corrupt header too, as the indexer read it
                members = {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}
            with self._lock:
                self._maps[shard] = members
                while len(self._maps) > self._max:
                    self._maps.popitem(last=False)
        if member not in members:
            raise FileNotFoundError(member)
        offset, size = members[member]
        with open(shard, "rb") as f:
            f.seek(offset)
            return f.read(size)


class MediaReader:
    """Original bytes and thumbnails of indexed rows (a row is a dict from ``Store.rows``)."""

    def __init__(self, cache_bytes: int = 64 * 1024 * 1024, gate: DecodeGate | None = None,
                 index_folder: str = "INDEX") -> None:
        self.thumbs = LRUBytes(cache_bytes)
        self._shards = _ShardMembers()
        self.gate = gate  # bounds concurrent thumbnail decodes (not their size: these are the indexed files)
        self.index_folder = index_folder

    def _reindex_hint(self, row: dict[str, Any]) -> str:
        where = row["path"].rsplit(":", 1)[0] if row["kind"] == "webdataset" else row["origin"]
        return f"re-run: kontrast index {where} --index {self.index_folder} --verify"

    def original(self, row: dict[str, Any]) -> tuple[bytes, str]:
        """``(bytes, media type)`` of the indexed image; ``StaleItemError`` when gone or changed."""
        path = row["path"]
        try:
            if row["kind"] == "webdataset":
                shard, member = path.rsplit(":", 1)
                data = self._shards.read(shard, member)
            else:
                with open(path, "rb") as f:
                    data = f.read()
        except (OSError, tarfile.TarError) as exc:
            raise StaleItemError(f"item {row['id']} is no longer readable ({type(exc).__name__}); "
                                 f"{self._reindex_hint(row)}") from None
        if hashlib.sha256(data).hexdigest() != row["sha256"]:
            raise StaleItemError(f"item {row['id']} changed since it was indexed (its size and time may look the "
                                 f"same: --verify re-hashes the files); {self._reindex_hint(row)}")
        try:
            fmt = Image.open(io.BytesIO(data)).format
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            raise StaleItemError(f"item {row['id']} is not a readable image any more; {self._reindex_hint(row)}") \
                from None
        return data, MEDIA_TYPES.get(fmt or "", "application/octet-stream")

    def thumbnail(self, row: dict[str, Any], size: int = 256) -> tuple[bytes, str]:
        """A JPEG (PNG when transparent) at most ``size`` pixels on its longer side, cached by (id, sha, size)."""
        from ..preprocess import load_image

        if size not in THUMB_SIZES:
            raise KontrastError(f"thumbnail size {size} is not one of {THUMB_SIZES}")
        key = (row["id"], row["sha256"], size)
        hit = self.thumbs.get(key)
        if hit is not None:
            return hit
        data, _ = self.original(row)
        with self.gate.slot() if self.gate is not None else contextlib.nullcontext():
            try:
                img = load_image(data, decode=False)
                if img.format == "JPEG":
                    img.draft("RGB", (size * 2, size * 2))  # decode large JPEGs at 1/2..1/8 scale: much faster
                img = load_image(img)  # decodes now (size limit and truncation checks)
            except ImageError as exc:
                raise StaleItemError(str(exc)) from None
            img = ImageOps.exif_transpose(img)
            img.thumbnail((size, size), Image.BICUBIC)
        out = io.BytesIO()
        transparent = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
        if transparent:
            img.convert("RGBA").save(out, format="PNG", optimize=True)
            value = (out.getvalue(), "image/png")
        else:
            img.convert("RGB").save(out, format="JPEG", quality=85)
            value = (out.getvalue(), "image/jpeg")
        self.thumbs.put(key, value)
        return value
