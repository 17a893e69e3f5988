"""What an adversarial or careless client tried against the search server (issue 12), each answered:
templates as data and a prompt cap, bounded decoding, following new index generations, the Host check
and the access token, 414 for long URLs, one file part per field, and `kontrast serve` checking its flags
before loading the model. Loopback only; every wait is bounded."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

import kontrast

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient
from test_server import build_small_index
from test_server_live import _raw, live_server

from kontrast.search.build import update_index
from kontrast.search.query import Searcher
from kontrast.search.server import create_app
from kontrast.zeroshot import fill_template

LOCAL = "http://127.0.0.1"


@pytest.fixture(scope="module")
def built(tmp_path_factory, data_dir, fixtures_dir):
    root = tmp_path_factory.mktemp("hard")
    folder, rows = build_small_index(root, data_dir / "emoji_sample", str(fixtures_dir / "openai_vit.pt"), n=8)
    return {"folder": folder, "rows": rows, "root": root}


def _client(built, **options) -> TestClient:
    return TestClient(create_app(Searcher.open(str(built["folder"])), **options), base_url=LOCAL)


def _png(built, i: int = 0) -> bytes:
    return (built["root"] / "images" / built["rows"][i]["filepath"]).read_bytes()


def _encoded(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


# ------------------------------------------------------------------------------- 1: templates as data
def test_classify_templates_are_data(built):
    """``str.format`` is never applied to a client's template: ``{:>10000000}`` is text, ``{1}`` is not an error."""
    with _client(built) as c:
        searcher = c.app.state.searcher
        img = searcher.encode_image(_png(built))
        for template in ("{{}}{:>10000000}", "{} {1}", "{}{0.__class__}"):
            r = c.post("/classify", files={"file": ("q.png", _png(built), "image/png")},
                       data={"labels": "cat,dog", "template": template})
            assert r.status_code == 200, (template, r.text)
            got = {d["label"]: d["score"] for d in r.json()["labels"]}
            for label in ("cat", "dog"):  # the score of the literal prompt, braces and all
                want = float(searcher.encode_text([fill_template(template, label)])[0] @ img)
                assert got[label] == pytest.approx(want, abs=1e-5), (template, label)
        r = c.post("/classify", files={"file": ("q.png", _png(built), "image/png")},
                   data={"labels": "cat", "template": "{0.__class__}"})
        assert r.status_code == 400 and "placeholder" in r.json()["detail"]


def test_classify_caps_labels_times_templates(built):
    labels = ",".join(f"label{i}" for i in range(600))
    with _client(built) as c:
        r = c.post("/classify", files={"file": ("q.png", _png(built), "image/png")},
                   data={"labels": labels, "template": ["a photo of a {}.", "a drawing of a {}."]})
        assert r.status_code == 400 and "1200 prompts" in r.json()["detail"], r.text
        ensemble = c.post("/classify", files={"file": ("q.png", _png(built), "image/png")},
                          data={"labels": "cat,dog", "template": ["a photo of a {}.", "a drawing of a {}."]})
        assert ensemble.status_code == 200 and len(ensemble.json()["labels"]) == 2


# ---------------------------------------------------------------------------------- 2: bounded decoding
def test_pixel_cap_refuses_or_drafts(built):
    """Above the server's pixel cap a PNG is refused from its header; a JPEG is decoded at reduced scale."""
    big_png = _encoded(Image.new("RGB", (1500, 1000), (200, 30, 30)), "PNG")
    big_jpeg = _encoded(Image.new("RGB", (2400, 1600), (30, 30, 200)), "JPEG")
    with _client(built, max_image_pixels=1_000_000) as c:
        seen = []
        searcher = c.app.state.searcher
        inner = searcher.preprocess
        searcher.preprocess = lambda img: (seen.append(img.size), inner(img))[1]
        r = c.post("/search", files={"file": ("big.png", big_png, "image/png")})
        assert r.status_code == 400 and "1500000 pixels" in r.json()["detail"] and seen == []
        r = c.post("/search", files={"file": ("big.jpg", big_jpeg, "image/jpeg")})
        assert r.status_code == 200, r.text
        assert seen == [(1200, 800)]  # DCT-scaled by 2: 960,000 pixels decoded, not 3,840,000
        assert c.get("/health").json()["max_image_pixels"] == 1_000_000


def test_concurrent_decodes_are_bounded(built):
    """Eight simultaneous large uploads: at most ``max_decodes`` are decoded and preprocessed at once; a small
    upload does not wait behind them."""
    large = _encoded(Image.new("RGB", (1500, 1200), (90, 90, 20)), "PNG")  # 1.8 M pixels: takes a slot
    with _client(built, max_decodes=2) as c:
        searcher = c.app.state.searcher
        inner = searcher.preprocess
        lock, state = threading.Lock(), {"now": 0, "peak": 0}
        crowd = threading.Event()

        def slow_preprocess(img):
            with lock:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
                if state["now"] >= 3:
                    crowd.set()
            crowd.wait(0.5)  # ungated decodes would pile up here; gated ones pass after a bounded wait
            try:
                return inner(img)
            finally:
                with lock:
                    state["now"] -= 1

        searcher.preprocess = slow_preprocess
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: c.post("/embed", files={"file": ("l.png", large, "image/png")}).status_code,
                                  range(8)))
        assert codes == [200] * 8
        assert state["peak"] <= 2, state
        searcher.preprocess = inner
        gate = searcher.gate
        with contextlib.ExitStack() as held:  # both slots taken, as during a burst of large uploads
            for _ in range(gate.max_concurrent):
                held.enter_context(gate.slot())
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                small = pool.submit(lambda: c.post("/embed", files={"file": ("s.png", _png(built), "image/png")}))
                assert small.result(timeout=120).status_code == 200


def test_memory_handed_back_after_a_burst(built):
    """When the last decode of a burst ends, the gate returns freed heap memory (glibc malloc_trim)."""
    pytest.importorskip("ctypes")
    big = _encoded(Image.new("RGB", (3000, 3000), (10, 120, 10)), "PNG")  # 9 M pixels, a few KB of PNG
    with _client(built, max_decodes=2) as c:
        gate = c.app.state.searcher.gate
        if gate._trim is None:
            pytest.fail("no glibc malloc_trim on this system: the memory test needs glibc")
        before = gate.trims
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda _: c.post("/embed", files={"file": ("b.png", big, "image/png")}).status_code,
                                  range(4)))
        assert codes == [200] * 4
        assert gate.trims > before and gate._active == 0


# ------------------------------------------------------------------------------- 6: new generations
def test_server_follows_index_updates(tmp_path, built, fixtures_dir, data_dir):
    """After ``update_index`` changes an image, the running app switches to the new vectors; no request fails."""
    root = tmp_path / "follow"
    shutil.copytree(built["root"] / "images", root / "images")
    photos = root / "images"
    names = sorted(p.name for p in photos.glob("*.png"))[:4]
    for extra in sorted(p.name for p in photos.glob("*.png"))[4:]:
        (photos / extra).unlink()
    model_path = str(fixtures_dir / "openai_vit.pt")
    model, preprocess, tokenizer = kontrast.load(model_path)
    update_index(root / "idx", [str(photos)], model, preprocess, tokenizer, model_path, workers=0)
    target = photos / names[0]
    old_bytes = target.read_bytes()
    new_bytes = _encoded(Image.new("RGB", (64, 64), (250, 200, 0)), "PNG")

    def top(c, data):
        r = c.post("/search", files={"file": ("q.png", data, "image/png")}, data={"k": "1"})
        assert r.status_code == 200, r.text
        return r.json()["results"][0]

    with TestClient(create_app(Searcher.open(str(root / "idx")), follow_seconds=0.0), base_url=LOCAL) as c:
        assert top(c, old_bytes)["path"] == str(target) and top(c, old_bytes)["score"] == pytest.approx(1, abs=1e-4)
        target.write_bytes(new_bytes)
        update_index(root / "idx", [str(photos)], model, preprocess, tokenizer, model_path, workers=0)
        gen = c.get("/health").json()["generation"]
        statuses = []
        stop = threading.Event()

        def hammer():
            while not stop.is_set():
                statuses.append(c.get("/search", params={"q": "a flag", "k": 3}).status_code)

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(hammer) for _ in range(2)]
            for _ in range(300):  # bounded: the reload is a background thread
                if c.get("/health").json()["serving_generation"] == gen:
                    break
                time.sleep(0.02)
            stop.set()
            for f in futures:
                f.result()
        assert c.get("/health").json()["serving_generation"] == gen
        assert statuses and set(statuses) == {200}
        hit = top(c, new_bytes)
        assert hit["path"] == str(target) and hit["score"] == pytest.approx(1, abs=1e-4)
        assert top(c, old_bytes)["score"] < 0.999 or top(c, old_bytes)["path"] != str(target)


# ---------------------------------------------------------------------------- 8: Host check and token
def test_host_header_checked(built):
    with _client(built) as c:
        assert c.get("/health").status_code == 200
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "attacker.test."):
            r = c.get("/health", headers={"host": host})
            assert r.status_code == 400 and "DNS rebinding" in r.json()["detail"], host
        for host in ("localhost:8000", "[::1]:8000", "127.0.0.1"):
            assert c.get("/health", headers={"host": host}).status_code == 200, host
    with TestClient(create_app(Searcher.open(str(built["folder"])), allowed_hosts=("search.lan",)),
                    base_url="http://search.lan") as c:
        assert c.get("/health").status_code == 200
        assert c.get("/health", headers={"host": "127.0.0.1"}).status_code == 400


def test_access_token(built):
    token = "s3cret-token-0123456789"
    with _client(built, auth_token=token) as c:
        for url in ("/health", "/", "/thumb/1", "/image/1", "/search?q=cat", "/docs", "/static/app.js"):
            r = c.get(url)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", url
            assert b"kontrast search" not in r.content
        assert c.get("/health", headers={"authorization": "Bearer wrong-token-000000000"}).status_code == 401
        assert c.get("/health", headers={"authorization": f"Bearer {token}"}).status_code == 200
        r = c.get(f"/?token={token}")  # the page once with the token: a cookie for the rest
        assert r.status_code == 200 and "HttpOnly" in r.headers["set-cookie"]
        assert "SameSite=Strict" in r.headers["set-cookie"]
        assert c.get("/thumb/1").status_code == 200  # TestClient keeps the cookie
        c.cookies.clear()
        assert c.get("/thumb/1").status_code == 401


def test_serve_refuses_public_bind_without_token(built, monkeypatch, capsys):
    from kontrast.cli import main

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(Searcher, "open", no_model)
    monkeypatch.delenv("KONTRAST_AUTH_TOKEN", raising=False)
    assert main(["serve", str(built["folder"]), "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "KONTRAST_AUTH_TOKEN" in err
    assert main(["serve", str(built["folder"]), "--host", "0.0.0.0", "--auth-token", "short"]) == 2
    assert "16 to 512" in capsys.readouterr().err


# --------------------------------------------------------------------------- 9: serve checks its flags
def test_serve_bad_port_fails_before_loading_the_model(built, monkeypatch, capsys):
    from kontrast.cli import main

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(Searcher, "open", no_model)
    assert main(["serve", str(built["folder"]), "--port", "99999"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--port 99999" in err and "Traceback" not in err
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        assert main(["serve", str(built["folder"]), "--port", str(busy.getsockname()[1])]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "already in use" in err
    finally:
        busy.close()


# ----------------------------------------------------------------------------- 10: 414, repeated files
def test_long_url_gets_414(built):
    with live_server(create_app(Searcher.open(str(built["folder"])))) as url:
        status, data = _raw(url, b"GET /search?q=" + b"a" * 1_000_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 b"Connection: close\r\n\r\n")
        assert status == 414 and b"send long inputs in a POST body" in data
        assert httpx.get(f"{url}/health", timeout=20).status_code == 200


def test_two_file_parts_refused(built):
    other = _encoded(Image.new("RGB", (64, 64), (0, 0, 0)), "PNG")
    with _client(built) as c:
        for endpoint, data in (("/search", {}), ("/classify", {"labels": "a,b"}), ("/embed", {})):
            files = [("file", ("a.png", _png(built), "image/png")), ("file", ("b.png", other, "image/png"))]
            r = c.post(endpoint, files=files, data=data)
            assert r.status_code == 400 and "given 2 times" in r.json()["detail"], (endpoint, r.text)
        r = c.post("/search", files={"file": ("a.png", _png(built), "image/png")}, data={"k": ["1", "5"]})
        assert r.status_code == 400 and "'k' given 2 times" in r.json()["detail"]
        one = c.post("/embed", files={"file": ("a.png", _png(built), "image/png")})
        assert one.status_code == 200 and np.asarray(one.json()["image"]).shape == (64,)
