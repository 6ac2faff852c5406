"""Fetch image URLs safely, many at a time: an SSRF guard, deadlines, a byte cap, bounded
redirects, retries, a per-host limit.

``Fetcher.fetch_many(items)`` takes (tag, url) pairs and yields (tag, ``Fetched``) as each one
finishes, with up to ``in_flight`` transfers at once; ``Fetcher.fetch(url)`` fetches one URL.
A ``Fetched`` has the body, or ``reason`` set to one of ``invalid_url``, ``private_address``,
``dns_error``, ``connect_error``, ``timeout``, ``deadline_exceeded``, ``too_large``,
``too_many_redirects``, ``http_<status>``, ``not_an_image_content_type`` or ``robots_noai``.

Transfers run in libcurl (pycurl's multi interface): one thread drives every connection of a
worker, and the bytes are read and parsed in C. Python threads each holding a blocking
connection cost about 1.5 ms of CPU per image on loopback, mostly contending for the GIL;
libcurl costs about 0.25 ms.

SSRF guard: every host is resolved by the fetcher's resolver and refused, before any
connection, when one of its addresses is not public (loopback, private, link-local
including cloud metadata at 169.254.169.254, shared, reserved, multicast, unspecified),
unless ``allow_private`` is set. The check runs for every redirect hop (redirects are not
followed by libcurl, but here, one hop at a time). libcurl is handed the checked addresses
(``CURLOPT_RESOLVE``): it does no DNS lookup of its own, so an answer cannot change between
check and connect; and every socket it opens is checked once more against those addresses.
Proxies from the environment are not used. Name lookups run in a small thread pool so a slow
DNS server does not stall the other transfers; answers are kept for 30 seconds.
"""

import heapq
import ipaddress
import math
import os
import socket
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import pycurl

DEFAULT_USER_AGENT = "clipforge/0.1 (+https://github.com/clipforge/clipforge; image-text dataset builder)"
TRANSIENT = {429, 500, 502, 503, 504}
REDIRECTS = {301, 302, 303, 307, 308}
DRAIN_LIMIT = 65536  # bytes of an error or redirect body read so its connection can be kept
DNS_TTL = 30.0
DNS_CACHE_MAX = 100_000
# Characters left as they are in a URL's path and query; the rest (spaces, non-ASCII, quotes)
# is percent-encoded as browsers and urllib3 do, and an existing %XX is kept.
_URL_SAFE = "/:@!$&'()*+,;=-._~%?[]"

try:  # the wheel's libcurl has no CA path of its own: use certifi's bundle, as requests does
    import certifi
    CA_BUNDLE = certifi.where()
except ImportError:  # pragma: no cover - requests (a dependency) brings certifi
    CA_BUNDLE = None


class RefusedAddress(Exception):
    pass


class NameResolutionError(Exception):
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
            raise NameResolutionError(f"cannot resolve {host}: {e}") from e
        if not resolved:
            raise NameResolutionError(f"cannot resolve {host}: no address")
        if not self.allow_private:
            refused = [ip for ip, public in resolved if not public]
            if refused:
                raise RefusedAddress(f"{host} resolves to non-public address {refused[0]}")
        return [ip for ip, _ in resolved]


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


def _ip_literal(host):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def split_url(url):
    """(url as sent, scheme, host, port) with the host IDNA-encoded and the path and query
    percent-encoded; ValueError for anything that is not an http(s) URL with a host."""
    if any(c in url for c in "\r\n\t\x00"):
        raise ValueError("control character in URL")
    parts = urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in ("http", "https") or not host:
        raise ValueError("not an http(s) URL with a host")
    port = parts.port or (443 if scheme == "https" else 80)  # ValueError for a bad port
    if _ip_literal(host) is None:
        host = host.encode("idna").decode("ascii")  # UnicodeError is a ValueError
        if not host or any(c in host for c in ",/\\ @[]"):
            raise ValueError("bad host name")
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{port}"
    path = quote(parts.path or "/", safe=_URL_SAFE)
    query = quote(parts.query, safe=_URL_SAFE)
    return urlunsplit((scheme, netloc, path, query, "")), scheme, host, port


class _Job:
    """One URL on its way through hops and attempts."""

    def __init__(self, tag, url):
        self.tag, self.result, self.current = tag, Fetched(url), url
        self.start, self.attempt = None, 0
        self.host = self.sent_url = None
        self.port = 0
        self.allowed = ()
        self._new_attempt()

    def _new_attempt(self):
        self.status, self.headers, self.headers_done = None, {}, False
        self.chunks, self.size, self.drained = [], 0, 0
        self.abort = self.abort_error = self.refused = None
        self.checked = False


class Fetcher:
    """One per worker; ``fetch_many`` may run in several threads at once, each call with its
    own transfers."""

    def __init__(self, connect_timeout=5.0, read_timeout=10.0, deadline=20.0, max_bytes=20 << 20,
                 max_redirects=5, retries=2, backoff=0.5, per_host=16, user_agent=DEFAULT_USER_AGENT,
                 allow_private=False, respect_noai=True, resolver=system_resolver, dns_threads=8):
        self.connect_timeout, self.read_timeout, self.deadline = connect_timeout, read_timeout, deadline
        self.max_bytes, self.max_redirects, self.retries, self.backoff = max_bytes, max_redirects, retries, backoff
        self.per_host, self.user_agent, self.respect_noai = max(1, per_host), user_agent, respect_noai
        self.guard = Guard(resolver, allow_private)
        self.dns_threads = dns_threads
        self._dns = {}  # (host, port) -> (expires, addresses or RefusedAddress)
        self._dns_lock = threading.Lock()

    def fetch(self, url):
        for _, got in self.fetch_many([(None, url)], in_flight=1):
            return got

    def fetch_many(self, items, in_flight=32):
        """Yield (tag, Fetched) for each (tag, url) of ``items`` as it finishes. ``items`` is read
        as transfers free up (at most 4 x ``in_flight`` URLs are held at once), so it may be a
        generator over any number of URLs."""
        run = _Run(self, max(1, in_flight))
        try:
            yield from run.loop(iter(items))
        finally:
            run.close()

    # --- name lookups ---------------------------------------------------------------------
    def _cached(self, host, port):
        hit = self._dns.get((host, port))
        if hit and hit[0] > time.monotonic():
            return hit[1]
        return None

    def _lookup(self, host, port):
        """Addresses the guard allows, or RefusedAddress; raises NameResolutionError."""
        try:
            got = self.guard.addresses(host, port)
        except RefusedAddress as e:
            got = e
        with self._dns_lock:
            if len(self._dns) >= DNS_CACHE_MAX:
                self._dns.clear()
            self._dns[(host, port)] = (time.monotonic() + DNS_TTL, got)
        return got


class _Run:
    """The state of one ``fetch_many`` call: a curl multi handle, its easy handles, the jobs."""

    def __init__(self, fetcher, in_flight):
        self.f, self.in_flight = fetcher, in_flight
        self.multi = pycurl.CurlMulti()
        self.handles, self.free = [], []
        self.ready = deque()  # jobs to start their next hop
        self.host_wait = defaultdict(deque)  # jobs waiting for a slot on their host
        self.host_busy = defaultdict(int)
        self.busy = 0  # transfers and lookups under way
        self.open = 0  # jobs taken from the input and not yet yielded
        self.timers = []  # (when, seq, job): retries waiting out their backoff
        self.seq = 0
        self.lookups = {}  # future -> job
        self.dns_pool = None
        self.done = deque()
        self.headers = [f"User-Agent: {fetcher.user_agent}", "Accept: image/*"]

    def close(self):
        for h in self.handles:
            try:
                self.multi.remove_handle(h)
            except pycurl.error:
                pass
            h.close()
        self.multi.close()
        if self.dns_pool:
            self.dns_pool.shutdown(wait=False, cancel_futures=True)

    def loop(self, items):
        exhausted = False
        while True:
            while not exhausted and self.open < 4 * self.in_flight:
                try:
                    tag, url = next(items)
                except StopIteration:
                    exhausted = True
                    break
                self.open += 1
                self.ready.append(_Job(tag, url))
            self._fire_timers()
            self._collect_lookups()
            self._start_ready()
            self._perform()
            while self.done:
                job = self.done.popleft()
                self.open -= 1
                yield job.tag, job.result
            if exhausted and not self.open:
                return
            self._wait()

    # --- scheduling ---------------------------------------------------------------------
    def _start_ready(self):
        while self.ready and self.busy < self.in_flight:
            self._begin_hop(self.ready.popleft())

    def _begin_hop(self, job):
        f = self.f
        try:
            job.sent_url, _, host, port = split_url(job.current)
        except (ValueError, UnicodeError):
            return self._finish(job, "invalid_url", f"cannot fetch {job.current!r}")
        if self.host_busy[host] >= f.per_host:
            self.host_wait[host].append(job)
            return
        # The deadline is the image's own time, from when its first transfer gets a slot: waiting
        # behind the per-host limit (other images of a slow host) does not count against it.
        if job.start is None:
            job.start = time.monotonic()
        job.host, job.port = host, port
        self.host_busy[host] += 1
        self.busy += 1
        if _ip_literal(host) is not None or f._cached(host, port) is not None:
            self._resolved(job, lambda: f._cached(host, port) or f._lookup(host, port))
            return
        if self.dns_pool is None:
            self.dns_pool = ThreadPoolExecutor(max_workers=f.dns_threads, thread_name_prefix="dns")
        self.lookups[self.dns_pool.submit(f._lookup, host, port)] = job

    def _collect_lookups(self):
        for fut in [x for x in self.lookups if x.done()]:
            self._resolved(self.lookups.pop(fut), fut.result)

    def _resolved(self, job, get):
        try:
            got = get()
        except NameResolutionError as e:
            return self._release(job) or self._finish(job, "dns_error", str(e))
        if isinstance(got, RefusedAddress):
            return self._release(job) or self._finish(job, "private_address", str(got))
        remaining = self.f.deadline - (time.monotonic() - job.start)
        if remaining <= 0:
            return self._release(job) or self._finish(job, "deadline_exceeded", f"not done after {self.f.deadline} s")
        job.allowed = {ipaddress.ip_address(ip.split("%", 1)[0]) for ip in got}
        self._transfer(job, got, remaining)

    def _release(self, job):
        """Free the job's host and transfer slots; a job waiting for that host may go."""
        self.busy -= 1
        self.host_busy[job.host] -= 1
        waiting = self.host_wait.get(job.host)
        if waiting:
            self.ready.appendleft(waiting.popleft())
            if not waiting:
                del self.host_wait[job.host]
        if not self.host_busy[job.host]:
            del self.host_busy[job.host]

    def _finish(self, job, reason=None, error=None, body=None, content_type=None):
        r = job.result
        r.reason, r.error = reason, error
        if reason is None:
            r.final_url, r.body, r.content_type = job.current, body, content_type
        self.done.append(job)

    def _fire_timers(self):
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            self.ready.appendleft(heapq.heappop(self.timers)[2])

    def _wait(self):
        if self.done or (self.ready and self.busy < self.in_flight):
            return
        timeout = 1.0
        if self.timers:
            timeout = min(timeout, max(0.0, self.timers[0][0] - time.monotonic()))
        if self.lookups:
            timeout = min(timeout, 0.002)
        curl_ms = self.multi.timeout()
        if curl_ms >= 0:
            timeout = min(timeout, curl_ms / 1000)
        if len(self.handles) - len(self.free):
            self.multi.select(timeout)
        elif timeout > 0:
            time.sleep(timeout)

    # --- one transfer --------------------------------------------------------------------
    def _transfer(self, job, addresses, remaining):
        f = self.f
        job._new_attempt()
        c = self.free.pop() if self.free else self._new_handle()
        c.reset()
        c.job = job
        c.setopt(pycurl.URL, job.sent_url)
        if _ip_literal(job.host) is None:
            pinned = ",".join(f"[{ip}]" if ":" in ip else ip for ip in addresses)
            c.setopt(pycurl.RESOLVE, [f"{job.host}:{job.port}:{pinned}"])
        c.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        c.setopt(pycurl.FOLLOWLOCATION, 0)
        c.setopt(pycurl.PROXY, "")
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        c.setopt(pycurl.HTTPHEADER, self.headers)
        c.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(min(f.connect_timeout, remaining) * 1000)))
        c.setopt(pycurl.TIMEOUT_MS, max(1, int(remaining * 1000)))
        c.setopt(pycurl.LOW_SPEED_LIMIT, 1)  # the read timeout: no byte for this many seconds
        c.setopt(pycurl.LOW_SPEED_TIME, max(1, math.ceil(f.read_timeout)))
        c.setopt(pycurl.MAXFILESIZE_LARGE, f.max_bytes)
        c.setopt(pycurl.HEADERFUNCTION, lambda line: self._header(job, line))
        c.setopt(pycurl.WRITEFUNCTION, lambda data: self._write(job, data))
        c.setopt(pycurl.OPENSOCKETFUNCTION, lambda purpose, addr: self._open_socket(job, addr))
        if CA_BUNDLE:
            c.setopt(pycurl.CAINFO, CA_BUNDLE)
        self.multi.add_handle(c)

    def _new_handle(self):
        c = pycurl.Curl()
        self.handles.append(c)
        return c

    def _open_socket(self, job, addr):
        """Every connection libcurl opens, checked against the addresses the guard allowed."""
        try:
            ip = ipaddress.ip_address(str(addr.addr[0]).split("%", 1)[0])
        except ValueError:
            ip = None
        if ip not in job.allowed:
            job.refused = f"{job.host}: connection to unchecked address {addr.addr[0]} refused"
            return pycurl.SOCKET_BAD
        sock = socket.socket(addr.family, addr.socktype, addr.protocol)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _header(self, job, line):
        if line.startswith(b"HTTP/"):  # a new response (after 100 Continue): its headers only
            job.headers, job.headers_done = {}, False
            try:
                job.status = int(line.split(None, 2)[1])
            except (IndexError, ValueError):
                job.status = None
            return
        if line in (b"\r\n", b"\n"):
            job.headers_done = True
            return
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            key, value = name.strip().lower(), value.strip()
            job.headers[key] = f"{job.headers[key]}, {value}" if key in job.headers else value

    def _write(self, job, data):
        if not job.checked:
            job.checked = True
            if job.status == 200:
                job.abort, job.abort_error = self._check(job)
                if job.abort:
                    return 0  # stops the transfer: CURLE_WRITE_ERROR
        if job.status != 200:  # an error page or a redirect's body: drained a little, not kept
            job.drained += len(data)
            if job.drained > DRAIN_LIMIT:
                job.abort = "_drained"
                return 0
            return None
        job.size += len(data)
        if job.size > self.f.max_bytes:
            job.abort, job.abort_error = "too_large", f"body passed {self.f.max_bytes} bytes"
            return 0
        job.chunks.append(data)
        return None

    def _check(self, job):
        """(reason, error) from a 200 response's headers, before its body is kept."""
        h = job.headers
        ctype = (h.get("content-type") or "").split(";")[0].strip().lower()
        if ctype.startswith(("text/", "application/json", "application/xml", "application/javascript")):
            return "not_an_image_content_type", f"Content-Type {ctype}"
        robots = (h.get("x-robots-tag") or "").lower().replace(",", " ").split()
        if self.f.respect_noai and ("noai" in robots or "noimageai" in robots):
            return "robots_noai", f"X-Robots-Tag: {' '.join(robots)}"
        length = h.get("content-length")
        if length and length.isdigit() and int(length) > self.f.max_bytes:
            return "too_large", f"Content-Length {length} > {self.f.max_bytes}"
        return None, None

    def _perform(self):
        if len(self.handles) == len(self.free):
            return
        while True:
            ret, _ = self.multi.perform()
            if ret != pycurl.E_CALL_MULTI_PERFORM:
                break
        while True:
            queued, ok, failed = self.multi.info_read()
            for c in ok:
                self._ended(c, 0, "")
            for c, errno, msg in failed:
                self._ended(c, errno, msg)
            if not queued:
                break

    def _ended(self, c, errno, msg):
        job = c.job
        os_errno = c.getinfo(pycurl.OS_ERRNO) if errno else 0
        self.multi.remove_handle(c)
        c.job = None
        self.free.append(c)
        self._release(job)
        reason, error = self._outcome(job, errno, msg, os_errno)
        status = job.status
        transient = reason in ("connect_error", "timeout") or (reason is None and status in TRANSIENT)
        if transient and job.attempt < self.f.retries:
            wait = self.f.backoff * 2 ** job.attempt
            if time.monotonic() - job.start + wait <= self.f.deadline:
                job.attempt += 1
                job.result.retries += 1
                self.seq += 1
                heapq.heappush(self.timers, (time.monotonic() + wait, self.seq, job))
                return
        if reason:
            return self._finish(job, reason, error)
        if status in REDIRECTS:
            location = job.headers.get("location")
            if not location:
                return self._finish(job, f"http_{status}", "redirect without Location")
            if job.result.redirects >= self.f.max_redirects:
                return self._finish(job, "too_many_redirects", f"more than {self.f.max_redirects} redirects")
            job.current = urljoin(job.current, location)
            job.result.redirects += 1
            job.attempt = 0
            self.ready.appendleft(job)
            return
        if status != 200:
            return self._finish(job, f"http_{status}", f"HTTP {status}")
        body = b"".join(job.chunks)
        job.chunks = []
        return self._finish(job, body=body, content_type=job.headers.get("content-type", ""))

    def _outcome(self, job, errno, msg, os_errno):
        """(reason, error) of an attempt that ended; (None, None) when a response arrived."""
        f = self.f
        if job.refused:
            return "private_address", job.refused
        if job.abort and job.abort != "_drained":
            return job.abort, job.abort_error
        if job.headers_done and job.status is not None and job.status != 200:
            return None, None  # the status decides; what happened to the body does not matter
        if errno == 0:
            if job.status is None:
                return "connect_error", "no HTTP status line"
            if job.status == 200 and not job.checked:  # an empty body: its headers are still checked
                job.checked = True
                return self._check(job)
            return None, None
        detail = f"{msg} ({os.strerror(os_errno)})" if os_errno else msg
        if errno == pycurl.E_OPERATION_TIMEDOUT:
            if time.monotonic() - job.start >= f.deadline - 0.01:
                return "deadline_exceeded", f"not done after {f.deadline} s"
            return "timeout", detail
        if errno == pycurl.E_FILESIZE_EXCEEDED:
            return "too_large", f"larger than {f.max_bytes} bytes ({msg})"
        if errno in (pycurl.E_URL_MALFORMAT, pycurl.E_UNSUPPORTED_PROTOCOL):
            return "invalid_url", detail
        if errno == pycurl.E_COULDNT_RESOLVE_HOST:
            return "dns_error", detail
        return "connect_error", detail
