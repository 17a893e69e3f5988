"""Search index: build, query, incremental updates, duplicates, model refusal, forced types, recovery."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kontrast
from kontrast.errors import KontrastError
from kontrast.search import ann
from kontrast.search.build import update_index
from kontrast.search.index import ModelMismatchError, SearchIndex
from kontrast.search.query import Searcher


@pytest.fixture(scope="module")
def vit(fixtures_dir):
    path = str(fixtures_dir / "openai_vit.pt")
    model, preprocess, tokenizer = kontrast.load(path)
    return model, preprocess, tokenizer, path


@pytest.fixture(scope="module")
def sample(data_dir) -> Path:
    return data_dir / "emoji_sample"


def _build(folder, paths, vit, **kw):
    model, preprocess, tokenizer, spec = vit
    kw.setdefault("workers", 0)
    return update_index(folder, [str(p) for p in paths], model, preprocess, tokenizer, spec, **kw)


def _snapshot(folder) -> dict:
    """path -> (id, sha256, alias path, image vector, text vector), read from SQLite."""
    db = sqlite3.connect(Path(folder) / "index.sqlite")
    rows = db.execute("SELECT id, path, sha256, alias_of, image_vec, text_vec FROM items ORDER BY id").fetchall()
    paths = {r[0]: r[1] for r in rows}
    db.close()
    vec = lambda b: None if b is None else np.frombuffer(b, "<f4")
    return {r[1]: (r[0], r[2], paths.get(r[3]), vec(r[4]), vec(r[5])) for r in rows}


def _assert_consistent(folder) -> None:
    """FAISS ids and vectors equal the SQLite rows holding vectors (no stale ids, no duplicates)."""
    index = SearchIndex(folder)
    for name, column in (("image", "image_vec"), ("caption", "text_vec")):
        want = {r[0]: np.frombuffer(r[1], "<f4") for r in
                index.store.db.execute(f"SELECT id, {column} FROM items WHERE {column} IS NOT NULL")}
        loaded = index.ann(name)
        if not want:
            assert loaded is None
            continue
        ids = ann.index_ids(loaded.index)
        assert len(ids) == len(set(ids.tolist())), "duplicate ids in FAISS"
        assert sorted(ids.tolist()) == sorted(want)
        got = ann.reconstruct(loaded.index, ids)
        np.testing.assert_array_equal(got, np.stack([want[i] for i in ids.tolist()]))
    index.close()


def _copy_images(sample: Path, dest: Path, names: list[str]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(sample / name, dest / name)


def _names(sample: Path, n: int) -> list[str]:
    return sorted(p.name for p in sample.glob("*.png"))[:n]


def _solid(path: Path, color) -> None:
    Image.new("RGB", (40, 30), color).save(path)


# ------------------------------------------------------------------------------------------- build
def test_build_csv_and_query(tmp_path, vit, sample):
    stats = _build(tmp_path / "idx", [sample / "captions.csv"], vit, commit_every=64)
    assert (stats.added, stats.items, stats.vectors, len(stats.skipped)) == (200, 200, 200, 0)
    assert stats.index_types == {"image": "flat", "caption": "flat"}
    _assert_consistent(tmp_path / "idx")

    model, preprocess, tokenizer, spec = vit
    searcher = Searcher(SearchIndex(tmp_path / "idx"), model, preprocess, tokenizer, spec)
    query = sample / "google_0035-20e3.png"
    hits = searcher.search(image=str(query), k=5)
    assert hits[0].path == str(query) and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    assert hits[0].caption.startswith("an emoji of a keycap 5") and (hits[0].width, hits[0].height) == (64, 64)

    # text -> image scores are cosines between the text embedding and the stored image vectors
    hits = searcher.search(text="an emoji of a flag", k=200)
    assert len(hits) == 200 and len({h.id for h in hits}) == 200
    text = searcher.encode_text(["an emoji of a flag"])[0]
    vecs = searcher.index.store.vectors([hits[0].id, hits[-1].id], "image_vec", 64)
    assert hits[0].score == pytest.approx(float(vecs[hits[0].id] @ text), abs=1e-5)

    # captions: a caption text finds its own row first
    caption = hits[7].caption
    top = searcher.search(text=caption, k=1, captions=True)[0]
    assert top.caption == caption and top.score == pytest.approx(1.0, abs=1e-4)


def test_exclude_filter(tmp_path, vit, sample):
    _build(tmp_path / "idx", [sample / "captions.csv"], vit)
    model, preprocess, tokenizer, spec = vit
    searcher = Searcher(SearchIndex(tmp_path / "idx"), model, preprocess, tokenizer, spec)
    q, ex = "an emoji of a flag", "an emoji of a keycap"
    plain = searcher.search(text=q, k=200)
    kept = searcher.search(text=q, k=200, exclude=[ex])
    qv, ev = searcher.encode_text([q, ex])
    vecs = searcher.index.store.vectors([h.id for h in plain], "image_vec", 64)
    expected = [h.id for h in plain if vecs[h.id] @ ev <= vecs[h.id] @ qv]
    assert [h.id for h in kept] == expected and 0 < len(expected) < 200
    thr = searcher.search(text=q, k=200, exclude=[ex], exclude_threshold=0.0)
    assert [h.id for h in thr] == [h.id for h in plain if vecs[h.id] @ ev <= 0.0]
    with pytest.raises(KontrastError, match="exclude-threshold"):
        searcher.search(image=str(sample / "google_0035-20e3.png"), exclude=[ex])


# ------------------------------------------------------------------------------------- incremental
def test_incremental_add_modify_delete(tmp_path, vit, sample):
    photos = tmp_path / "photos"
    names = _names(sample, 8)
    _copy_images(sample, photos, names)
    first = _build(tmp_path / "idx", [photos], vit)
    assert (first.added, first.items) == (8, 8)
    before = _snapshot(tmp_path / "idx")

    (photos / names[0]).unlink()  # delete
    _solid(photos / names[1], (200, 30, 30))  # modify (new content)
    _copy_images(sample, photos / "sub", [_names(sample, 9)[8]])  # add, in a subfolder
    os.utime(photos / names[2])  # touch only: same content, new mtime
    second = _build(tmp_path / "idx", [photos], vit)
    assert (second.added, second.updated, second.removed, second.unchanged) == (1, 1, 1, 6)
    after = _snapshot(tmp_path / "idx")
    assert str(photos / names[0]) not in after
    changed = after[str(photos / names[1])]
    assert changed[0] == before[str(photos / names[1])][0]  # same row id, new vector
    assert not np.array_equal(changed[3], before[str(photos / names[1])][3])
    for name in names[2:]:
        assert np.array_equal(after[str(photos / name)][3], before[str(photos / name)][3])
    _assert_consistent(tmp_path / "idx")

    # equal (by path) to an index built in one go over the final folder
    _build(tmp_path / "fresh", [photos], vit)
    fresh = _snapshot(tmp_path / "fresh")
    assert sorted(fresh) == sorted(after)
    for path, row in fresh.items():
        assert row[1] == after[path][1]
        np.testing.assert_allclose(row[3], after[path][3], atol=1e-6)

    third = _build(tmp_path / "idx", [photos], vit)  # nothing changed: nothing read
    assert (third.added, third.updated, third.removed, third.unchanged) == (0, 0, 0, 8)


def test_duplicates_by_hash(tmp_path, vit, sample):
    photos = tmp_path / "photos"
    a = _names(sample, 1)[0]
    _copy_images(sample, photos, [a])
    shutil.copy(photos / a, photos / "copy_b.png")
    shutil.copy(photos / a, photos / "copy_c.png")
    stats = _build(tmp_path / "idx", [photos], vit)
    assert (stats.items, stats.vectors, stats.duplicates) == (3, 1, 2)
    snap = _snapshot(tmp_path / "idx")
    owner = str(photos / "copy_b.png")  # sorted file order: copy_b, copy_c, then the emoji name
    assert snap[owner][2] is None and snap[str(photos / "copy_c.png")][2] == owner
    assert snap[str(photos / a)][2] == owner and snap[str(photos / a)][3] is None

    model, preprocess, tokenizer, spec = vit
    searcher = Searcher(SearchIndex(tmp_path / "idx"), model, preprocess, tokenizer, spec)
    hits = searcher.search(image=str(photos / a), k=10)
    assert len(hits) == 1 and hits[0].path == owner
    assert sorted(hits[0].aliases) == sorted([str(photos / "copy_c.png"), str(photos / a)])

    (photos / "copy_b.png").unlink()  # the vector's owner goes: the first alias inherits the vector
    stats = _build(tmp_path / "idx", [photos], vit)
    assert (stats.removed, stats.items, stats.vectors) == (1, 2, 1)
    snap = _snapshot(tmp_path / "idx")
    heir = str(photos / "copy_c.png")
    assert snap[heir][2] is None and snap[heir][3] is not None and snap[str(photos / a)][2] == heir
    _assert_consistent(tmp_path / "idx")


def test_caption_change_reembeds_text(tmp_path, vit, sample):
    photos = tmp_path / "photos"
    name = _names(sample, 1)[0]
    _copy_images(sample, photos, [name])
    caption = photos / name.replace(".png", ".txt")
    caption.write_text("a red heart")
    _build(tmp_path / "idx", [photos], vit)
    t1 = _snapshot(tmp_path / "idx")[str(photos / name)][4]
    caption.write_text("a blue square")
    os.utime(photos / name, ns=(5, 5))  # the image's stat drives change detection
    stats = _build(tmp_path / "idx", [photos], vit)
    assert stats.updated == 1
    t2 = _snapshot(tmp_path / "idx")[str(photos / name)][4]
    assert t1 is not None and t2 is not None and not np.array_equal(t1, t2)
    _assert_consistent(tmp_path / "idx")


def test_bad_files_skipped_and_dropped(tmp_path, vit, sample):
    photos = tmp_path / "photos"
    names = _names(sample, 3)
    _copy_images(sample, photos, names)
    (photos / "broken.png").write_bytes(b"not a png")
    stats = _build(tmp_path / "idx", [photos], vit)
    assert stats.items == 3 and [Path(s.source).name for s in stats.skipped] == ["broken.png"]
    (photos / names[0]).write_bytes(b"\x89PNG truncated")  # a good file turns bad: its row goes
    stats = _build(tmp_path / "idx", [photos], vit)
    assert stats.items == 2 and stats.removed == 1
    _assert_consistent(tmp_path / "idx")


# ------------------------------------------------------------------------------------------- model
def test_wrong_model_refused(tmp_path, vit, sample, fixtures_dir, capsys):
    photos = tmp_path / "photos"
    _copy_images(sample, photos, _names(sample, 2))
    _build(tmp_path / "idx", [photos], vit)
    rn_path = str(fixtures_dir / "openai_rn.pt")
    rn, pre, tok = kontrast.load(rn_path)
    fp_vit, fp_rn = kontrast.fingerprint(vit[0]), kontrast.fingerprint(rn)
    with pytest.raises(ModelMismatchError) as err:
        update_index(tmp_path / "idx", [str(photos)], rn, pre, tok, rn_path, workers=0)
    assert fp_vit in str(err.value) and fp_rn in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelMismatchError):
        Searcher(SearchIndex(tmp_path / "idx"), rn, pre, tok, rn_path)

    from kontrast.cli import main

    assert main(["search", str(tmp_path / "idx"), "a cat", "--model", rn_path]) == 2
    err_line = capsys.readouterr().err.strip()
    assert err_line.count("\n") == 0 and fp_vit in err_line and fp_rn in err_line


# ------------------------------------------------------------------------------------- index types
@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_forced_index_type(tmp_path, vit, sample, kind):
    photos = tmp_path / "photos"
    names = _names(sample, 100)
    _copy_images(sample, photos, names)
    stats = _build(tmp_path / "idx", [photos], vit, index_type=kind, commit_every=40)
    assert stats.index_types["image"] == kind
    index = SearchIndex(tmp_path / "idx")
    params = index.ann("image").params
    assert params.kind == kind and params.tuned_recall is not None and params.tuned_recall >= ann.RECALL_TARGET
    _assert_consistent(tmp_path / "idx")
    for name in names[:3]:
        (photos / name).unlink()
    stats = _build(tmp_path / "idx", [photos], vit)  # keeps the forced type; HNSW rebuilds after deletions
    assert stats.removed == 3 and stats.index_types["image"] == kind
    _assert_consistent(tmp_path / "idx")
    stats = _build(tmp_path / "idx", [photos], vit, index_type="auto")
    assert stats.index_types["image"] == "flat"


# ---------------------------------------------------------------------------------------- recovery
def _stop_after(images: int):
    """A progress callback that interrupts the run once ``images`` images were embedded."""
    done = {"n": 0}

    def progress(n, total):
        done["n"] += n
        if done["n"] >= images:
            raise KeyboardInterrupt

    return progress


def test_interrupted_run_then_resume(tmp_path, vit, sample):
    """A run stopped mid-unit leaves the committed units; the next run completes it, equal to one go."""
    with pytest.raises(KeyboardInterrupt):  # units of 16: the first commits, the second is stopped
        _build(tmp_path / "idx", [sample / "captions.csv"], vit, commit_every=16, batch_size=8,
               progress=_stop_after(24))
    partial = _snapshot(tmp_path / "idx")
    assert len(partial) == 16
    assert not list((tmp_path / "idx").glob("*.faiss"))  # no FAISS file yet: rebuilt from SQLite on open
    _assert_consistent(tmp_path / "idx")

    _build(tmp_path / "idx", [sample / "captions.csv"], vit, commit_every=16, batch_size=8)
    _build(tmp_path / "one_go", [sample / "captions.csv"], vit, commit_every=16, batch_size=8)
    resumed, one_go = _snapshot(tmp_path / "idx"), _snapshot(tmp_path / "one_go")
    assert {p: r[0] for p, r in resumed.items()} == {p: r[0] for p, r in one_go.items()}
    for path, row in one_go.items():
        np.testing.assert_allclose(resumed[path][3], row[3], atol=1e-6)
        np.testing.assert_allclose(resumed[path][4], row[4], atol=1e-6)
    _assert_consistent(tmp_path / "idx")


def test_faiss_file_behind_caught_up_or_rebuilt(tmp_path, vit, sample, caplog):
    """FAISS files older than the database are brought up to date; corrupt or missing ones are rebuilt."""
    photos = tmp_path / "photos"
    names = _names(sample, 12)
    _copy_images(sample, photos, names[:8])
    _build(tmp_path / "idx", [photos], vit)
    faiss_files = sorted(p.name for p in (tmp_path / "idx").glob("*.faiss"))
    (photos / names[0]).unlink()
    _copy_images(sample, photos, names[8:])
    with pytest.raises(KeyboardInterrupt):  # deletion + first unit committed, FAISS files not rewritten
        _build(tmp_path / "idx", [photos], vit, commit_every=2, batch_size=2, progress=_stop_after(4))
    assert sorted(p.name for p in (tmp_path / "idx").glob("*.faiss")) == faiss_files
    assert len(_snapshot(tmp_path / "idx")) == 9
    with caplog.at_level("INFO", logger="kontrast.search.index"):
        _assert_consistent(tmp_path / "idx")
    assert "caught up" in caplog.text and "-1 +2" in caplog.text

    for p in (tmp_path / "idx").glob("image-*.faiss"):
        p.write_bytes(b"garbage")
    _assert_consistent(tmp_path / "idx")
    for p in (tmp_path / "idx").glob("image-*"):  # only files newer than the database (a writer raced us)
        p.rename(p.with_name("image-9999999999" + p.suffix))
    _assert_consistent(tmp_path / "idx")
    for p in (tmp_path / "idx").glob("*.faiss"):
        p.unlink()
    _assert_consistent(tmp_path / "idx")

    stats = _build(tmp_path / "idx", [photos], vit)
    assert (stats.added, stats.items) == (2, 11)
    _assert_consistent(tmp_path / "idx")


def test_cli_index_and_search_json(tmp_path, vit, sample, capsys):
    from kontrast.cli import main

    photos = tmp_path / "photos"
    _copy_images(sample, photos, _names(sample, 5))
    assert main(["index", str(photos), "--index", str(tmp_path / "idx"), "--model", vit[3], "--workers", "0",
                 "--no-progress"]) == 0
    assert "5 items" in capsys.readouterr().out
    query = photos / _names(sample, 5)[2]
    assert main(["search", str(tmp_path / "idx"), "--image", str(query), "-k", "3", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["rank"] for d in lines] == [1, 2, 3] and lines[0]["path"] == str(query)
    assert {"score", "width", "height", "caption"} <= set(lines[0])
    assert main(["search", str(tmp_path / "idx"), "a cat", "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["rank", "score", "path"] and len(out.splitlines()) == 3
    assert main(["search", str(tmp_path / "idx"), "a cat", "--captions"]) == 2  # folder without captions
    assert "no captions" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "missing"), "a cat"]) == 2


def test_shards(tmp_path, vit, sample):
    import tarfile

    with open(sample / "captions.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:6]

    def write_shard(path, items):
        with tarfile.open(path, "w") as tar:
            for i, row in items:
                for ext, data in (("png", (sample / row["filepath"]).read_bytes()), ("txt", row["caption"].encode())):
                    info = tarfile.TarInfo(f"{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, __import__("io").BytesIO(data))

    shard = tmp_path / "data-000.tar"
    write_shard(shard, list(enumerate(rows)))
    stats = _build(tmp_path / "idx", [shard], vit)
    assert (stats.added, stats.items, SearchIndex(tmp_path / "idx").store.count("text_vec")) == (6, 6, 6)
    assert next(iter(_snapshot(tmp_path / "idx"))).startswith(f"{shard}:0000.png")
    assert _build(tmp_path / "idx", [shard], vit).unchanged == 6  # unchanged shard: skipped
    write_shard(shard, list(enumerate(rows))[:4])
    os.utime(shard, ns=(7, 7))
    stats = _build(tmp_path / "idx", [shard], vit)
    assert (stats.removed, stats.unchanged, stats.items) == (2, 4, 4)
    _assert_consistent(tmp_path / "idx")
