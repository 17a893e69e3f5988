"""Bounded image decoding for the server: how many decodes run at once, how many pixels one may produce,
and giving the memory back after a burst.

A small compressed file can declare a huge picture (a 280 KB PNG of 9400 x 9400 pixels decodes to 350 MB),
so the server must bound decoding itself, not only the upload size:

- ``max_concurrent`` decodes run at a time (a semaphore); other requests wait for a slot. The upload's
  bytes are read inside the slot too, so the request bodies in memory are bounded by the same number.
- ``max_pixels`` per decoded image, checked on the header before any pixel is decoded. A JPEG above it is
  decoded at 1/2, 1/4 or 1/8 scale (the decoder's DCT scaling, ``draft``) when that brings it under the
  cap; any other image above it is refused with an ``ImageError`` naming both numbers. The cap sits below
  Pillow's decompression-bomb limit, which still applies on top.
- After a burst (when the last slot is released and at least ``trim_after_pixels`` were decoded since the
  last time), glibc's ``malloc_trim(0)`` hands freed heap pages back to the system. Without it the freed
  pixel buffers stay in glibc's per-thread arenas: measured 4.9 GB held after 16 concurrent 9400 x 9400
  decodes; see ``tests/test_server_decode.py`` and the README's load test for the figures with it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from contextlib import contextmanager
from typing import Any, BinaryIO

from PIL import Image

from ..errors import ImageError

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 25_000_000  # 5000 x 5000; Pillow's bomb limit is 89,478,485
DEFAULT_MAX_CONCURRENT = 2


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


class DecodeGate:
    """Decode uploaded images at most ``max_concurrent`` at a time and at most ``max_pixels`` each.

    ``open(src)`` takes bytes, a binary file object (read inside the slot) or a path and returns a decoded
    PIL image in its own mode; it must be called inside ``with gate.slot():``, and the image should be
    used (preprocessed, thumbnailed) and dropped inside the same block.
    """

    def __init__(self, max_concurrent: int = DEFAULT_MAX_CONCURRENT, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 trim_after_pixels: int = 8_000_000) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
        self.max_concurrent, self.max_pixels = max_concurrent, max_pixels
        self.trim_after_pixels = trim_after_pixels
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self._active = 0
        self._decoded = 0  # pixels decoded since the last trim
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

    def open(self, src: bytes | bytearray | BinaryIO | str, name: str = "upload") -> Image.Image:
        """The decoded image (mode kept); ``ImageError`` for unreadable data or too many pixels."""
        from ..preprocess import load_image

        if hasattr(src, "read"):
            src.seek(0)
            src = src.read()
        if isinstance(src, (bytes, bytearray)) and not src:
            raise ImageError(f"cannot read image {name}: the file is empty")
        img = load_image(src, decode=False)  # header only; Pillow's bomb limit checked
        w, h = img.size
        if self.max_pixels is not None and w * h > self.max_pixels:
            scale = self._draft_scale(img)
            if scale is not None:  # Pillow picks the largest DCT scale s with w // size[0] >= s (and h)
                img.draft(img.mode, (max(1, w // scale), max(1, h // scale)))
            if img.size[0] * img.size[1] > self.max_pixels:
                img.close()
                raise ImageError(f"cannot read image {name}: {w}x{h} = {w * h} pixels is more than this server "
                                 f"accepts ({self.max_pixels}); send a smaller image (a JPEG is decoded at up to "
                                 "1/8 scale to fit)")
        img = load_image(img)  # decodes now (truncation checks)
        with self._lock:
            self._decoded += img.size[0] * img.size[1]
        return img

    def _draft_scale(self, img: Image.Image) -> int | None:
        """The smallest JPEG DCT scale (2, 4, 8) that brings ``img`` under ``max_pixels``; None if none does."""
        if img.format != "JPEG":
            return None
        w, h = img.size
        for s in (2, 4, 8):
            if ((w + s - 1) // s) * ((h + s - 1) // s) <= self.max_pixels:
                return s
        return None

