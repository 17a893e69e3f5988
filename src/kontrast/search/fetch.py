"""Fetching a query image from a URL for the server (clip-retrieval's ``image_url``), without becoming a proxy
into the server's own network.

A server that fetches URLs for its clients can be pointed at addresses only it can reach (the cloud metadata
service at 169.254.169.254, an admin page on 127.0.0.1, a database on 10.x): server-side request forgery.
``UrlFetcher`` therefore fetches only when ``kontrast serve --allow-image-urls HOST[,HOST...]`` turned it on,
and then only:

- ``http``/``https`` URLs without user information, whose host is on the allow-list (``*`` allows any host);
- after resolving the host and checking EVERY address it resolves to: loopback, private, link-local,
  multicast, reserved, unspecified, shared (100.64/10) and IPv4-mapped/6to4/Teredo forms of those are
  refused (``is_public_address``), so a public name that resolves to 127.0.0.1 is refused too;
- by connecting to the checked address itself (not resolving again: no DNS rebinding between the check and
  the connection); HTTPS still verifies the certificate against the host name (SNI);
- following at most ``max_redirects`` redirects, each checked like a new URL (allow-list and addresses);
- reading at most ``max_bytes`` (``Content-Length`` checked first) within ``timeout`` seconds in total.

Every refusal or failure is a ``FetchError`` with a one-line message and an HTTP status for the server
(400: the URL is refused; 502/504: the remote server failed or was too slow).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from urllib.parse import urljoin, urlsplit

from ..errors import KontrastError

Resolver = Callable[[str, int], list[str]]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_TIMEOUT = 10.0
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT; not is_private in every Python


class FetchError(KontrastError):
    """A URL the server will not or could not fetch; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def is_public_address(address: str) -> bool:
    """True for a globally routable unicast address; False for loopback, private, link-local, reserved, ..."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or (ip.sixtofour if ip.sixtofour is not None else None)
        if ip.teredo is not None:
            return False
        if embedded is not None:
            return is_public_address(str(embedded))
    if ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved \
            or ip.is_unspecified or not ip.is_global:
        return False
    return not (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (``socket.getaddrinfo``)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def parse_allow_list(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"a.org, b.org"`` (or several such values) -> ``("a.org", "b.org")``; lower case, no empty names."""
    if value is None:
        return ()
    parts = [value] if isinstance(value, str) else list(value)
    names = [p.strip().lower().rstrip(".") for part in parts for p in part.split(",")]
    for name in names:
        if name and ("/" in name or ":" in name and not name.startswith("[")):
            raise KontrastError(f"--allow-image-urls {name!r}: give host names only (e.g. images.example.org), "
                                "without scheme, port or path")
    return tuple(dict.fromkeys(n for n in names if n))


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to a fixed, already checked address (the Host header still names the host)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed, already checked address; the certificate is verified against the host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class UrlFetcher:
    """Fetch image bytes from allowed hosts on public addresses (see the module docstring)."""

    def __init__(self, allowed_hosts: Iterable[str], max_bytes: int = DEFAULT_MAX_BYTES,
                 timeout: float = DEFAULT_TIMEOUT, max_redirects: int = 3, resolver: Resolver = system_resolver,
                 address_ok: Callable[[str], bool] = is_public_address) -> None:
        self.allowed = tuple(h.lower().rstrip(".") for h in allowed_hosts)
        self.max_bytes, self.timeout, self.max_redirects = max_bytes, timeout, max_redirects
        self.resolver, self.address_ok = resolver, address_ok

    @property
    def enabled(self) -> bool:
        return bool(self.allowed)

    def check(self, url: str) -> tuple[str, str, int, str, str]:
        """``(scheme, host, port, path with query, checked address)``; ``FetchError`` when refused."""
        if not self.enabled:
            raise FetchError("this server does not fetch image URLs (start it with --allow-image-urls HOST to "
                             "allow some hosts); send the image itself in 'image' (base64)")
        if len(url) > 4096:
            raise FetchError(f"image_url of {len(url)} characters is too long (at most 4096)")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise FetchError(f"image_url {url[:200]!r} is not a valid URL ({exc})") from None
        if parts.scheme not in ("http", "https"):
            raise FetchError(f"image_url {url[:200]!r}: only http and https URLs are fetched")
        if parts.username is not None or parts.password is not None:
            raise FetchError(f"image_url {url[:200]!r}: URLs with user information (user@host) are refused")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise FetchError(f"image_url {url[:200]!r} has no host")
        if "*" not in self.allowed and host not in self.allowed:
            raise FetchError(f"image_url host {host!r} is not on this server's --allow-image-urls list")
        port = port or (443 if parts.scheme == "https" else 80)
        try:
            ipaddress.ip_address(host)
            addresses = [host]
        except ValueError:
            try:
                addresses = self.resolver(host, port)
            except (OSError, UnicodeError) as exc:
                raise FetchError(f"image_url host {host!r} does not resolve ({exc})") from None
        if not addresses:
            raise FetchError(f"image_url host {host!r} does not resolve")
        bad = [a for a in addresses if not self.address_ok(a)]
        if bad:
            raise FetchError(f"image_url host {host!r} resolves to a non-public address ({bad[0]}); this server "
                             "only fetches from public addresses")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return parts.scheme, host, port, path, addresses[0]

    def fetch(self, url: str) -> bytes:
        """The body of ``url`` (after at most ``max_redirects`` checked redirects); ``FetchError`` otherwise."""
        deadline = time.monotonic() + self.timeout
        for _hop in range(self.max_redirects + 1):
            scheme, host, port, path, address = self.check(url)
            status, location, body = self._get(scheme, host, port, path, address, deadline)
            if status in (301, 302, 303, 307, 308):
                if not location:
                    raise FetchError(f"image_url {url[:200]!r} redirected without a Location", 502)
                url = urljoin(url, location)
                continue
            if status != 200:
                raise FetchError(f"image_url {url[:200]!r} answered HTTP {status}", 502)
            return body
        raise FetchError(f"image_url {url[:200]!r} redirected more than {self.max_redirects} times", 502)

    def _get(self, scheme: str, host: str, port: int, path: str, address: str,
             deadline: float) -> tuple[int, str | None, bytes]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise FetchError(f"image_url {host}: no answer within {self.timeout:g} s", 504)
        cls = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
        conn = cls(host, port, address, timeout=left)
        try:
            conn.request("GET", path, headers={"User-Agent": "kontrast-serve", "Accept": "image/*"})
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                return response.status, response.getheader("Location"), b""
            if response.status != 200:
                return response.status, None, b""
            length = response.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                raise FetchError(f"image_url {host}: the image is {int(length)} bytes, more than this server fetches "
                                 f"({self.max_bytes})")
            chunks, total = [], 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FetchError(f"image_url {host}: not received within {self.timeout:g} s", 504)
                if conn.sock is not None:
                    conn.sock.settimeout(left)  # a slow drip cannot outlast the deadline
                chunk = response.read1(65536)  # at most one read from the socket
                if not chunk:
                    break
                total += len(chunk)
                if total > self.max_bytes:
                    raise FetchError(f"image_url {host}: the image is more than {self.max_bytes} bytes")
                chunks.append(chunk)
            return 200, None, b"".join(chunks)
        except FetchError:
            raise
        except TimeoutError:
            raise FetchError(f"image_url {host}: no answer within {self.timeout:g} s", 504) from None
        except ssl.SSLError as exc:
            raise FetchError(f"image_url {host}: TLS failed ({exc.reason or exc})", 502) from None
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(f"image_url {host}: cannot fetch it ({type(exc).__name__}: {exc})", 502) from None
        finally:
            conn.close()
