"""A loopback HTTP server for a generated demo world.

Serves ``WORLD/site`` as static files and the special behaviours listed in
``WORLD/routes.json`` (status codes, flaky, slow, trickle, endless and huge bodies, wrong
content types, redirects, X-Robots-Tag). HTTP/1.1 with keep-alive, one thread per
connection. It binds loopback addresses only.

    with DemoServer(world_dir) as srv:      # binds the port the world was generated for
        requests.get(srv.base_url + "/index.html")

``stop()`` ends every open connection, endless streams included, and returns promptly.
"""

import ipaddress
import json
import mimetypes
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from clipforge.demo.world import load_manifest
from clipforge.errors import InputError, SystemRefusal

_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".svg": "image/svg+xml",
          ".html": "text/html; charset=utf-8", ".txt": "text/plain", ".gif": "image/gif"}
_JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "clipforge-demo/1"
    timeout = 30  # an idle keep-alive connection is closed after this many seconds
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def log_message(self, fmt, *args):  # quiet: tests and the demo print their own progress
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    # --- dispatch --------------------------------------------------------------------------
    def _serve(self, head):
        srv = self.server
        path = unquote(urlsplit(self.path).path)
        with srv.lock:
            srv.hits[path] = srv.hits.get(path, 0) + 1
            hits = srv.hits[path]
        route = srv.routes.get(path)
        try:
            if route is None:
                self._file(path.lstrip("/"), None, {}, head)
            else:
                getattr(self, "_r_" + route["kind"])(route, hits, head)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError, OSError):
            self.close_connection = True

    def _send(self, status, ctype, length=None, headers=(), chunked=False):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length or 0))
        for k, v in dict(headers).items():
            self.send_header(k, v)
        self.end_headers()

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _read(self, rel):
        root = self.server.site
        p = (root / rel).resolve()
        if root not in p.parents or not p.is_file():
            return None
        return p.read_bytes()

    def _not_found(self, head):
        body = b"<h1>404 Not Found</h1>"
        self._send(404, "text/html", len(body))
        if not head:
            self.wfile.write(body)

    def _file(self, rel, ctype, headers, head):
        if rel in ("", "/"):
            rel = "index.html"
        data = self._read(rel)
        if data is None:
            return self._not_found(head)
        ctype = ctype or _TYPES.get(Path(rel).suffix.lower()) or mimetypes.guess_type(rel)[0] or "application/octet-stream"
        self._send(200, ctype, len(data), headers)
        if not head:
            self.wfile.write(data)

    # --- route kinds (see demo/messy.py) -------------------------------------------------------
    def _r_file(self, r, hits, head):
        self._file(r["file"], r.get("content_type"), r.get("headers", {}), head)

    def _r_status(self, r, hits, head):
        body = f"<h1>{r['status']}</h1>".encode()
        self._send(r["status"], "text/html", len(body))
        if not head:
            self.wfile.write(body)

    def _r_flaky(self, r, hits, head):
        if hits <= r["fail"]:
            body = b"<h1>503 Service Unavailable</h1>"
            self._send(503, "text/html", len(body), {"Retry-After": "0"})
            if not head:
                self.wfile.write(body)
        else:
            self._file(r["file"], None, {}, head)

    def _r_slow(self, r, hits, head):
        if self.server.stopping.wait(r["delay"]):
            return
        self._file(r["file"], None, {}, head)

    def _r_redirect(self, r, hits, head):
        self._send(r["status"], "text/html", 0, {"Location": r["location"]})

    def _r_trickle(self, r, hits, head):
        data = self._read(r["file"])
        self._send(200, "image/jpeg", len(data))
        if head:
            return
        for i in range(0, len(data), r["chunk"]):
            self.wfile.write(data[i:i + r["chunk"]])
            self.wfile.flush()
            if self.server.stopping.wait(r["interval"]):
                return

    def _r_endless(self, r, hits, head):
        self._send(200, "image/jpeg", chunked=True)
        if head:
            return
        self.close_connection = True
        self._chunk(_JPEG_HEAD)
        block = bytes(r["chunk"])
        while not self.server.stopping.is_set():
            self._chunk(block)
            self.wfile.flush()
            time.sleep(r["interval"])

    def _r_huge(self, r, hits, head):
        total = r["bytes"]
        self._send(200, "image/jpeg", None if r["chunked"] else total, chunked=r["chunked"])
        if head:
            return
        block = bytes(1 << 16)
        sent = 0
        first = _JPEG_HEAD + block[len(_JPEG_HEAD):]
        while sent < total and not self.server.stopping.is_set():
            data = (first if sent == 0 else block)[: total - sent]
            self._chunk(data) if r["chunked"] else self.wfile.write(data)
            sent += len(data)
        if r["chunked"]:
            self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, site, routes):
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.site, self.routes = site, routes
        self.lock = threading.Lock()
        self.hits = {}
        self.stopping = threading.Event()
        self.conns = set()
        self.accepted = 0
        super().__init__(addr, _Handler)

    def process_request(self, request, client_address):
        with self.lock:
            self.conns.add(request)
            self.accepted += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.lock:
            self.conns.discard(request)
        super().shutdown_request(request)

    def close_all(self):
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class DemoServer:
    """Serve a generated world on loopback. Use as a context manager, or start()/stop()."""

    def __init__(self, world_dir, host="127.0.0.1", port=None):
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError as e:
            raise InputError(str(e)) from None
        if not loopback:
            raise InputError(f"the demo server binds loopback addresses only, not {host}")
        self.world = Path(world_dir)
        self.manifest = load_manifest(self.world)
        self.host = host
        self.port = self.manifest["port"] if port is None else port
        self._httpd = None
        self._thread = None

    @property
    def base_url(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def url(self, path):
        return self.base_url + "/" + path.lstrip("/")

    @property
    def hits(self):
        """Requests received so far, by path."""
        with self._httpd.lock:
            return dict(self._httpd.hits)

    def add_route(self, path, route):
        """Serve ``path`` with a route of the kinds in routes.json (tests add redirects this way)."""
        self._httpd.routes[path] = route

    @property
    def connections(self):
        """TCP connections accepted so far."""
        return self._httpd.accepted

    def start(self):
        routes = json.loads((self.world / "routes.json").read_text())
        try:
            self._httpd = _Server((self.host, self.port), self.world.joinpath("site").resolve(), routes)
        except OSError as e:
            raise SystemRefusal(f"cannot listen on {self.host}:{self.port}: {e.strerror}; the world was generated "
                                f"for port {self.manifest['port']}, regenerate it with another --port") from None
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="demo-server", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._httpd is None:
            return
        self._httpd.stopping.set()
        self._httpd.shutdown()
        self._httpd.close_all()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def serve_until_signal(self):
        """Run in the foreground until SIGINT or SIGTERM (for `clipforge demo serve`)."""
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        with self:
            print(f"serving {self.world} at {self.base_url}/ (Ctrl-C to stop)", flush=True)
            done.wait()
        print("stopped", flush=True)
