"""Fetch one image URL safely: an SSRF guard, deadlines, a byte cap, bounded redirects, retries.

``Fetcher.fetch(url)`` returns a ``Fetched`` with the body, or with ``reason`` set to one of
``invalid_url``, ``private_address``, ``dns_error``, ``connect_error``, ``timeout``,
``deadline_exceeded``, ``too_large``, ``too_many_redirects``, ``http_<status>``,
``not_an_image_content_type`` or ``robots_noai``.

SSRF guard: every host is resolved by the fetcher's resolver and refused, before any
connection, when one of its addresses is not public (loopback, private, link-local
including cloud metadata at 169.254.169.254, shared, reserved, multicast, unspecified),
unless ``allow_private`` is set. The check runs for every redirect hop, and the connection
is made to the address that was checked (no second DNS lookup to rebind).
"""

import ipaddress
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError, MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError

DEFAULT_USER_AGENT = "clipforge/0.1 (+https://github.com/clipforge/clipforge; image-text dataset builder)"
TRANSIENT = {429, 500, 502, 503, 504}


class RefusedAddress(Exception):
    pass


def system_resolver(host, port):
    """[(ip, is_public)] for a host name, from the system's resolver."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out = []
    for family, _, _, _, sockaddr in infos:
        ip = sockaddr[0]
        out.append((ip, is_public(ip)))
    return list(dict.fromkeys(out))


def is_public(ip):
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


class Guard:
    """Resolves a host and decides whether connecting to it is allowed."""

    def __init__(self, resolver=system_resolver, allow_private=False):
        self.resolver, self.allow_private = resolver, allow_private

    def addresses(self, host, port):
        try:
            resolved = self.resolver(host, port)
        except (socket.gaierror, UnicodeError, OSError) as e:
            raise NameResolutionError(host, None, e) from e
        if not resolved:
            raise NameResolutionError(host, None, socket.gaierror("no address"))
        if not self.allow_private:
            refused = [ip for ip, public in resolved if not public]
            if refused:
                raise RefusedAddress(f"{host} resolves to non-public address {refused[0]}")
        return [ip for ip, _ in resolved]


def _guarded(base, guard):
    class Guarded(base):
        def _new_conn(self):
            last = None
            for ip in guard.addresses(self.host, self.port):
                try:
                    sock = socket.create_connection((ip, self.port), self.timeout)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    return sock
                except socket.timeout as e:
                    raise ConnectTimeoutError(self, f"connect to {self.host} ({ip}) timed out") from e
                except OSError as e:
                    last = e
            raise NewConnectionError(self, f"cannot connect to {self.host}: {last}")
    return Guarded


@dataclass
class Fetched:
    url: str
    final_url: str = None
    body: bytes = None
    content_type: str = None
    reason: str = None
    error: str = None
    redirects: int = 0
    retries: int = 0


class Fetcher:
    """Thread-safe; one per worker. Keeps connections alive per host."""

    def __init__(self, connect_timeout=5.0, read_timeout=10.0, deadline=20.0, max_bytes=20 << 20,
                 max_redirects=5, retries=2, backoff=0.5, per_host=16, user_agent=DEFAULT_USER_AGENT,
                 allow_private=False, respect_noai=True, resolver=system_resolver, pool_size=64):
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self.deadline, self.max_bytes, self.max_redirects = deadline, max_bytes, max_redirects
        self.retries, self.backoff, self.respect_noai = retries, backoff, respect_noai
        self.user_agent = user_agent
        self.guard = Guard(resolver, allow_private)
        self.pool = urllib3.PoolManager(num_pools=pool_size, maxsize=per_host, block=False, retries=False)
        http_pool = type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": _guarded(HTTPConnection, self.guard)})
        https_pool = type("GuardedHTTPSPool", (HTTPSConnectionPool,),
                          {"ConnectionCls": _guarded(HTTPSConnection, self.guard)})
        self.pool.pool_classes_by_scheme = {"http": http_pool, "https": https_pool}
        self._host_slots = defaultdict(lambda: threading.BoundedSemaphore(per_host))
        self._lock = threading.Lock()

    def _slot(self, host):
        with self._lock:
            return self._host_slots[host]

    def fetch(self, url):
        result = Fetched(url)
        start = time.monotonic()
        current = url
        for hop in range(self.max_redirects + 1):
            try:
                parts = urlsplit(current)
                host = parts.hostname
            except ValueError:
                host = None
            if parts.scheme not in ("http", "https") or not host:
                result.reason, result.error = "invalid_url", f"cannot fetch {current!r}"
                return result
            try:  # the guard before any connection, for every hop
                self.guard.addresses(host, parts.port or (443 if parts.scheme == "https" else 80))
            except RefusedAddress as e:
                result.reason, result.error = "private_address", str(e)
                return result
            except NameResolutionError as e:
                result.reason, result.error = "dns_error", str(e)
                return result
            status, headers, body, reason, error = self._attempts(current, host, start, result)
            if reason:
                result.reason, result.error = reason, error
                return result
            if status in (301, 302, 303, 307, 308):
                location = headers.get("Location")
                if not location:
                    result.reason, result.error = f"http_{status}", "redirect without Location"
                    return result
                current = urljoin(current, location)
                result.redirects += 1
                continue
            if status != 200:
                result.reason, result.error = f"http_{status}", f"HTTP {status}"
                return result
            result.final_url, result.body = current, body
            result.content_type = headers.get("Content-Type", "")
            return result
        result.reason, result.error = "too_many_redirects", f"more than {self.max_redirects} redirects"
        return result

    def _attempts(self, url, host, start, result):
        """(status, headers, body, reason, error) of one URL, retrying transient failures."""
        for attempt in range(self.retries + 1):
            if attempt:
                result.retries += 1
                wait = self.backoff * 2 ** (attempt - 1)
                if time.monotonic() - start + wait > self.deadline:
                    break
                time.sleep(wait)
            status, headers, body, reason, error = self._once(url, host, start)
            transient = reason in ("connect_error", "timeout") or (reason is None and status in TRANSIENT)
            if not transient:
                return status, headers, body, reason, error
        return status, headers, body, reason or (f"http_{status}" if status in TRANSIENT else None), error

    def _once(self, url, host, start):
        with self._slot(host):
            try:
                resp = self.pool.request("GET", url, headers={"User-Agent": self.user_agent, "Accept": "image/*"},
                                         redirect=False, preload_content=False, timeout=self.timeout)
            except (RefusedAddress, HTTPError, OSError) as e:
                inner = e.reason if isinstance(e, MaxRetryError) else e
                return (None, {}, None) + _failure(inner)
            complete = False
            try:
                status, headers = resp.status, resp.headers
                if status != 200:
                    return status, headers, None, None, None
                ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
                if ctype.startswith(("text/", "application/json", "application/xml", "application/javascript")):
                    return status, headers, None, "not_an_image_content_type", f"Content-Type {ctype}"
                robots = (headers.get("X-Robots-Tag") or "").lower().replace(",", " ").split()
                if self.respect_noai and ("noai" in robots or "noimageai" in robots):
                    return status, headers, None, "robots_noai", f"X-Robots-Tag: {' '.join(robots)}"
                length = headers.get("Content-Length")
                if length and length.isdigit() and int(length) > self.max_bytes:
                    return status, headers, None, "too_large", f"Content-Length {length} > {self.max_bytes}"
                chunks, size = [], 0
                while True:
                    chunk = resp.read1(65536)  # whatever has arrived: the deadline is checked often
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > self.max_bytes:
                        return status, headers, None, "too_large", f"body passed {self.max_bytes} bytes"
                    if time.monotonic() - start > self.deadline:
                        return status, headers, None, "deadline_exceeded", f"not done after {self.deadline} s"
                    chunks.append(chunk)
                complete = True
                return status, headers, b"".join(chunks), None, None
            except ReadTimeoutError as e:
                return None, {}, None, "timeout", str(e)
            except (ProtocolError, HTTPError, OSError) as e:
                return None, {}, None, "connect_error", str(e)
            finally:
                # a body read to the end (or never started on a small error page) goes back to
                # the pool for reuse; one abandoned part-way cannot, so its connection is closed
                if complete or (resp.status != 200 and _drainable(resp)):
                    resp.release_conn()
                else:
                    resp.close()


def _failure(e):
    """(reason, error) of a request that got no response. urllib3 makes NewConnectionError (a
    refused or unreachable address) a subclass of ConnectTimeoutError, so it is tested first: a
    refused connection is connect_error, not timeout."""
    if isinstance(e, RefusedAddress):  # rebinding: the address changed between check and connect
        return "private_address", str(e)
    if isinstance(e, NameResolutionError):  # the name stopped resolving between check and connect
        return "dns_error", str(e)
    if isinstance(e, NewConnectionError):
        return "connect_error", str(e)
    if isinstance(e, (ConnectTimeoutError, ReadTimeoutError, socket.timeout)):
        return "timeout", str(e)
    return "connect_error", str(e)


def _drainable(resp, limit=65536):
    try:
        resp.drain_conn() if (resp.length_remaining or 0) <= limit else None
        return resp.isclosed() or resp.length_remaining == 0
    except Exception:
        return False
