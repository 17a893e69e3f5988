"""``kontrast serve INDEX [NAME=INDEX ...]``: the search HTTP API and web page (FastAPI + uvicorn), on loopback by
default, with clip-retrieval's back-end routes (``/knn-service``, ``/metadata``, ``/indices-list``).

Flags are checked and the port is bound BEFORE the model is loaded, so a bad port, a port in use or a
missing token fails in one line at once. Anything not on loopback needs an access token
(``--auth-token`` or ``$KONTRAST_AUTH_TOKEN``); the Host header is checked against the bound address
(``--allowed-host`` adds names). See the README's "Security" section.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import re
import socket

from .common import add_model_args

TOKEN_ENV = "KONTRAST_AUTH_TOKEN"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~+/=-]{16,512}$")


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a search index over HTTP (API + web page)",
                              description="HTTP API (/search, /classify, /embed, /thumb/{id}, /health, /docs) and a "
                              "web page at /. Binds 127.0.0.1 unless --host says otherwise; any other address needs "
                              f"an access token (--auth-token or ${TOKEN_ENV}). --model defaults to the model "
                              "recorded in the index.")
    p.add_argument("index", metavar="INDEX", nargs="+",
                   help="index folder built by 'kontrast index', or NAME=FOLDER (several: one server, named indexes; "
                   "the name defaults to the folder's name; the first is the default of kontrast's own routes)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--auth-token", default=None, metavar="TOKEN",
                   help=f"require this token on every request (default: ${TOKEN_ENV}; needed off loopback). "
                   "Prefer the environment variable: command lines are visible to other users")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header is NAME (repeatable; '*' turns the check off)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted request body (413 above)")
    p.add_argument("--max-decodes", type=int, default=2, help="uploaded images decoded at once (others wait)")
    p.add_argument("--max-image-pixels", type=int, default=25_000_000,
                   help="largest decoded upload in pixels (JPEGs above are decoded at reduced scale; others: 400)")
    p.add_argument("--max-connections", type=int, default=128, help="concurrent connections (503 above)")
    p.add_argument("--no-model-lock", action="store_true",
                   help="let concurrent requests run the model in parallel threads (default: one at a time)")
    p.add_argument("--faiss-threads", type=int, default=1,
                   help="OpenMP threads per FAISS query (1: concurrent requests run side by side; measured faster "
                   "than sharing all cores per query, see benchmarks/search.py)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN (e.g. http://localhost:1235) read responses (repeatable; default: "
                   "no CORS headers)")
    p.add_argument("--allow-image-urls", action="append", default=[], metavar="HOST[,HOST...]",
                   help="let /knn-service fetch 'image_url' from these hosts ('*': any), public addresses only "
                   "(default: never fetch URLs)")
    p.add_argument("--clip-front", action="store_true",
                   help="serve clip-retrieval's web front end (pip package clip-retrieval) at /clip-front/, "
                   "pointed at this server")
    p.add_argument("--max-knn-images", type=int, default=1000,
                   help="most results with metadata and image per /knn-service request (num_images)")
    p.add_argument("--knn-image-max-mb", type=float, default=1.0,
                   help="/knn-service and /metadata inline indexed files up to this size; larger ones as a "
                   "512-pixel picture")
    add_model_args(p)
    p.set_defaults(model=None, func=run)


def parse_index_args(values: list[str]) -> list[tuple[str, str]]:
    """``["a", "web=b/c"]`` -> ``[("a", "a"), ("web", "b/c")]``; names from folder names; one-line errors."""
    from pathlib import Path

    from ..errors import KontrastError
    from ..search.server import INDEX_NAME_RE, default_index_name

    pairs: list[tuple[str, str]] = []
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or "/" in name or not name:
            name, folder = default_index_name(value), value
            if not INDEX_NAME_RE.match(name):
                raise KontrastError(f"index folder {value}: its name {name!r} cannot name an index (A-Z a-z 0-9 . _ -); "
                                    "give NAME=FOLDER")
        elif not INDEX_NAME_RE.match(name):
            raise KontrastError(f"{value}: index name {name!r} must be 1-100 of A-Z a-z 0-9 . _ - (starting with a "
                                "letter or digit)")
        if not Path(folder).is_dir():
            raise KontrastError(f"index folder {folder} does not exist; build it with: kontrast index PATH --index {folder}")
        for other, other_folder in pairs:
            if other == name:
                raise KontrastError(f"two indexes are named {name!r} ({other_folder} and {folder}); name them apart "
                                    "with NAME=FOLDER")
        pairs.append((name, folder))
    return pairs


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def resolve_access(host: str, token: str | None, extra_hosts: list[str]) -> tuple[str | None, tuple[str, ...] | None]:
    """``(token, allowed Host names or None for any)`` for binding ``host``; ``KontrastError`` if unsafe."""
    from ..errors import KontrastError
    from ..search.guard import LOOPBACK_NAMES

    token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
    if token is not None and not _TOKEN_RE.match(token):
        raise KontrastError("the access token must be 16 to 512 characters of A-Z a-z 0-9 . _ ~ + / = -; make one "
                            "with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if not is_loopback(host) and token is None:
        raise KontrastError(f"--host {host} is reachable from other machines: set an access token with "
                            f"{TOKEN_ENV}=... (or --auth-token), or keep the default --host 127.0.0.1")
    if "*" in extra_hosts:
        return token, None
    if is_loopback(host):
        allowed: tuple[str, ...] | None = (*LOOPBACK_NAMES, host)
    elif _is_wildcard(host):
        allowed = (*LOOPBACK_NAMES, *extra_hosts) if extra_hosts else None  # every address: the token guards it
    else:
        allowed = (*LOOPBACK_NAMES, host)
    if allowed is not None:
        allowed = tuple(dict.fromkeys((*allowed, *extra_hosts)))
    return token, allowed


def check_origin(origin: str) -> str:
    """A CORS origin as browsers send it (``scheme://host[:port]``, no path), or ``*``; ``KontrastError`` otherwise."""
    from urllib.parse import urlsplit

    from ..errors import KontrastError

    if origin == "*":
        return origin
    parts = urlsplit(origin)
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/") or parts.query:
        raise KontrastError(f"--cors-origin {origin!r}: give an origin such as http://localhost:1235 (scheme, host and "
                            "port; no path)")
    return f"{parts.scheme}://{parts.netloc}"


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; ``KontrastError`` (one line) when that is impossible."""
    from ..errors import KontrastError

    if not 0 <= port <= 65535:
        raise KontrastError(f"--port {port} is not a TCP port; use 1..65535 (e.g. --port 8000)")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise KontrastError(f"--host {host}: cannot resolve it ({exc.strerror}); give an address such as 127.0.0.1") \
            from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        why = {errno.EADDRINUSE: "is already in use (another server?); pick another with --port",
               errno.EACCES: "needs privileges (ports below 1024); pick one above 1024 with --port",
               errno.EADDRNOTAVAIL: "is not an address of this machine; check --host",
               }.get(exc.errno, exc.strerror or str(exc))
        raise KontrastError(f"cannot listen on {host}:{port}: it {why}") from None
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    from ..errors import KontrastError

    for flag, value, low in (("--max-decodes", args.max_decodes, 1), ("--max-image-pixels", args.max_image_pixels, 1),
                             ("--max-connections", args.max_connections, 1), ("--faiss-threads", args.faiss_threads, 1),
                             ("--max-knn-images", args.max_knn_images, 1)):
        if value < low:
            raise KontrastError(f"{flag} {value}: give a number >= {low}")
    if args.max_upload_mb <= 0:
        raise KontrastError(f"--max-upload-mb {args.max_upload_mb}: give a positive number")
    if args.knn_image_max_mb < 0:
        raise KontrastError(f"--knn-image-max-mb {args.knn_image_max_mb}: give a number >= 0")
    token, allowed = resolve_access(args.host, args.auth_token, args.allowed_host)
    args.indexes = parse_index_args(args.index)
    args.cors_origin = [check_origin(o) for o in args.cors_origin]
    from ..search.fetch import parse_allow_list

    args.image_url_hosts = parse_allow_list(args.allow_image_urls)
    if args.clip_front:
        from ..search.clip_retrieval_api import front_build_dir

        args.clip_front_dir = str(front_build_dir())
    sock = bind(args.host, args.port)  # before the model loads: a wrong port fails at once
    try:
        return _serve(args, sock, token, allowed)
    finally:
        sock.close()


def _serve(args: argparse.Namespace, sock: socket.socket, token: str | None, allowed: tuple[str, ...] | None) -> int:
    import faiss
    import uvicorn

    from ..search.decode import return_large_allocations
    from ..search.query import open_searchers
    from ..search.server import ServerOptions, create_app, uvicorn_config

    faiss.omp_set_num_threads(max(1, args.faiss_threads))
    return_large_allocations()  # decoded pictures go back to the system when freed (search/decode.py)
    searchers = open_searchers(args.indexes, model=args.model, pretrained=args.pretrained, device=args.device,
                               precision=args.precision, backend=getattr(args, "backend", "torch"),
                               lock=not args.no_model_lock)
    options = ServerOptions(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), allowed_hosts=allowed,
                            auth_token=token, max_decodes=args.max_decodes, max_image_pixels=args.max_image_pixels,
                            cors_origins=tuple(args.cors_origin), image_url_hosts=args.image_url_hosts,
                            knn_max_images=args.max_knn_images, clip_front=getattr(args, "clip_front_dir", None),
                            knn_inline_max_bytes=int(args.knn_image_max_mb * 1024 * 1024))
    app = create_app(searchers, options)
    port = sock.getsockname()[1]
    shown = f"[{args.host.strip('[]')}]" if ":" in args.host else args.host
    if not is_loopback(args.host):
        print(f"kontrast serve: listening on {args.host}: requests need the access token "
              f"('Authorization: Bearer TOKEN', or open http://{shown}:{port}/?token=TOKEN once)")
    print(f"kontrast serve: http://{shown}:{port}/  (API docs at /docs; indexes: {', '.join(searchers)})", flush=True)
    if args.clip_front:
        print(f"kontrast serve: clip-retrieval front end at http://{shown}:{port}/clip-front/", flush=True)
    server = uvicorn.Server(uvicorn_config(app, max_connections=args.max_connections))
    server.run(sockets=[sock])
    return 0
