"""The search server over real loopback HTTP (uvicorn in a thread): raw-socket path traversal, early 413,
concurrent requests sharing one model, and the loopback default of ``kontrast serve``."""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from test_server import build_small_index

from kontrast.search.query import Searcher
from kontrast.search.server import create_app

LIMIT = 256 * 1024


@contextmanager
def live_server(app):
    """Serve ``app`` with uvicorn on 127.0.0.1 and a free port (socket bound here, so no race); yields the URL."""
    import uvicorn

    from kontrast.search.server import uvicorn_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_dir, fixtures_dir):
    root = tmp_path_factory.mktemp("live")
    folder, rows = build_small_index(root, data_dir / "emoji_sample", str(fixtures_dir / "openai_vit.pt"), n=12)
    searcher = Searcher.open(str(folder))
    with live_server(create_app(searcher, max_upload_bytes=LIMIT)) as url:
        yield {"url": url, "root": root, "rows": rows, "searcher": searcher}


def _raw(url: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (no client-side URL normalisation); returns (status, whole response)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def _health(url: str) -> None:
    r = httpx.get(f"{url}/health", timeout=20)
    assert r.status_code == 200 and r.json()["status"] == "ok"


RAW_PATHS = [
    b"/thumb/../../../../etc/passwd", b"/thumb/..%2f..%2f..%2fetc%2fpasswd", b"/thumb/%2e%2e/%2e%2e/etc/passwd",
    b"/image/../index.sqlite", b"/image/..%2Findex.sqlite", b"/static/../../../../etc/passwd",
    b"/static/..%2f..%2f..%2f..%2fetc%2fpasswd", b"/static/%2e%2e/%2e%2e/search/server.py", b"/thumb//etc/passwd",
    b"/thumb/1/../../../etc/passwd", b"/item/..%5c..%5cindex.sqlite", b"/thumb/%252e%252e%252fetc%252fpasswd",
    b"/etc/passwd", b"/../../etc/passwd", b"/index.sqlite",
]


@pytest.mark.parametrize("path", RAW_PATHS)
def test_raw_traversal_rejected(server, path):
    status, data = _raw(server["url"], b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert 400 <= status < 500, (path, status)
    assert b"root:" not in data and b"SQLite format" not in data and b"def create_app" not in data
    _health(server["url"])


def test_413_before_the_body_is_read(server):
    """A declared 50 MB body gets 413 after only the headers and a few bytes were sent."""
    head = (b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 50000000\r\n\r\n--b\r\n")
    status, data = _raw(server["url"], head)
    assert status == 413 and b"larger than" in data
    _health(server["url"])
    r = httpx.post(f"{server['url']}/embed", data={"text": ["ok"]}, timeout=20)
    assert r.status_code == 200


def test_concurrent_requests_share_the_model(server):
    url, root, rows = server["url"], server["root"], server["rows"]
    images = [(root / "images" / row["filepath"]).read_bytes() for row in rows[:4]]
    texts = ["a flag", "a keycap", "a face", "an animal"]

    def one(i: int):
        with httpx.Client(timeout=60) as client:
            if i % 2:
                r = client.post(f"{url}/search", files={"file": ("q.png", images[i % 4], "image/png")}, data={"k": "5"})
            else:
                r = client.get(f"{url}/search", params={"q": texts[i % 4], "k": 5})
            r.raise_for_status()
            return i, [x["id"] for x in r.json()["results"]]

    serial = dict(one(i) for i in range(8))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        parallel = dict(pool.map(one, list(range(8)) * 4))
    assert parallel == serial


def test_serve_binds_loopback_by_default():
    from kontrast.cli import build_parser

    args = build_parser().parse_args(["serve", "some_index"])
    assert (args.host, args.port, args.max_upload_mb) == ("127.0.0.1", 8000, 10.0)


def test_serve_cli_starts(tmp_path, server, monkeypatch):
    """``kontrast serve`` binds the port, then wires the index into uvicorn (Server.run replaced: no second server)."""
    import uvicorn

    from kontrast.cli import main

    seen = {}

    def fake_run(self, sockets=None):
        seen.update(config=self.config, address=sockets[0].getsockname())

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    folder = Path(server["searcher"].index.folder)
    assert main(["serve", str(folder), "--port", "0", "--max-upload-mb", "1"]) == 0
    assert seen["address"][0] == "127.0.0.1" and seen["address"][1] > 0
    assert seen["config"].h11_max_incomplete_event_size >= 2 * 1024 * 1024
