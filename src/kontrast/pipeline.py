"""Batch embedding of collections: decoding and preprocessing in DataLoader workers, encoding in batches.

``embed_units`` walks a ``kontrast.data`` source unit by unit (a shard, or a chunk of files) and yields
one ``UnitResult`` per finished unit, so callers can write results unit by unit and resume after a
crash by skipping the units they already have. Bad images (an ``ImageError``: the item's own decode or I/O
failure) are skipped and reported, never fatal; any other exception is a bug and stops the job, so that
no caller mistakes it for a bad image (``search.build`` deletes the rows of images that became unreadable).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .data.sources import Record, Source
from .errors import ImageError


@dataclass
class Skipped:
    key: str
    source: str
    reason: str
    incomplete_unit: bool = False  # part of the unit (a damaged shard) could not be read: do not mark it done


@dataclass
class UnitResult:
    """Embeddings of one finished unit, in the unit's record order."""

    index: int  # position of the unit in the ``units`` list given to ``embed_units``
    unit: Any
    metas: list[dict[str, Any]]  # key, source, caption, width, height, meta
    image_embeddings: np.ndarray  # [n, D] float32
    text_embeddings: np.ndarray | None = None  # [n, D] float32 (rows of records without caption are zero)
    skipped: list[Skipped] = field(default_factory=list)
    caption_errors: list[Skipped] = field(default_factory=list)  # embedded without their unreadable caption

    @property
    def damaged(self) -> list[Skipped]:
        """What could not be read of the unit itself (a damaged shard); empty when it was read whole."""
        return [s for s in self.skipped if s.incomplete_unit]


@dataclass
class _Batch:
    unit_index: int
    pixels: torch.Tensor | None  # [B, 3, H, W]
    metas: list[dict[str, Any]]
    skipped: list[Skipped]
    unit_done: bool


def decode_record(record: Record, preprocess: Callable) -> tuple[torch.Tensor, dict[str, Any]]:
    """Preprocess one record's bytes; raises ``ImageError`` for a bad image."""
    from .preprocess import load_image

    if record.incomplete_unit:
        raise ImageError(record.error or f"cannot read all of {record.source}")
    if record.data is None:
        raise ImageError(f"cannot read image {record.source}: {record.error or 'no data'}")
    image = load_image(io.BytesIO(record.data) if not isinstance(record.data, (bytes, bytearray)) else record.data)
    width, height = image.size
    pixels = preprocess(image)
    meta = {"key": record.key, "source": record.source, "caption": record.caption, "width": width, "height": height,
            "meta": record.meta}
    if record.caption_error:
        meta["caption_error"] = record.caption_error
    return pixels, meta


class _UnitDataset(IterableDataset):
    """Yields within-unit batches; each worker takes every ``num_workers``-th unit."""

    def __init__(self, source: Source, units: Sequence[Any], preprocess: Callable, batch_size: int) -> None:
        self.source, self.units, self.preprocess, self.batch_size = source, list(units), preprocess, batch_size

    def __iter__(self) -> Iterator[_Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for index in range(worker, len(self.units), workers):
            pixels: list[torch.Tensor] = []
            metas: list[dict[str, Any]] = []
            skipped: list[Skipped] = []
            for record in self.source.iter_unit(self.units[index]):
                try:
                    x, meta = decode_record(record, self.preprocess)
                except ImageError as exc:  # the item's own decode / I/O error; anything else is a bug: it stops the job
                    skipped.append(Skipped(record.key, record.source, str(exc), record.incomplete_unit))
                    continue
                pixels.append(x)
                metas.append(meta)
                if len(pixels) == self.batch_size:
                    yield _Batch(index, torch.stack(pixels), metas, skipped, False)
                    pixels, metas, skipped = [], [], []
            yield _Batch(index, torch.stack(pixels) if pixels else None, metas, skipped, True)


@torch.no_grad()
def embed_units(
    model: torch.nn.Module,
    preprocess: Callable,
    source: Source,
    units: Sequence[Any] | None = None,
    batch_size: int = 64,
    workers: int = 0,
    tokenizer: Callable | None = None,
    normalize: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Iterator[UnitResult]:
    """Embed every record of ``units`` (default: all of the source's units), one ``UnitResult`` per unit.

    With ``tokenizer`` given, captions are embedded too. ``progress(n)`` is called with the number of
    images (embedded or skipped) after each batch. Units finish in any order when ``workers > 1``.
    """
    units = list(source.units() if units is None else units)
    dataset = _UnitDataset(source, units, preprocess, batch_size)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=False,
                        prefetch_factor=4 if workers else None)
    device = next(model.parameters()).device
    dtype = next(model.visual.parameters()).dtype
    pending: dict[int, dict[str, list]] = {}
    for batch in loader:
        state = pending.setdefault(batch.unit_index, {"metas": [], "img": [], "txt": [], "skipped": [], "captions": []})
        state["skipped"].extend(batch.skipped)
        state["captions"].extend(Skipped(m["key"], m["source"], m["caption_error"]) for m in batch.metas
                                 if m.get("caption_error"))
        if batch.pixels is not None:
            feats = model.encode_image(batch.pixels.to(device=device, dtype=dtype), normalize=normalize)
            state["img"].append(feats.float().cpu().numpy())
            state["metas"].extend(batch.metas)
            if tokenizer is not None:
                state["txt"].append(_embed_captions(model, tokenizer, batch.metas, normalize, device))
        if progress is not None:
            progress(len(batch.metas) + len(batch.skipped))
        if batch.unit_done:
            state = pending.pop(batch.unit_index)
            dim = model.embed_dim
            img = np.concatenate(state["img"]) if state["img"] else np.zeros((0, dim), np.float32)
            txt = None
            if tokenizer is not None:
                txt = np.concatenate(state["txt"]) if state["txt"] else np.zeros((0, dim), np.float32)
            yield UnitResult(batch.unit_index, units[batch.unit_index], state["metas"], img, txt, state["skipped"],
                             state["captions"])


def _embed_captions(model, tokenizer, metas, normalize: bool, device) -> np.ndarray:
    out = np.zeros((len(metas), model.embed_dim), np.float32)
    rows = [i for i, m in enumerate(metas) if m.get("caption")]
    if rows:
        ids = tokenizer([metas[i]["caption"] for i in rows]).to(device)
        out[rows] = model.encode_text(ids, normalize=normalize).float().cpu().numpy()
    return out


def embed_all(model, preprocess, source: Source, **kwargs) -> tuple[np.ndarray, list[dict[str, Any]], list[Skipped]]:
    """Every record's embedding in source order: ``(embeddings [N, D], metas, skipped)``."""
    results = sorted(embed_units(model, preprocess, source, **kwargs), key=lambda r: r.index)
    dim = model.embed_dim
    emb = np.concatenate([r.image_embeddings for r in results]) if results else np.zeros((0, dim), np.float32)
    metas = [m for r in results for m in r.metas]
    skipped = [s for r in results for s in r.skipped]
    return emb, metas, skipped
