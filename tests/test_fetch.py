"""The server's image-URL fetcher (``kontrast serve --allow-image-urls``): off by default, allow-listed hosts
only, every resolved address must be public, redirects re-checked, size and time limits; one-line errors.

No network is used: names resolve through a stub, literal private addresses are refused before any
connection, and the transfer limits are exercised against a local HTTP server with the address check
replaced (the only way to reach a server in a test is loopback, which the real check refuses).
"""

from __future__ import annotations

import functools
import http.server
import threading
import time
from contextlib import contextmanager
from typing import ClassVar

import pytest

from kontrast.errors import KontrastError
from kontrast.search.fetch import FetchError, UrlFetcher, is_public_address, parse_allow_list

PRIVATE = ["127.0.0.1", "127.8.8.8", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
           "0.0.0.0", "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
           "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:0a00:0001::1", "64:ff9b::10.0.0.1"]


@pytest.mark.parametrize("address", PRIVATE)
def test_non_public_addresses(address):
    assert not is_public_address(address)


def test_public_addresses():
    for address in ("93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"):
        assert is_public_address(address), address


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "169.254.169.254", "[::1]", "[::ffff:10.0.0.1]"])
def test_literal_private_urls_refused_without_connecting(address):
    def no_resolve(host, port):
        raise AssertionError("a literal address must not be resolved")

    fetcher = UrlFetcher(["*"], resolver=no_resolve)
    with pytest.raises(FetchError, match="non-public address") as exc:
        fetcher.fetch(f"http://{address}/latest/meta-data/")
    assert exc.value.status == 400 and "\n" not in str(exc.value)


def test_name_resolving_to_a_private_address_refused():
    """Every resolved address is checked: one private among public ones refuses the URL."""
    fetcher = UrlFetcher(["images.example.org"], resolver=lambda host, port: ["93.184.216.34", "10.1.2.3"])
    with pytest.raises(FetchError, match="'images.example.org' resolves to a non-public address \\(10.1.2.3\\)"):
        fetcher.fetch("https://images.example.org/cat.jpg")
    rebinding = UrlFetcher(["evil.example"], resolver=lambda host, port: ["127.0.0.1"])
    with pytest.raises(FetchError, match="non-public"):
        rebinding.fetch("http://evil.example/")


def test_allow_list_scheme_and_userinfo():
    fetcher = UrlFetcher(["images.example.org"], resolver=lambda host, port: ["93.184.216.34"])
    cases = [("http://other.example.org/a.jpg", "not on this server's --allow-image-urls list"),
             ("ftp://images.example.org/a.jpg", "only http and https"),
             ("file:///etc/passwd", "only http and https"),
             ("http://user:pw@images.example.org/a.jpg", "user information"),
             ("http:///a.jpg", "has no host"),
             ("http://images.example.org:99999/a.jpg", "not a valid URL")]
    for url, message in cases:
        with pytest.raises(FetchError, match=message):
            fetcher.fetch(url)
    assert fetcher.check("https://Images.Example.org./a.jpg?x=1")[1:4] == ("images.example.org", 443, "/a.jpg?x=1")
    with pytest.raises(FetchError, match="does not fetch image URLs"):
        UrlFetcher([]).fetch("http://images.example.org/a.jpg")


def test_parse_allow_list():
    assert parse_allow_list(["a.org, B.org.", "c.org"]) == ("a.org", "b.org", "c.org")
    with pytest.raises(KontrastError, match="host names only"):
        parse_allow_list(["https://a.org/x"])


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict] = {}

    def do_GET(self):
        status, headers, body, delay = self.routes.get(self.path, (404, {}, b"", 0))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if delay:
            for i in range(0, len(body), 10):
                self.wfile.write(body[i: i + 10])
                self.wfile.flush()
                time.sleep(delay)
        else:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def http_server(routes):
    _Handler.routes = routes
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_transfer_limits_and_redirects_against_a_local_server():
    """The check is replaced by ``address_ok`` to reach 127.0.0.1; the host name still has to be allowed."""
    png = b"\x89PNG" + b"x" * 300
    routes = {"/ok.png": (200, {"Content-Length": str(len(png))}, png, 0),
              "/big.png": (200, {"Content-Length": "5000"}, b"y" * 5000, 0),
              "/chunked.png": (200, {}, b"z" * 5000, 0),
              "/slow.png": (200, {}, b"s" * 200, 0.1),
              "/hop": (302, {"Location": "/ok.png"}, b"", 0),
              "/away": (302, {"Location": "http://elsewhere.example/x.png"}, b"", 0),
              "/loop": (302, {"Location": "/loop"}, b"", 0)}
    with http_server(routes) as port:
        def fetcher(**kw):
            return UrlFetcher(["localhost"], address_ok=lambda a: True, resolver=lambda h, p: ["127.0.0.1"], **kw)

        base = f"http://localhost:{port}"
        assert fetcher().fetch(f"{base}/ok.png") == png
        assert fetcher().fetch(f"{base}/hop") == png  # a redirect to an allowed host is followed
        with pytest.raises(FetchError, match="5000 bytes, more than this server fetches \\(1000\\)"):
            fetcher(max_bytes=1000).fetch(f"{base}/big.png")
        with pytest.raises(FetchError, match="more than 1000 bytes"):
            fetcher(max_bytes=1000).fetch(f"{base}/chunked.png")
        with pytest.raises(FetchError, match="'elsewhere.example' is not on"):
            fetcher().fetch(f"{base}/away")
        with pytest.raises(FetchError, match="redirected more than 3 times"):
            fetcher().fetch(f"{base}/loop")
        with pytest.raises(FetchError, match="HTTP 404") as exc:
            fetcher().fetch(f"{base}/missing.png")
        assert exc.value.status == 502
        start = time.monotonic()
        with pytest.raises(FetchError, match="within 0.5 s") as exc:
            fetcher(timeout=0.5).fetch(f"{base}/slow.png")
        assert exc.value.status == 504 and time.monotonic() - start < 3
        # the real address check refuses the same server
        with pytest.raises(FetchError, match="non-public"):
            UrlFetcher(["localhost"], resolver=lambda h, p: ["127.0.0.1"]).fetch(f"{base}/ok.png")


def test_knn_service_image_url(tmp_path, data_dir, monkeypatch):
    """Off by default (400, one line); with an allow-list, the fetched image is the query."""
    from fastapi.testclient import TestClient
    from test_server import build_small_index

    from kontrast.search import fetch
    from kontrast.search.query import Searcher
    from kontrast.search.server import create_app

    folder, rows = build_small_index(tmp_path, data_dir / "emoji_sample", "default", n=6)
    searcher = Searcher.open(str(folder))
    body = {"image_url": "http://127.0.0.1/x.png", "num_images": 3, "modality": "image"}
    with TestClient(create_app(searcher), base_url="http://127.0.0.1") as c:
        r = c.post("/knn-service", json=body)
        assert r.status_code == 400 and "does not fetch image URLs" in r.json()["detail"]
    png = (tmp_path / "images" / rows[2]["filepath"]).read_bytes()
    with http_server({"/q.png": (200, {}, png, 0)}) as port:
        # the test server is on loopback, which the real address check refuses
        monkeypatch.setattr(fetch, "UrlFetcher", functools.partial(fetch.UrlFetcher, address_ok=lambda a: True))
        with TestClient(create_app(searcher, image_url_hosts=("localhost",)), base_url="http://127.0.0.1") as c:
            r = c.post("/knn-service", json={**body, "image_url": f"http://localhost:{port}/q.png"})
            assert r.status_code == 200, r.text
            assert r.json()[0]["image_path"] == str(tmp_path / "images" / rows[2]["filepath"])
            r = c.post("/knn-service", json={**body, "image_url": f"http://elsewhere.example:{port}/q.png"})
            assert r.status_code == 400 and "not on this server's --allow-image-urls list" in r.json()["detail"]
