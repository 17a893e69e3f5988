"""What a careless user (or a damaged disk) did to `kontrast index` / `kontrast embed` (issue 12, issue 11
item 4), each answered: corrupt tar headers are reported and not marked done, captions that are not UTF-8
are counted, caption-only edits and same-size swaps are found (``--verify``), symlinks do not lead out of
the indexed folder, a bug stops the job instead of deleting rows, and bad ``--index`` / CSV / index files
get one line and exit status 2. All inputs are made here."""

from __future__ import annotations

import io
import os
import sqlite3
import tarfile
from pathlib import Path

import pytest
from PIL import Image

import kontrast
from kontrast import embed as E
from kontrast.cli import main
from kontrast.search.build import update_index
from kontrast.search.index import SearchIndex


@pytest.fixture(scope="module")
def vit(fixtures_dir):
    path = str(fixtures_dir / "openai_vit.pt")
    model, preprocess, tokenizer = kontrast.load(path)
    return model, preprocess, tokenizer, path


def _build(folder, paths, vit, **kw):
    model, preprocess, tokenizer, spec = vit
    kw.setdefault("workers", 0)
    return update_index(folder, [str(p) for p in paths], model, preprocess, tokenizer, spec, **kw)


def _image(color, size=(24, 16), fmt="PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


def _color(i: int) -> tuple[int, int, int]:
    return (i * 37 % 256, i * 91 % 256, i * 53 % 256)


def _rows(folder) -> dict[str, tuple]:
    db = sqlite3.connect(Path(folder) / "index.sqlite")
    rows = {r[0]: r[1:] for r in db.execute("SELECT path, caption, sha256, text_vec FROM items")}
    db.close()
    return rows


# --------------------------------------------------------------------------------- 4: damaged shards
def _shard(path: Path, n: int = 100) -> dict[str, int]:
    """A webdataset shard of ``n`` (png, txt) samples; returns member name -> header offset."""
    offsets = {}
    with open(path, "wb") as f, tarfile.open(fileobj=f, mode="w") as tar:
        for i in range(n):
            for ext, data in (("png", _image(_color(i))), ("txt", f"sample number {i}".encode())):
                info = tarfile.TarInfo(f"{i:04d}.{ext}")
                info.size = len(data)
                offsets[info.name] = f.tell()
                tar.addfile(info, io.BytesIO(data))
    return offsets


def _corrupt_header(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset + 148: offset + 156] = b"XXXXXXXX"  # the header checksum no longer matches
    path.write_bytes(bytes(raw))


def test_corrupt_tar_header_reported_not_marked_done(tmp_path, vit, capsys):
    shard = tmp_path / "data-000.tar"
    offsets = _shard(shard)
    assert _build(tmp_path / "idx", [shard], vit).items == 100
    _corrupt_header(shard, offsets["0050.png"])
    os.utime(shard, ns=(10**18, 10**18))
    stats = _build(tmp_path / "idx", [shard], vit)
    assert stats.items == 100  # before: 50 rows deleted ("not in the shard any more"), exit 0, "0 skipped"
    assert len(stats.damaged) == 1 and f"corrupt tar header at byte {offsets['0050.png']}" in stats.damaged[0].reason
    db = sqlite3.connect(tmp_path / "idx" / "index.sqlite")
    assert db.execute("SELECT COUNT(*) FROM shards").fetchone()[0] == 0  # not recorded as finished
    db.close()
    again = _build(tmp_path / "idx", [shard], vit)
    assert again.unchanged < 100 and len(again.damaged) == 1  # read again, not skipped as done

    fresh = _build(tmp_path / "fresh", [shard], vit)  # a new index gets every sample it can read
    assert fresh.items == 99 and [s.key for s in fresh.skipped] == ["data-000.tar/0050"]

    assert main(["index", str(shard), "--index", str(tmp_path / "cli"), "--model", vit[3], "--workers", "0",
                 "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "99 items" in captured.out and "corrupt tar header at byte" in captured.err
    assert "not marked done" in captured.err


def test_shard_cut_short_reported(tmp_path, vit):
    shard = tmp_path / "data-000.tar"
    offsets = _shard(shard, 20)
    shard.write_bytes(shard.read_bytes()[: offsets["0012.png"]])  # cut at a member boundary: no end blocks
    stats = _build(tmp_path / "idx", [shard], vit)
    assert stats.items == 12 and len(stats.damaged) == 1 and "end-of-archive" in stats.damaged[0].reason


def test_embed_damaged_shard_not_done(tmp_path, vit):
    model, preprocess, _, _ = vit
    good, bad = tmp_path / "part-000.tar", tmp_path / "part-001.tar"
    _shard(good, 10)
    _corrupt_header(bad, _shard(bad, 10)["0004.png"])
    report = E.embed_collection(model, preprocess, [str(good), str(bad)], tmp_path / "out")
    assert not report.complete and report.units_done == 1
    assert len(report.damaged) == 1 and "corrupt tar header" in report.damaged[0]["reason"]
    assert not (tmp_path / "out" / "unit-000001.done.json").exists()
    assert E.load_manifest(tmp_path / "out")["status"] == "incomplete"


# ------------------------------------------------------------------------------ 5: captions not UTF-8
def test_caption_not_utf8_is_counted(tmp_path, vit):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        (photos / f"img{i}.png").write_bytes(_image(_color(i)))
        (photos / f"img{i}.txt").write_text(f"a picture number {i}")
    (photos / "img2.txt").write_bytes("une légende en latin-1".encode("latin-1"))
    stats = _build(tmp_path / "idx", [photos], vit)
    assert stats.items == 4 and len(stats.skipped) == 0
    assert len(stats.caption_errors) == 1 and "not UTF-8" in stats.caption_errors[0].reason
    rows = _rows(tmp_path / "idx")
    assert rows[str(photos / "img2.png")][0] is None and rows[str(photos / "img1.png")][0] == "a picture number 1"

    model, preprocess, tokenizer, _ = vit
    report = E.embed_collection(model, preprocess, photos, tmp_path / "emb", tokenizer=tokenizer)
    assert report.complete and report.rows == 4 and report.captions_skipped == 1
    assert E.load_manifest(tmp_path / "emb")["captions_skipped"] == 1
    assert any(item.get("part") == "caption" for item in report.skipped_items)

    tar = tmp_path / "s.tar"
    with tarfile.open(tar, "w") as t:
        for name, data in (("a.png", _image((1, 2, 3))), ("a.txt", b"\xff\xfe\x00broken")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    stats = _build(tmp_path / "idx2", [tar], vit)
    assert stats.items == 1 and len(stats.caption_errors) == 1


# ------------------------------------------------------------------------ 7: caption edits, --verify
def test_caption_only_edit_reindexed(tmp_path, vit):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(_image((200, 10, 10)))
    (photos / "a.txt").write_text("a red square")
    _build(tmp_path / "idx", [photos], vit)
    t1 = _rows(tmp_path / "idx")[str(photos / "a.png")][2]
    (photos / "a.txt").write_text("a small red square")  # the image is untouched
    stats = _build(tmp_path / "idx", [photos], vit)
    assert stats.updated == 1
    caption, _, t2 = _rows(tmp_path / "idx")[str(photos / "a.png")]
    assert caption == "a small red square" and t2 != t1

    csv_path = tmp_path / "list.csv"
    csv_path.write_text(f"filepath,caption\n{photos / 'a.png'},first words\n")
    _build(tmp_path / "idx_csv", [csv_path], vit)
    csv_path.write_text(f"filepath,caption\n{photos / 'a.png'},other words\n")
    assert _build(tmp_path / "idx_csv", [csv_path], vit).updated == 1


def test_same_size_swap_found_by_verify(tmp_path, vit):
    from fastapi.testclient import TestClient

    from kontrast.search.query import Searcher
    from kontrast.search.server import create_app

    photos = tmp_path / "photos"
    photos.mkdir()
    target = photos / "a.bmp"
    target.write_bytes(_image((10, 10, 200), fmt="BMP"))
    (photos / "a.txt").write_text("blue")
    (photos / "b.bmp").write_bytes(_image((10, 200, 10), fmt="BMP"))
    _build(tmp_path / "idx", [photos], vit)
    st, cst = target.stat(), (photos / "a.txt").stat()
    swapped = _image((250, 250, 0), fmt="BMP")
    assert len(swapped) == st.st_size
    target.write_bytes(swapped)
    (photos / "a.txt").write_text("gold")  # same size too
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(photos / "a.txt", ns=(cst.st_atime_ns, cst.st_mtime_ns))
    assert _build(tmp_path / "idx", [photos], vit).unchanged == 2  # size and mtime look the same

    row_id = SearchIndex(tmp_path / "idx").store.db.execute("SELECT id FROM items WHERE path = ?",
                                                            (str(target),)).fetchone()[0]
    with TestClient(create_app(Searcher.open(str(tmp_path / "idx"))), base_url="http://127.0.0.1") as c:
        r = c.get(f"/image/{row_id}")
        assert r.status_code == 410 and "--verify" in r.json()["detail"] and str(photos) in r.json()["detail"]
    stats = _build(tmp_path / "idx", [photos], vit, verify=True)
    assert (stats.updated, stats.unchanged) == (1, 1)
    assert _rows(tmp_path / "idx")[str(target)][0] == "gold"
    with TestClient(create_app(Searcher.open(str(tmp_path / "idx"))), base_url="http://127.0.0.1") as c:
        assert c.get(f"/image/{row_id}").content == swapped


# ---------------------------------------------------------------------------------------- 8: symlinks
def test_symlinks_out_of_the_folder_not_followed(tmp_path, vit):
    from fastapi.testclient import TestClient

    from kontrast.search.query import Searcher
    from kontrast.search.server import create_app

    secret_dir = tmp_path / "private"
    secret_dir.mkdir()
    (secret_dir / "passwd").write_text("root:x:0:0:secret")
    (secret_dir / "private.png").write_bytes(_image((1, 2, 3)))
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "ok.png").write_bytes(_image((100, 100, 100)))
    (photos / "leak.png").write_bytes(_image((90, 10, 10)))
    (photos / "leak.txt").symlink_to(secret_dir / "passwd")
    (photos / "outside.png").symlink_to(secret_dir / "private.png")
    (photos / "inside.png").symlink_to(photos / "ok.png")  # a link within the folder is fine
    (photos / "linked").symlink_to(secret_dir, target_is_directory=True)

    stats = _build(tmp_path / "idx", [photos], vit)
    rows = _rows(tmp_path / "idx")
    assert sorted(Path(p).name for p in rows) == ["inside.png", "leak.png", "ok.png"]
    assert all("root:" not in (r[0] or "") for r in rows.values())
    assert [Path(s.source).name for s in stats.skipped] == ["outside.png"]
    assert "--follow-symlinks" in stats.skipped[0].reason
    assert len(stats.caption_errors) == 1 and "symlink" in stats.caption_errors[0].reason
    with TestClient(create_app(Searcher.open(str(tmp_path / "idx"))), base_url="http://127.0.0.1") as c:
        for row_id in range(1, 8):
            assert b"root:" not in c.get(f"/image/{row_id}").content
        hits = c.get("/search", params={"q": "root", "k": 10, "captions": "true"})
        assert b"root:" not in hits.content

    followed = _build(tmp_path / "idx2", [photos], vit, follow_symlinks=True)
    rows = _rows(tmp_path / "idx2")
    assert {Path(p).name for p in rows} >= {"outside.png", "private.png", "leak.png"}
    assert rows[str(photos / "leak.png")][0] == "root:x:0:0:secret" and not followed.skipped


# ---------------------------------------------------------------- issue 11 item 4: bugs stop the job
def test_programming_error_stops_the_job_and_keeps_rows(tmp_path, vit, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"img{i}.png").write_bytes(_image(_color(i)))
    _build(tmp_path / "idx", [photos], vit)
    (photos / "img1.png").write_bytes(_image((0, 0, 0)))  # changed: it is read again

    import kontrast.preprocess as pre

    def broken(img):
        raise TypeError("a bug in the transform")

    monkeypatch.setattr(pre, "_rgb_array", broken)
    with pytest.raises(TypeError, match="a bug in the transform"):
        _build(tmp_path / "idx", [photos], vit)
    assert sorted(Path(p).name for p in _rows(tmp_path / "idx")) == ["img0.png", "img1.png", "img2.png"]
    model, preprocess, _, _ = vit
    with pytest.raises(TypeError):
        E.embed_collection(model, preprocess, photos, tmp_path / "emb")
    monkeypatch.undo()
    stats = _build(tmp_path / "idx", [photos], vit)  # fixed: the run finishes the work
    assert (stats.updated, stats.items, len(stats.skipped)) == (1, 3, 0)


# --------------------------------------------------------------------- 9 and issue 11: one-line errors
def test_index_cli_user_errors(tmp_path, vit, monkeypatch, capsys):
    import kontrast.commands.index as index_cmd

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(_image((1, 2, 3)))
    a_file = tmp_path / "not_a_folder"
    a_file.write_text("x")
    args = ["--workers", "0", "--no-progress"]
    assert main(["index", str(photos), "--index", str(a_file), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is a file" in err and str(a_file) in err

    broken = tmp_path / "broken_index"
    broken.mkdir()
    (broken / "index.sqlite").write_bytes(b"this is not a database" * 100)

    def no_fallback(*a, **k):
        raise AssertionError("must not fall back to the default model")

    monkeypatch.setattr(index_cmd, "load_model", no_fallback)
    assert main(["index", str(photos), "--index", str(broken), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "index.sqlite" in err and "rebuild" in err

    monkeypatch.undo()
    bad_csv = tmp_path / "list.csv"
    bad_csv.write_bytes("filepath,caption\na.png,caf\xe9\n".encode("latin-1"))
    assert main(["index", str(bad_csv), "--index", str(tmp_path / "idx"), "--model", vit[3], *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not UTF-8" in err and str(bad_csv) in err
    assert main(["embed", str(bad_csv), "--out", str(tmp_path / "emb"), "--model", vit[3], "--no-progress"]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_verify_leaves_unchanged_rows_alone(tmp_path, vit):
    """``--verify`` re-hashes files whose stat matches; unchanged ones keep their rows and vectors as they were."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"img{i}.png").write_bytes(_image(_color(i)))
    _build(tmp_path / "idx", [photos], vit)
    before = _rows(tmp_path / "idx")
    stats = _build(tmp_path / "idx", [photos], vit, verify=True)
    assert (stats.unchanged, stats.updated, stats.added) == (3, 0, 0)
    assert _rows(tmp_path / "idx") == before
