"""Bounded image decoding for the server: how many decodes run at once, how many pixels one may produce,
and giving the memory back after a burst.

A small compressed file can declare a huge picture (a 280 KB PNG of 9400 x 9400 pixels decodes to 350 MB),
so the server must bound decoding itself, not only the upload size:

- ``max_concurrent`` decodes of large images run at a time (a semaphore); other requests with large images
  wait for a slot. The upload is read lazily from its spooled file (Starlette keeps up to 1 MB of it in
  memory, the rest on disk) while it is decoded. Small images (``small_pixels``, 1 M by default) skip the
  queue: a burst of large uploads does not hold up the small ones, and they cost little memory each.
- ``max_pixels`` per decoded image, checked on the header before any pixel is decoded. A JPEG above it is
  decoded at 1/2, 1/4 or 1/8 scale (the decoder's DCT scaling, ``draft``) when that brings it under the
  cap; any other image above it is refused with an ``ImageError`` naming both numbers. The cap sits below
  Pillow's decompression-bomb limit, which still applies on top.
- Memory goes back to the system. glibc keeps freed memory in its per-thread arenas, and after the first
  large buffer is freed it raises its mmap threshold so that later pixel buffers (Pillow allocates them in
  16 MB blocks) come from those arenas too: the issue measured 4.9 GB held after a burst. ``kontrast serve``
  therefore calls ``return_large_allocations()`` (a fixed 1 MB ``M_MMAP_THRESHOLD``: large buffers are
  mmapped and unmapped when freed), and the gate calls ``malloc_trim(0)`` when the last slot of a burst is
  released. Measured in one process, 48 uploads (the README's burst set) through 16 threads, 2 slots:
  peak / after RSS above the 224 MB base were +1144 / +1004 MB with neither, +1094 / +16 MB with the trim
  alone, +312 / +95 MB trimming after every decode, and +212 / +24 MB with the fixed threshold (about the
  two decoded 24 M pixel images) at the same speed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from PIL import Image

from ..errors import ImageError

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 25_000_000  # 5000 x 5000; Pillow's bomb limit is 89,478,485
DEFAULT_MAX_CONCURRENT = 2
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def _malloc_trim() -> Any:
    """glibc's ``malloc_trim`` or None (musl, macOS, Windows: nothing to call)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def return_large_allocations(threshold: int = 1 << 20) -> bool:
    """Have glibc mmap every allocation of ``threshold`` bytes or more, and unmap it when freed (a fixed
    ``M_MMAP_THRESHOLD``, which also stops glibc raising the threshold after big frees). Process-wide: the
    server calls it at start. Returns False where there is no glibc ``mallopt``."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, int(threshold)))


class DecodeGate:
    """Decode uploaded images at most ``max_concurrent`` at a time and at most ``max_pixels`` each.

    ``with gate.decoded(src, name) as img:`` opens ``src`` (bytes, a binary file object read lazily, or a
    path), checks its header, decodes it and yields the PIL image (mode kept), closed on exit; use it
    inside the block. Images of at most ``small_pixels`` (a thumbnail-sized photo, a few MB decoded) skip
    the queue, so a burst of large uploads does not hold up small ones; larger ones take a slot.
    """

    def __init__(self, max_concurrent: int = DEFAULT_MAX_CONCURRENT, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 small_pixels: int = 1 << 20, trim_after_pixels: int = 8_000_000) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
        self.max_concurrent, self.max_pixels, self.small_pixels = max_concurrent, max_pixels, small_pixels
        self.trim_after_pixels = trim_after_pixels
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self._active = 0
        self._decoded = 0  # pixels decoded in slots since the last trim
        self._trim = _malloc_trim()
        self.trims = 0  # how often memory was handed back (for tests and /health)

    @contextmanager
    def slot(self):
        """Hold one of the ``max_concurrent`` decode slots."""
        self._slots.acquire()
        with self._lock:
            self._active += 1
        try:
            yield self
        finally:
            with self._lock:
                self._active -= 1
                trim = self._active == 0 and self._decoded >= self.trim_after_pixels
                if trim:
                    self._decoded = 0
            self._slots.release()
            if trim:
                self.release_memory()

    def release_memory(self) -> None:
        """Give freed heap memory back to the system (glibc only; a no-op elsewhere)."""
        if self._trim is not None:
            self._trim(0)
            self.trims += 1

    @contextmanager
    def decoded(self, src: bytes | bytearray | BinaryIO | str, name: str = "upload") -> Iterator[Image.Image]:
        """The decoded image (see the class docstring); ``ImageError`` for unreadable data or too many pixels."""
        from ..preprocess import load_image

        if hasattr(src, "seek"):
            src.seek(0)
        if isinstance(src, (bytes, bytearray)) and not src:
            raise ImageError(f"cannot read image {name}: the file is empty")
        img = load_image(src, decode=False)  # header only; Pillow's bomb limit checked
        try:
            w, h = img.size
            if self.max_pixels is not None and w * h > self.max_pixels:
                scale = self._draft_scale(img)
                if scale is not None:  # Pillow picks the largest DCT scale s with w // size[0] >= s (and h)
                    img.draft(img.mode, (max(1, w // scale), max(1, h // scale)))
                if img.size[0] * img.size[1] > self.max_pixels:
                    raise ImageError(f"cannot read image {name}: {w}x{h} = {w * h} pixels is more than this server "
                                     f"accepts ({self.max_pixels}); send a smaller image (a JPEG is decoded at up to "
                                     "1/8 scale to fit)")
            pixels = img.size[0] * img.size[1]
            with self.slot() if pixels > self.small_pixels else contextlib.nullcontext():
                load_image(img)  # decodes now (truncation checks)
                if pixels > self.small_pixels:
                    with self._lock:
                        self._decoded += pixels
                yield img
        finally:
            img.close()

    def _draft_scale(self, img: Image.Image) -> int | None:
        """The smallest JPEG DCT scale (2, 4, 8) that brings ``img`` under ``max_pixels``; None if none does."""
        if img.format != "JPEG":
            return None
        w, h = img.size
        for s in (2, 4, 8):
            if ((w + s - 1) // s) * ((h + s - 1) // s) <= self.max_pixels:
                return s
        return None
