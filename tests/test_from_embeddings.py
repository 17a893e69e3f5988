"""Indexes from existing embeddings (issue 16 part 2): reading kontrast's and clip-retrieval's layouts,
``kontrast embed --layout clip-retrieval`` and ``kontrast index --from-embeddings``."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kontrast.cli import main
from kontrast.errors import KontrastError
from kontrast.search.embedding_sources import (
    EmbeddingShard,
    count_embeddings,
    detect_layout,
    iter_embedding_shards,
)
from kontrast.search.index import SearchIndex

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


# ------------------------------------------------------------------------------- embed -> index round trips
N_IMAGES = 8


@pytest.fixture(scope="module")
def collection(data_dir, tmp_path_factory) -> Path:
    """A CSV of 8 emoji images with captions (filepath,caption), the images next to it."""
    src = data_dir / "emoji_sample"
    with open(src / "captions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:N_IMAGES]
    root = tmp_path_factory.mktemp("collection")
    for r in rows:
        shutil.copy2(src / r["filepath"], root / r["filepath"])
    with open(root / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "caption"])
        w.writerows([[str(root / r["filepath"]), r["caption"]] for r in rows])
    return root / "captions.csv"


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


QUERIES = [("a flag",), ("a keycap with a number",), ("a flag", "--captions")]


def _search(capsys, index: Path, *query: str, k: int = N_IMAGES) -> list[dict]:
    rc, out, err = _cli(capsys, "search", str(index), *query, "--json", "-k", str(k))
    assert rc == 0, err
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="module")
def direct_index(collection, tmp_path_factory) -> Path:
    """The reference: an index built from the images themselves."""
    folder = tmp_path_factory.mktemp("direct") / "index"
    assert main(["index", str(collection), "--index", str(folder), "--workers", "0", "--no-progress"]) == 0
    return folder


def _same_results(capsys, got_index: Path, ref_index: Path) -> None:
    for query in QUERIES:
        got, ref = _search(capsys, got_index, *query), _search(capsys, ref_index, *query)
        assert len(got) == len(ref) > 0
        for g, r in zip(got, ref, strict=True):
            assert (g["rank"], g["id"], g["path"], g["caption"], g["width"], g["height"]) == \
                   (r["rank"], r["id"], r["path"], r["caption"], r["width"], r["height"])
            assert abs(g["score"] - r["score"]) < 1e-3


def test_embed_layout_clip_retrieval_writes_clip_retrievals_files(collection, tmp_path, capsys):
    emb = tmp_path / "emb"
    rc, _, err = _cli(capsys, "embed", str(collection), "--out", str(emb), "--layout", "clip-retrieval", "--text",
                      "--no-progress")
    assert rc == 0, err
    assert sorted(p.relative_to(emb).as_posix() for p in emb.rglob("*") if p.parent != emb / "units") == [
        "img_emb", "img_emb/img_emb_0.npy", "manifest.json", "metadata", "metadata/metadata_0.parquet",
        "skipped.jsonl", "text_emb", "text_emb/text_emb_0.npy", "units"]
    image, text = np.load(emb / "img_emb" / "img_emb_0.npy"), np.load(emb / "text_emb" / "text_emb_0.npy")
    assert image.dtype == text.dtype == np.float16 and image.shape == text.shape and image.shape[0] == N_IMAGES
    np.testing.assert_allclose(np.linalg.norm(image.astype(np.float32), axis=1), 1, atol=2e-3)
    table = pq.read_table(emb / "metadata" / "metadata_0.parquet")
    assert table.column_names[:2] == ["image_path", "caption"]  # clip-retrieval's column names, first
    rows = table.to_pylist()
    with open(collection, newline="", encoding="utf-8") as f:
        want = [(r["filepath"], r["caption"]) for r in csv.DictReader(f)]
    assert [(r["image_path"], r["caption"]) for r in rows] == want
    # resumable like kontrast's layout: a rerun has nothing to do, another layout in the same folder is refused
    rc, _, err = _cli(capsys, "embed", str(collection), "--out", str(emb), "--layout", "clip-retrieval", "--text",
                      "--no-progress")
    assert rc == 0 and "nothing to do" in err
    rc, _, err = _cli(capsys, "embed", str(collection), "--out", str(emb), "--text", "--no-progress")
    assert rc == 2 and "--layout clip-retrieval" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("layout", ["clip-retrieval", "kontrast"])
def test_index_from_embeddings_equals_index_from_images(layout, collection, direct_index, fixtures_dir, tmp_path,
                                                        capsys):
    emb, index = tmp_path / "emb", tmp_path / "index"
    rc, _, err = _cli(capsys, "embed", str(collection), "--out", str(emb), "--layout", layout, "--text",
                      "--no-progress")
    assert rc == 0, err
    rc, out, err = _cli(capsys, "index", "--from-embeddings", str(emb), "--index", str(index), "--no-progress")
    assert rc == 0, err
    assert f"{N_IMAGES} items, {N_IMAGES} image vectors, {N_IMAGES} captions" in out
    _same_results(capsys, index, direct_index)
    # the model comes from the manifest: no --model needed to search, and a rerun has nothing to import
    assert SearchIndex(index).model_fingerprint == SearchIndex(direct_index).model_fingerprint
    rc, out, _ = _cli(capsys, "index", "--from-embeddings", str(emb), "--index", str(index), "--no-progress")
    assert rc == 0 and "0 shards imported, 1 unchanged" in out and "+0 rows" in out
    # a --model other than the recorded one is refused in one line, and so is a command with nothing to index
    other = fixtures_dir / "openai_vit.pt"
    rc, _, err = _cli(capsys, "index", "--from-embeddings", str(emb), "--index", str(tmp_path / "other"), "--model",
                      str(other), "--no-progress")
    assert rc == 2 and "was embedded with model" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _cli(capsys, "index", "--index", str(tmp_path / "other"))
    assert rc == 2 and "--from-embeddings" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ clip-retrieval folders made elsewhere
@pytest.fixture(scope="module")
def dim() -> int:
    import kontrast

    return int(kontrast.load("default")[0].embed_dim)


def _rows(index: Path) -> list[dict]:
    store = SearchIndex(index).store
    ids = [r[0] for r in store.db.execute("SELECT id FROM items ORDER BY id")]
    rows = store.rows(ids)
    return [rows[i] for i in ids]


def test_clip_retrieval_folder_imports_with_url_and_caption(dim, tmp_path, capsys):
    emb, index = tmp_path / "emb", tmp_path / "index"
    want = write_clip_retrieval(emb, [5, 4, 3], dim=dim)
    rc, _, err = _cli(capsys, "index", "--from-embeddings", str(emb), "--index", str(index), "--no-progress")
    assert rc == 2 and "--model" in err and len(err.strip().splitlines()) == 1  # its model is not recorded
    rc, out, err = _cli(capsys, "index", "--from-embeddings", str(emb), "--index", str(index), "--model", "default",
                        "--no-progress")
    assert rc == 0, err
    assert "3 shards imported" in out and "12 items, 12 image vectors, 12 captions" in out
    rows = _rows(index)
    assert [(r["path"], r["caption"], r["meta"]) for r in rows] == [
        (w["image_path"], w["caption"], {"url": w["url"], "similarity": w["similarity"]}) for w in want]
    # a text query ranks the stored vectors (renormalised float32) exactly as numpy does
    images = np.concatenate([np.load(emb / "img_emb" / f"img_emb_{i:02d}.npy") for i in range(3)]).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    hits = _search(capsys, index, "a red bicycle")
    import kontrast

    model, _, tokenizer = kontrast.load("default")
    query = model.encode_text(tokenizer(["a red bicycle"]), normalize=True).detach().numpy()[0]
    order = np.argsort(-(images @ query), kind="stable")
    assert [h["path"] for h in hits[:5]] == [want[i]["image_path"] for i in order[:5]]
    np.testing.assert_allclose([h["score"] for h in hits[:5]], (images @ query)[order[:5]], atol=1e-5)


def test_clip_retrieval_folder_of_another_dimension_is_refused(dim, tmp_path, capsys):
    emb, index = tmp_path / "emb", tmp_path / "index"
    write_clip_retrieval(emb, [3], dim=dim // 2)
    rc, _, err = _cli(capsys, "index", "--from-embeddings", str(emb), "--index", str(index), "--model", "default",
                      "--no-progress")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert f"dimension {dim // 2}" in err and str(dim) in err and str(emb) in err
    assert not (index / "index.sqlite").exists()
    rc, _, err = _cli(capsys, "index", "--from-embeddings", str(tmp_path), "--index", str(index), "--no-progress")
    assert rc == 2 and "neither" in err and len(err.strip().splitlines()) == 1


def test_broken_shard_is_skipped_with_a_count_and_read_again_once_repaired(dim, tmp_path, capsys):
    emb, index = tmp_path / "emb", tmp_path / "index"
    want = write_clip_retrieval(emb, [4, 4, 4], dim=dim)
    good_meta = (emb / "metadata" / "metadata_01.parquet").read_bytes()
    (emb / "metadata" / "metadata_01.parquet").write_bytes(b"PAR1 cut short")
    bad = np.load(emb / "img_emb" / "img_emb_02.npy")
    bad[1] = np.nan
    np.save(emb / "img_emb" / "img_emb_02.npy", bad)
    args = ("index", "--from-embeddings", str(emb), "--index", str(index), "--model", "default", "--no-progress")
    rc, out, err = _cli(capsys, *args)
    assert rc == 1 and "could not be read" in err  # the unreadable shard is not marked done
    assert "2 shards imported" in out and "1 skipped" in out and "+7 rows" in out and "5 rows skipped" in out
    assert [r["path"] for r in _rows(index)] == [w["image_path"] for w in want[:4] + want[8:9] + want[10:]]
    (emb / "metadata" / "metadata_01.parquet").write_bytes(good_meta)
    rc, out, err = _cli(capsys, *args)
    assert rc == 0, err
    assert "1 shards imported, 2 unchanged" in out and "+4 rows" in out
    assert sorted(r["path"] for r in _rows(index)) == sorted(w["image_path"] for i, w in enumerate(want) if i != 9)


def test_rerun_after_a_crash_skips_finished_shards(dim, tmp_path, capsys, monkeypatch):
    from kontrast.search import import_embeddings as imp

    emb, index = tmp_path / "emb", tmp_path / "index"
    want = write_clip_retrieval(emb, [3, 3, 3, 3], dim=dim)
    calls = {"n": 0}
    real = imp.to_blob

    def dies_in_the_third_shard(vector):
        calls["n"] += 1
        if calls["n"] == 2 * 6 + 3:  # image + text blob per row: shards 0 and 1 done, then 1.5 rows of shard 2
            raise RuntimeError("killed")
        return real(vector)

    monkeypatch.setattr(imp, "to_blob", dies_in_the_third_shard)
    args = ("index", "--from-embeddings", str(emb), "--index", str(index), "--model", "default", "--no-progress")
    with pytest.raises(RuntimeError, match="killed"):
        main(list(args))
    assert [r["path"] for r in _rows(index)] == [w["image_path"] for w in want[:6]]  # shard 2 rolled back whole
    monkeypatch.setattr(imp, "to_blob", real)
    rc, out, err = _cli(capsys, *args)
    assert rc == 0, err
    assert "2 shards imported, 2 unchanged" in out and "+6 rows" in out
    rows = _rows(index)
    assert [r["path"] for r in rows] == [w["image_path"] for w in want]
    assert len({r["id"] for r in rows}) == 12
    searcher_ids = {h["id"] for h in _search(capsys, index, "anything", k=50)}
    assert searcher_ids == {r["id"] for r in rows}  # FAISS holds each row once, no stale id
    # a shard rewritten in place is imported again; a shard removed from the folder takes its rows along
    rows3 = [{**w, "caption": w["caption"] + " (edited)"} for w in want[9:]]
    pq.write_table(pa.Table.from_pylist(rows3), emb / "metadata" / "metadata_03.parquet")
    for sub, name in (("img_emb", "img_emb_00.npy"), ("text_emb", "text_emb_00.npy"),
                      ("metadata", "metadata_00.parquet")):
        (emb / sub / name).unlink()
    rc, out, err = _cli(capsys, *args)
    assert rc == 0, err
    assert "1 shards imported, 2 unchanged" in out and "+3 rows, 6 removed" in out
    assert [(r["path"], r["caption"]) for r in _rows(index)] == \
           [(w["image_path"], w["caption"]) for w in want[3:9]] + [(w["image_path"], w["caption"]) for w in rows3]


# ------------------------------------------------------------------ clip-retrieval's own code on both sides
def _clip_retrieval_module(relative: str):
    """A module file of the installed clip-retrieval, loaded alone (its package __init__ imports Flask and torch
    models kontrast does not install)."""
    import importlib.util

    spec = importlib.util.find_spec("clip_retrieval")
    assert spec is not None, "clip-retrieval is a test dependency (.ci/run installs it --no-deps)"
    path = Path(spec.submodule_search_locations[0]) / relative
    module_spec = importlib.util.spec_from_file_location(f"_cr_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_folder_written_by_clip_retrievals_writer_imports(dim, tmp_path, capsys):
    """clip-retrieval's ``NumpyWriter`` (what ``clip-retrieval inference`` runs) writes; kontrast imports."""
    NumpyWriter = _clip_retrieval_module("clip_inference/writer.py").NumpyWriter

    emb, index = tmp_path / "emb", tmp_path / "index"
    rng = np.random.default_rng(3)
    want = []
    for partition in range(3):  # three partitions of 4 rows: files img_emb_0.npy ... (zero-padded to 1 digit)
        writer = NumpyWriter(partition_id=partition, output_folder=str(emb), enable_text=True, enable_image=True,
                             enable_metadata=True, output_partition_count=3)
        names = [f"/data/{partition}/{j}.jpg" for j in range(4)]
        texts = [f"photo {partition} {j}" for j in range(4)]
        metas = [json.dumps({"url": f"https://example.com/{partition}/{j}.jpg", "width": 640 + j}) for j in range(4)]
        writer({"image_embs": _unit(rng, 4, dim), "text_embs": _unit(rng, 4, dim), "image_filename": names,
                "text": texts, "metadata": metas})
        writer.flush()
        want += [(n, t, json.loads(m)) for n, t, m in zip(names, texts, metas, strict=True)]
    assert detect_layout(emb) == "clip-retrieval" and count_embeddings(emb) == 12
    rc, out, err = _cli(capsys, "index", "--from-embeddings", str(emb), "--index", str(index), "--model", "default",
                        "--no-progress")
    assert rc == 0, err
    assert "3 shards imported" in out and "12 items, 12 image vectors, 12 captions" in out
    rows = _rows(index)
    assert [(r["path"], r["caption"], r["width"], r["meta"]) for r in rows] == \
           [(n, t, m["width"], {"url": m["url"]}) for n, t, m in want]


def test_clip_retrieval_layout_reads_with_embedding_reader(collection, tmp_path, capsys):
    """``embedding_reader`` (what ``clip-retrieval index`` / autofaiss read embeddings with) reads our output."""
    from embedding_reader import EmbeddingReader

    emb = tmp_path / "emb"
    rc, _, err = _cli(capsys, "embed", str(collection), "--out", str(emb), "--layout", "clip-retrieval", "--text",
                      "--no-progress")
    assert rc == 0, err
    reader = EmbeddingReader(str(emb / "img_emb"), file_format="parquet_npy", metadata_folder=str(emb / "metadata"),
                             meta_columns=["image_path", "caption"])
    assert reader.count == N_IMAGES and reader.dimension == np.load(emb / "img_emb" / "img_emb_0.npy").shape[1]
    got, paths = [], []
    for vectors, meta in reader(batch_size=3, show_progress=False):
        got.append(vectors)
        paths += meta["image_path"].tolist()
    np.testing.assert_array_equal(np.concatenate(got), np.load(emb / "img_emb" / "img_emb_0.npy"))
    with open(collection, newline="", encoding="utf-8") as f:
        assert paths == [r["filepath"] for r in csv.DictReader(f)]


def test_sigkill_mid_import_then_rerun_finishes_without_duplicates(dim, tmp_path, capsys):
    """A real kill (SIGKILL while shards are being committed): the rerun imports only what is missing."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    emb, index = tmp_path / "emb", tmp_path / "index"
    want = write_clip_retrieval(emb, [800] * 12, dim=dim)
    args = ["index", "--from-embeddings", str(emb), "--index", str(index), "--model", "default", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kontrast", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    done_at_kill = 0
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if (index / "index.sqlite").is_file():
            try:
                db = sqlite3.connect(f"file:{index / 'index.sqlite'}?mode=ro", uri=True, timeout=1)
                done_at_kill = db.execute("SELECT COUNT(*) FROM shards").fetchone()[0]
                db.close()
            except sqlite3.OperationalError:  # tables not created yet
                done_at_kill = 0
            if done_at_kill >= 2:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the import ended before it could be killed: {proc.stderr.read()}"
    assert 2 <= done_at_kill < 12
    rc, out, err = _cli(capsys, *args)
    assert rc == 0, err
    imported, unchanged = (int(x) for x in re.search(r"(\d+) shards imported, (\d+) unchanged", out).groups())
    assert unchanged >= done_at_kill and imported + unchanged == 12
    rows = _rows(index)
    assert [r["path"] for r in rows] == [w["image_path"] for w in want]  # every row once, in shard order
    loaded = SearchIndex(index).ann("image")
    assert loaded.index.ntotal == len(want)
