"""``kontrast embed --layout clip-retrieval``: write a unit in the layout of ``clip-retrieval inference``.

::

    img_emb/img_emb_{i}.npy          image embeddings [n, D] (L2-normalised; float16 by default, as clip-retrieval)
    text_emb/text_emb_{i}.npy        caption embeddings [n, D], row-aligned (with --text; zero rows without caption)
    metadata/metadata_{i}.parquet    n rows: image_path, caption, key, width, height, then the record's metadata
                                     (url, ... from a webdataset's .json), one column per key
    manifest.json                    kontrast's manifest (model fingerprint and spec, ``"layout": "clip-retrieval"``)
    units/unit-000007.done.json      kontrast's resume markers and skipped lists (clip-retrieval's tools ignore them)

``{i}`` is the unit number zero-padded to the digits of the unit count, as clip-retrieval pads its partition
numbers (``int(log10(count)) + 1``), so a lexical sort of the file names is the numeric one. A unit whose every
record was skipped writes no files (clip-retrieval writes none for an empty batch). Every file is written to a
temporary name and moved into place, the marker last, as in kontrast's own layout.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import KontrastError

LAYOUTS = ("kontrast", "clip-retrieval")
FIXED_COLUMNS = ("image_path", "caption", "key", "width", "height")
_PARTS = (("img_emb", "img_emb"), ("text_emb", "text_emb"), ("metadata", "metadata"))


def require_pyarrow() -> None:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise KontrastError("--layout clip-retrieval writes parquet metadata and needs pyarrow: "
                            "pip install pyarrow") from None


def tag(index: int, units_total: int) -> str:
    """``index`` zero-padded like clip-retrieval's partition numbers (``7`` of 120 units -> ``"007"``)."""
    return str(index).zfill(int(math.log10(max(1, units_total))) + 1)


def unit_paths(out: Path, index: int, units_total: int) -> dict[str, Path]:
    t = tag(index, units_total)
    return {"image": out / "img_emb" / f"img_emb_{t}.npy", "text": out / "text_emb" / f"text_emb_{t}.npy",
            "meta": out / "metadata" / f"metadata_{t}.parquet"}


def stale_files(out: Path, index: int, units_total: int) -> list[Path]:
    """Temporary files a killed run left for this unit."""
    found: list[Path] = []
    for p in unit_paths(out, index, units_total).values():
        if p.parent.is_dir():
            found.extend(p.parent.glob(f"{p.name}.tmp-*"))
    return found


def _column(values: list[Any]) -> list[Any]:
    """Scalars as they are when they share one type; anything else as JSON text (one parquet type per column)."""
    kinds = {type(v) for v in values if v is not None}
    if len(kinds) <= 1 and not kinds & {dict, list, tuple}:
        return values
    if kinds <= {int, float}:
        return [None if v is None else float(v) for v in values]
    return [None if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
            for v in values]


def metadata_table(metas: Sequence[dict[str, Any]]):
    """A pyarrow table: one row per record, clip-retrieval's columns first, then the record's own metadata."""
    import pyarrow as pa

    rows = []
    for m in metas:
        row = {"image_path": m["source"], "caption": m.get("caption") or None, "key": m["key"],
               "width": int(m["width"]), "height": int(m["height"])}
        for k, v in (m.get("meta") or {}).items():
            if not k.startswith("_"):
                row.setdefault(str(k), v)
        rows.append(row)
    names = list(FIXED_COLUMNS) + sorted({k for r in rows for k in r} - set(FIXED_COLUMNS))
    columns = {name: _column([r.get(name) for r in rows]) for name in names}
    types = {"image_path": pa.string(), "caption": pa.string(), "key": pa.string(), "width": pa.int32(),
             "height": pa.int32()}
    arrays = [pa.array(columns[n], type=types.get(n)) for n in names]
    return pa.Table.from_arrays(arrays, names=names)


def write_unit(out: Path, index: int, units_total: int, result, dtype: np.dtype, text: bool, tmp) -> None:
    """Write one embedded unit (``pipeline`` result) as clip-retrieval's three files; nothing for an empty unit."""
    import pyarrow.parquet as pq

    if not result.metas:
        return
    paths = unit_paths(out, index, units_total)
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    arrays = [("image", result.image_embeddings)] + ([("text", result.text_embeddings)] if text else [])
    for part, array in arrays:
        t = tmp(paths[part])
        with open(t, "wb") as f:
            np.save(f, np.ascontiguousarray(array, dtype=dtype))
        os.replace(t, paths[part])
    t = tmp(paths["meta"])
    pq.write_table(metadata_table(result.metas), t)
    os.replace(t, paths["meta"])
