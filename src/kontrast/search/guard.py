"""The server's front door: one ASGI middleware that checks every request before FastAPI sees it.

In order: the URL's length (414), the ``Host`` header against the names the server answers to (400;
stops DNS rebinding, where a web page's own domain is re-pointed at 127.0.0.1 so that a browser reads a
loopback server), the access token when one is set (401), and the body size (413, decided from
``Content-Length`` before the body is read, or by counting a chunked body). Every response gets
``X-Content-Type-Options: nosniff``.

The token is accepted as ``Authorization: Bearer TOKEN``, as a ``kontrast_token`` cookie, or as a
``?token=TOKEN`` query parameter; the last answers with that cookie (``HttpOnly; SameSite=Strict``) so a
browser opening ``http://host:port/?token=TOKEN`` once can use the page, whose thumbnails and requests
then carry the cookie. Comparisons take constant time.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

from fastapi import HTTPException

TOKEN_COOKIE = "kontrast_token"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a chunked body passes the limit (FastAPI re-raises HTTPExceptions)."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body larger than {limit} bytes")


def host_name(header: str) -> str:
    """The host part of a ``Host`` header, lower case: ``[::1]:8000`` -> ``::1``, ``Example.org.`` -> ``example.org``."""
    header = header.strip().lower()
    if header.startswith("["):  # IPv6 literal
        return header[1:header.find("]")] if "]" in header else header[1:]
    if header.count(":") == 1:
        header = header.split(":", 1)[0]
    return header.rstrip(".")


async def _respond(send, status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"x-content-type-options", b"nosniff"), (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware: URL length, Host, token and body-size checks (see the module docstring).

    ``allowed_hosts``: host names (no port) the server answers to, or None for any. ``token``: required
    on every request when set.
    """

    def __init__(self, app, max_bytes: int, max_url_bytes: int = 32 * 1024,
                 allowed_hosts: Iterable[str] | None = LOOPBACK_NAMES, token: str | None = None) -> None:
        self.app, self.max_bytes, self.max_url_bytes = app, max_bytes, max_url_bytes
        self.allowed = None if allowed_hosts is None else {host_name(h) for h in allowed_hosts}
        self.token = token.encode() if token else None

    def _token_ok(self, headers: dict[bytes, bytes], query: bytes) -> tuple[bool, bool]:
        """(authorised, came from the query string)."""
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer " and hmac.compare_digest(auth[7:].strip(), self.token):
            return True, False
        cookie = headers.get(b"cookie")
        if cookie:
            try:
                jar = SimpleCookie(cookie.decode("latin-1"))
            except CookieError:
                jar = SimpleCookie()
            if TOKEN_COOKIE in jar and hmac.compare_digest(jar[TOKEN_COOKIE].value.encode(), self.token):
                return True, False
        for value in parse_qs(query.decode("latin-1")).get("token", []):
            if hmac.compare_digest(value.encode(), self.token):
                return True, True
        return False, False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        url_bytes = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b""))
        if url_bytes > self.max_url_bytes:
            await _respond(send, 414, f"URL of {url_bytes} bytes is longer than {self.max_url_bytes}; "
                                      "send long inputs in a POST body")
            return
        headers = dict(scope.get("headers") or [])
        if self.allowed is not None:
            host = host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.allowed:
                await _respond(send, 400, f"Host {host!r} is not a name this server answers to (DNS rebinding "
                                          f"protection); allowed: {', '.join(sorted(self.allowed))}. Start the server "
                                          "with --allowed-host NAME to add one")
                return
        set_cookie = False
        if self.token is not None:
            ok, set_cookie = self._token_ok(headers, scope.get("query_string", b""))
            if not ok:
                await _respond(send, 401, "this server needs its access token: send 'Authorization: Bearer TOKEN', "
                                          "or open the page once as /?token=TOKEN", [(b"www-authenticate", b"Bearer")])
                return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                too_big = False
            if too_big:
                await _respond(send, 413, f"request body larger than {self.max_bytes} bytes")
                return
        await self._forward(scope, receive, send, set_cookie)

    async def _forward(self, scope, receive, send, set_cookie: bool) -> None:
        received = 0
        started = False
        extra = [(b"x-content-type-options", b"nosniff")]
        if set_cookie:
            cookie = f"{TOKEN_COOKIE}={self.token.decode()}; HttpOnly; SameSite=Strict; Path=/"
            extra.append((b"set-cookie", cookie.encode("latin-1")))

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def send_with_headers(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except BodyTooLarge:
            if not started:
                await _respond(send, 413, f"request body larger than {self.max_bytes} bytes")
