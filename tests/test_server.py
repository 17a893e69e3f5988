"""Search HTTP API (in-process, fastapi.testclient): endpoints, errors, and the security checks."""

from __future__ import annotations

import csv
import io
import itertools
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kontrast

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from kontrast.search.build import update_index
from kontrast.search.index import SearchIndex
from kontrast.search.query import Searcher
from kontrast.search.server import create_app

LIMIT = 256 * 1024


def build_small_index(root: Path, sample: Path, model_path: str, n: int = 24) -> tuple[Path, list[dict]]:
    """An index over ``n`` emoji (CSV with captions, absolute paths) plus a 3-member shard."""
    with open(sample / "captions.csv", encoding="utf-8") as f:
        all_rows = list(csv.DictReader(f))
    rows = all_rows[:n]
    images = root / "images"
    images.mkdir(parents=True)
    with open(root / "images.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "caption"])
        for row in rows:
            (images / row["filepath"]).write_bytes((sample / row["filepath"]).read_bytes())
            writer.writerow([str(images / row["filepath"]), row["caption"]])
    with tarfile.open(root / "shard-000.tar", "w") as tar:
        for i, row in enumerate(all_rows[n: n + 3]):
            for ext, data in (("png", (sample / row["filepath"]).read_bytes()), ("txt", row["caption"].encode())):
                info = tarfile.TarInfo(f"s{i:03d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    model, preprocess, tokenizer = kontrast.load(model_path)
    update_index(root / "idx", [str(root / "images.csv"), str(root / "shard-000.tar")], model, preprocess, tokenizer,
                 model_path, workers=0)
    return root / "idx", rows


@pytest.fixture(scope="module")
def env(tmp_path_factory, data_dir, fixtures_dir):
    root = tmp_path_factory.mktemp("server")
    model_path = str(fixtures_dir / "openai_vit.pt")
    folder, rows = build_small_index(root, data_dir / "emoji_sample", model_path)
    searcher = Searcher.open(str(folder))
    app = create_app(searcher, max_upload_bytes=LIMIT)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield {"client": client, "searcher": searcher, "root": root, "rows": rows, "app": app}


def _png(path: Path) -> bytes:
    return path.read_bytes()


def _healthy(client) -> None:
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


# -------------------------------------------------------------------------------------------- API
def test_health_and_page(env):
    c = env["client"]
    h = c.get("/health").json()
    assert (h["items"], h["images"], h["captions"], h["dim"]) == (27, 27, 27, 64)
    assert h["image_index"]["kind"] == "flat"
    page = c.get("/")
    assert page.status_code == 200 and 'id="q"' in page.text and 'id="drop"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace("http-equiv", "")  # no external asset
    for asset in ("/static/app.js", "/static/style.css"):
        r = c.get(asset)
        assert r.status_code == 200 and "http://" not in r.text and "https://" not in r.text
    assert c.get("/openapi.json").json()["info"]["title"] == "kontrast search"
    assert c.get("/docs").status_code == 200


def test_search_text(env):
    c, searcher = env["client"], env["searcher"]
    body = c.get("/search", params={"q": "an emoji of a flag", "k": 5}).json()
    res = body["results"]
    assert [r["rank"] for r in res] == [1, 2, 3, 4, 5]
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(res))
    assert res[0]["thumb"] == f"/thumb/{res[0]['id']}" and {"path", "width", "height", "caption"} <= set(res[0])
    direct = searcher.search(text="an emoji of a flag", k=5)
    assert [r["id"] for r in res] == [r.id for r in direct]
    caption = env["rows"][3]["caption"]
    top = c.get("/search", params={"q": caption, "k": 1, "captions": "true"}).json()["results"][0]
    assert top["caption"] == caption
    excl = c.get("/search", params={"q": "a flag", "k": 27, "exclude": "a keycap"}).json()["results"]
    assert len(excl) < 27
    assert c.get("/search", params={"q": "", "k": 5}).status_code == 422
    assert c.get("/search", params={"q": "x", "k": 0}).status_code == 422
    assert c.get("/search", params={"q": "x", "k": 100000}).status_code == 422


def test_search_image_classify_embed(env):
    c, searcher, root, rows = env["client"], env["searcher"], env["root"], env["rows"]
    query = root / "images" / rows[5]["filepath"]
    res = c.post("/search", files={"file": ("q.png", _png(query), "image/png")}, data={"k": "3"}).json()["results"]
    assert res[0]["path"] == str(query) and res[0]["score"] == pytest.approx(1.0, abs=1e-4) and len(res) == 3
    both = c.post("/search", files={"file": ("q.png", _png(query), "image/png")}, data={"k": "3", "q": "a cat"})
    assert both.status_code == 200

    r = c.post("/classify", files={"file": ("q.png", _png(query), "image/png")}, data={"labels": "cat, dog ,flag"})
    labels = r.json()["labels"]
    assert sorted(d["label"] for d in labels) == ["cat", "dog", "flag"]
    assert sum(d["prob"] for d in labels) == pytest.approx(1.0, abs=1e-4)
    r2 = c.post("/classify", files={"file": ("q.png", _png(query), "image/png")},
                data={"labels": ["cat", "dog", "flag"]})
    assert r2.json() == r.json()
    assert c.post("/classify", files={"file": ("q.png", _png(query), "image/png")}).status_code == 422

    r = c.post("/embed", data={"text": ["a cat", "a dog"]}).json()
    vecs = np.array(r["text"])
    assert vecs.shape == (2, 64) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(vecs, searcher.encode_text(["a cat", "a dog"]), atol=1e-6)
    r = c.post("/embed", files={"file": ("q.png", _png(query), "image/png")}).json()
    stored = searcher.index.store.vectors([res[0]["id"]], "image_vec", 64)[res[0]["id"]]
    np.testing.assert_allclose(r["image"], stored, atol=1e-5)
    assert c.post("/embed").status_code == 422


def test_thumb_image_item(env):
    c, root, rows = env["client"], env["root"], env["rows"]
    item = c.get("/item/1").json()
    assert item["path"] == str(root / "images" / rows[0]["filepath"]) and item["caption"] == rows[0]["caption"]
    t = c.get("/thumb/1")
    assert t.status_code == 200 and t.headers["content-type"] in ("image/jpeg", "image/png")
    assert max(Image.open(io.BytesIO(t.content)).size) <= 256
    small = c.get("/thumb/1", params={"size": 64})
    assert max(Image.open(io.BytesIO(small.content)).size) <= 64
    media = env["app"].state.media
    cached = len(media.thumbs)
    assert c.get("/thumb/1").content == t.content and len(media.thumbs) == cached  # served from the LRU
    original = c.get("/image/1")
    assert original.content == (root / "images" / rows[0]["filepath"]).read_bytes()
    assert original.headers["content-type"] == "image/png" and original.headers["x-content-type-options"] == "nosniff"
    shard_row = c.get("/item/25").json()
    assert shard_row["kind"] == "webdataset" and shard_row["path"].endswith("shard-000.tar:s000.png")
    assert c.get("/thumb/25").status_code == 200 and c.get("/image/25").content[:4] == b"\x89PNG"
    assert c.get("/thumb/999").status_code == 404


# ---------------------------------------------------------------------------------------- security
TRAVERSALS = [
    "/thumb/../../etc/passwd", "/thumb/..%2F..%2Fetc%2Fpasswd", "/thumb/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/thumb//etc/passwd", "/thumb/%2Fetc%2Fpasswd", "/thumb/1%2F..%2F..%2Findex.sqlite", "/thumb/-1", "/thumb/0",
    "/thumb/1e3", "/thumb/99999999999999999999999", "/image/..%2Fidx%2Findex.sqlite", "/image/%00",
    "/item/../../etc/passwd", "/static/../idx/index.sqlite", "/static/..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/%2e%2e/%2e%2e/server.py", "/static//etc/passwd", "/thumb/1?size=../../etc/passwd",
    "/thumb/1?size=100000",
]


@pytest.mark.parametrize("url", TRAVERSALS)
def test_path_traversal_rejected(env, url):
    c = env["client"]
    r = c.get(url)
    assert 400 <= r.status_code < 500, (url, r.status_code)
    assert b"root:" not in r.content and b"SQLite format" not in r.content and b"def create_app" not in r.content
    _healthy(c)


def test_changed_file_not_served(env, tmp_path):
    """A file replaced after indexing (e.g. a symlink re-pointed) is refused, not served."""
    c, root, rows = env["client"], env["root"], env["rows"]
    path = root / "images" / rows[10]["filepath"]
    original = path.read_bytes()
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    try:
        path.unlink()
        path.symlink_to(secret)
        for url in ("/image/11", "/thumb/11?size=128"):
            r = c.get(url)
            assert r.status_code == 410 and b"root:" not in r.content
    finally:
        path.unlink()
        path.write_bytes(original)
    assert c.get("/image/11").content == original
    _healthy(c)


def _huge_png_header() -> bytes:
    """A valid PNG header declaring 60000 x 60000 pixels (a decompression bomb), with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("endpoint", ["/search", "/classify", "/embed"])
def test_bad_uploads_rejected(env, endpoint):
    c, root, rows = env["client"], env["root"], env["rows"]
    good = _png(root / "images" / rows[0]["filepath"])
    data = {"labels": "a,b"} if endpoint == "/classify" else {}
    cases = [
        ("truncated.png", good[: len(good) // 3], 400),
        ("notes.txt", b"this is not an image at all", 415),
        ("fake.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, 415),
        ("bomb.png", _huge_png_header(), 400),
        ("empty.png", b"", 400),
    ]
    for name, payload, status in cases:
        r = c.post(endpoint, files={"file": (name, payload, "image/png")}, data=data)
        assert r.status_code == status, (endpoint, name, r.status_code, r.text)
        assert isinstance(r.json()["detail"], str) and r.json()["detail"]
        _healthy(c)


def test_oversized_upload_413(env):
    c = env["client"]
    big = b"\x89PNG\r\n\x1a\n" + b"\x00" * (LIMIT + 10)
    r = c.post("/search", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    _healthy(c)

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(40):
            yield b"x" * 10_000

    r = c.post("/embed", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413
    _healthy(c)
    small = c.post("/embed", data={"text": ["still works"]})
    assert small.status_code == 200


def test_searcher_refuses_other_model(env, fixtures_dir):
    other, pre, tok = kontrast.load(str(fixtures_dir / "openai_rn.pt"))
    with pytest.raises(kontrast.KontrastError, match="was built with model"):
        Searcher(SearchIndex(env["searcher"].index.folder), other, pre, tok, "openai_rn.pt")
