"""Indexes from existing embeddings (issue 16 part 2): reading kontrast's and clip-retrieval's layouts,
``kontrast embed --layout clip-retrieval`` and ``kontrast index --from-embeddings``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kontrast.errors import KontrastError
from kontrast.search.embedding_sources import (
    EmbeddingShard,
    count_embeddings,
    detect_layout,
    iter_embedding_shards,
)

DIM = 16


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def write_clip_retrieval(root: Path, sizes: list[int], dim: int = DIM, seed: int = 0, pad: int = 2) -> list[dict]:
    """A folder shaped like clip-retrieval inference output (no image files on disk); returns the metadata rows."""
    rng = np.random.default_rng(seed)
    for sub in ("img_emb", "text_emb", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rows_all = []
    for i, n in enumerate(sizes):
        tag = str(i).zfill(pad)
        np.save(root / "img_emb" / f"img_emb_{tag}.npy", _unit(rng, n, dim))
        np.save(root / "text_emb" / f"text_emb_{tag}.npy", _unit(rng, n, dim))
        rows = [{"image_path": f"/nonexistent/{i}/{j}.jpg", "caption": f"caption {i} {j}",
                 "url": f"https://example.com/{i}/{j}.jpg", "similarity": 0.25 + j / 100} for j in range(n)]
        pq.write_table(pa.Table.from_pylist(rows), root / "metadata" / f"metadata_{tag}.parquet")
        rows_all.extend(rows)
    return rows_all


# --------------------------------------------------------------------------------------------- the reader
def test_reader_clip_retrieval_layout_numeric_order_and_columns(tmp_path):
    # 11 shards, zero-padded: "img_emb_10" sorts before "img_emb_2" as text, not as numbers
    rows = write_clip_retrieval(tmp_path, [3] * 11, pad=1)
    assert detect_layout(tmp_path) == "clip-retrieval"
    assert count_embeddings(tmp_path) == 33
    shards = list(iter_embedding_shards(tmp_path))
    assert [s.name for s in shards] == [f"img_emb_{i}.npy" for i in range(11)]
    assert all(isinstance(s, EmbeddingShard) for s in shards)
    assert [m for s in shards for m in s.meta] == rows
    first = np.load(tmp_path / "img_emb" / "img_emb_0.npy")
    np.testing.assert_array_equal(shards[0].image, first)
    assert shards[0].image.dtype == np.float16 and shards[0].text.shape == (3, DIM)


def test_reader_skips_broken_shards_with_a_count(tmp_path, caplog):
    write_clip_retrieval(tmp_path, [4, 4, 4, 4, 4])
    np.save(tmp_path / "text_emb" / "text_emb_01.npy", _unit(np.random.default_rng(1), 3))  # 3 text rows, 4 images
    (tmp_path / "metadata" / "metadata_02.parquet").write_bytes(b"not a parquet file")
    bad = np.load(tmp_path / "img_emb" / "img_emb_03.npy")
    bad[2, 5] = np.nan
    np.save(tmp_path / "img_emb" / "img_emb_03.npy", bad)
    np.save(tmp_path / "img_emb" / "img_emb_04.npy", _unit(np.random.default_rng(2), 4, dim=DIM * 2))  # wrong dim
    skipped = []
    shards = list(iter_embedding_shards(tmp_path, skipped=skipped))
    assert [s.name for s in shards] == ["img_emb_00.npy", "img_emb_03.npy"]
    assert [m["image_path"] for m in shards[1].meta] == [f"/nonexistent/3/{j}.jpg" for j in (0, 1, 3)]
    assert shards[1].image.shape == (3, DIM) and shards[1].text.shape == (3, DIM)
    assert {s.name: s.rows for s in skipped} == {"img_emb_01.npy": 4, "img_emb_02.npy": 4, "img_emb_03.npy": 1,
                                                 "img_emb_04.npy": 4}
    assert "row counts differ" in caplog.text and "NaN" in caplog.text


def test_reader_refuses_a_folder_in_neither_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "a.npy").write_bytes(b"")
    with pytest.raises(KontrastError) as err:
        detect_layout(tmp_path / "stuff")
    assert str(tmp_path / "stuff") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(KontrastError, match="not a folder"):
        detect_layout(tmp_path / "missing")
