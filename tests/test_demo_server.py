"""The demo server: every messy case answers as designed, endless bodies really stream,
connections are reused, and stop() ends everything promptly."""

import http.client
import io
import json
import socket
import threading
import time

import pytest
import requests
from PIL import Image, UnidentifiedImageError

from clipforge.demo.server import DemoServer
from clipforge.demo.world import load_manifest


@pytest.fixture
def fresh_server(world_dir):
    """A server of its own on a free port (fresh request counters)."""
    with DemoServer(world_dir, port=0) as srv:
        yield srv


def get(srv, path, **kw):
    return requests.get(srv.url(path), timeout=kw.pop("timeout", 10), **kw)


def is_image(data, fmt="JPEG"):
    im = Image.open(io.BytesIO(data))
    im.load()
    return im.format == fmt


def read_some(resp, limit, seconds, chunk=65536):
    """Read up to limit bytes or for `seconds`; return (bytes read, chunks, finished)."""
    n, chunks, start = 0, 0, time.monotonic()
    it = resp.iter_content(chunk)
    for chunk in it:
        n += len(chunk)
        chunks += 1
        if n >= limit or time.monotonic() - start > seconds:
            return n, chunks, False
    return n, chunks, True


def path_of(url):
    return "/" + url.split("/", 3)[3]


# One checker per messy case; the test below fails if the world gains a case with none.
def _not_found(srv, path):
    assert get(srv, path).status_code == 404


def _server_error(srv, path):
    assert [get(srv, path).status_code for _ in range(2)] == [500, 500]


def _flaky(srv, path):
    first, second = get(srv, path), get(srv, path)
    assert first.status_code == 503 and first.headers["Retry-After"] == "0"
    assert second.status_code == 200 and is_image(second.content)


def _slow(srv, path):
    start = time.monotonic()
    r = get(srv, path)
    assert time.monotonic() - start >= 1.4  # the designed delay, not a performance bound
    assert r.status_code == 200 and is_image(r.content)


def _trickle(srv, path):
    with requests.get(srv.url(path), stream=True, timeout=(5, 2)) as r:
        total = int(r.headers["Content-Length"])
        n, chunks, finished = read_some(r, total, 2.0, chunk=64)
    assert not finished and 64 <= n < total and chunks >= 2


def _endless(srv, path):
    with requests.get(srv.url(path), stream=True, timeout=(5, 2)) as r:
        assert r.status_code == 200 and "Content-Length" not in r.headers
        assert r.headers["Transfer-Encoding"] == "chunked"
        n, chunks, finished = read_some(r, 4 << 20, 30)
    assert not finished and n >= 4 << 20 and chunks > 10


def _huge(srv, path):
    with requests.get(srv.url(path), stream=True, timeout=10) as r:
        assert int(r.headers["Content-Length"]) == 48 << 20
        first = next(r.iter_content(1024))
        assert first.startswith(b"\xff\xd8")


def _huge_chunked(srv, path):
    with requests.get(srv.url(path), stream=True, timeout=10) as r:
        assert "Content-Length" not in r.headers
        n, _, finished = read_some(r, 64 << 20, 60)
    assert finished and n == 48 << 20


def _truncated(srv, path):
    r = get(srv, path)
    assert r.status_code == 200 and r.content.startswith(b"\xff\xd8")
    with pytest.raises(OSError):
        Image.open(io.BytesIO(r.content)).load()


def _corrupt(srv, path):
    r = get(srv, path)
    assert r.headers["Content-Type"] == "image/jpeg" and len(r.content) == 4096
    with pytest.raises(UnidentifiedImageError):   # random bytes: no image format recognises them
        Image.open(io.BytesIO(r.content)).load()


def _bomb(srv, path):
    r = get(srv, path)
    assert len(r.content) < 100_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(r.content))


def _tiny(srv, path):
    assert Image.open(io.BytesIO(get(srv, path).content)).size == (12, 12)


def _banner(srv, path):
    assert Image.open(io.BytesIO(get(srv, path).content)).size == (640, 40)


def _svg(srv, path):
    r = get(srv, path)
    assert r.headers["Content-Type"] == "image/svg+xml" and r.content.startswith(b"<svg")


def _image_as_html(srv, path):
    r = get(srv, path)
    assert r.headers["Content-Type"] == "text/html" and is_image(r.content)


def _html_as_image(srv, path):
    r = get(srv, path)
    assert r.headers["Content-Type"] == "image/jpeg" and r.content.startswith(b"<!DOCTYPE html>")


def _redirect(srv, path):
    r = get(srv, path)
    assert [h.status_code for h in r.history] == [301, 302] and r.status_code == 200 and is_image(r.content)


def _redirect_hop(srv, path):
    r = get(srv, path, allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == "good.jpg"


def _redirect_loop(srv, path):
    with pytest.raises(requests.TooManyRedirects):
        get(srv, path)


def _noai(srv, path):
    r = get(srv, path)
    assert r.headers["X-Robots-Tag"] == "noai, noimageai" and is_image(r.content)


def _noindex(srv, path):
    r = get(srv, path)
    assert r.headers["X-Robots-Tag"] == "noindex" and is_image(r.content)


CHECKS = {
    "not_found": _not_found, "server_error": _server_error, "flaky": _flaky, "slow": _slow,
    "trickle": _trickle, "endless": _endless, "huge": _huge, "huge_chunked": _huge_chunked,
    "truncated": _truncated, "corrupt": _corrupt, "bomb": _bomb, "tiny": _tiny, "banner": _banner,
    "svg": _svg, "image_as_html": _image_as_html, "html_as_image": _html_as_image, "redirect": _redirect,
    "redirect_hop": _redirect_hop, "redirect_loop": _redirect_loop, "redirect_loop_b": _redirect_loop,
    "noai": _noai, "noindex": _noindex,
}


def test_every_messy_case_has_a_check(world_dir):
    assert {c["name"] for c in load_manifest(world_dir)["messy"]} == set(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_messy_case_answers_as_designed(world_dir, fresh_server, name):
    case = next(c for c in load_manifest(world_dir)["messy"] if c["name"] == name)
    CHECKS[name](fresh_server, path_of(case["url"]))


def test_every_url_in_the_world_points_at_the_server(world_dir, demo_server):
    import pyarrow.parquet as pq

    truth = pq.read_table(world_dir / "truth.parquet").to_pylist()
    assert all(t["url"].startswith(demo_server.base_url + "/") for t in truth)
    ok = [t for t in truth if t["kind"] in ("image", "duplicate")]
    with requests.Session() as s:
        for t in ok[:60]:
            r = s.get(t["url"], timeout=5)
            assert r.status_code == 200 and r.headers["Content-Type"].startswith("image/"), t["url"]


def test_pages_are_served_with_their_charset_header(world_dir, demo_server):
    routes = json.loads((world_dir / "routes.json").read_text())
    with requests.Session() as s:
        for page in sorted((world_dir / "site" / "pages").glob("*.html")):
            r = s.get(demo_server.url("pages/" + page.name), timeout=5)
            assert r.content == page.read_bytes()
            expected = routes.get("/pages/" + page.name, {}).get("content_type", "text/html; charset=utf-8")
            assert r.headers["Content-Type"] == expected


def test_keep_alive_reuses_one_connection(fresh_server):
    before = fresh_server.connections
    with requests.Session() as s:
        for _ in range(20):
            assert s.get(fresh_server.url("index.html"), timeout=5).status_code == 200
    assert fresh_server.connections - before == 1


def test_head_and_path_traversal(world_dir, fresh_server):
    r = requests.head(fresh_server.url("index.html"), timeout=5)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) > 0 and r.content == b""
    conn = http.client.HTTPConnection("127.0.0.1", fresh_server.port, timeout=5)
    for raw in ("/../manifest.json", "/%2e%2e/manifest.json", "/pages/../../routes.json"):
        conn.request("GET", raw)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 404, raw
    conn.close()


def test_stop_ends_endless_streams_and_idle_connections(world_dir):
    srv = DemoServer(world_dir, port=0).start()
    port = srv.port
    stream = requests.get(srv.url("x/endless.jpg"), stream=True, timeout=(5, 5))
    next(stream.iter_content(1024))
    idle = socket.create_connection(("127.0.0.1", port))
    idle.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(12) == b"HTTP/1.1 200"  # answered; the connection stays open (keep-alive)
    stopper = threading.Thread(target=srv.stop)
    stopper.start()
    stopper.join(timeout=15)
    assert not stopper.is_alive(), "stop() hung"
    try:  # the endless body ends: cut off mid-stream, or closed; a read timeout would mean it hangs
        for _ in stream.iter_content(65536):
            pass
    except requests.exceptions.ChunkedEncodingError:
        pass
    idle.settimeout(5)
    while idle.recv(65536):  # rest of the response, then EOF: closed by the server (else a timeout)
        pass
    idle.close()
    with pytest.raises(ConnectionRefusedError):  # nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_binds_loopback_only_and_reports_a_busy_port(world_dir):
    for host in ("0.0.0.0", "10.1.2.3", "192.168.0.1"):
        with pytest.raises(ValueError, match="loopback addresses only"):
            DemoServer(world_dir, host=host)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError, match="cannot listen on 127.0.0.1"):
            DemoServer(world_dir, port=busy.getsockname()[1]).start()


def test_serves_on_ipv6_loopback(world_dir):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        srv = DemoServer(world_dir, host="::1", port=0).start()
    except OSError as e:
        pytest.skip(f"::1 not available: {e}")
    try:
        assert srv.base_url.startswith("http://[::1]:")
        assert requests.get(srv.url("index.html"), timeout=5).status_code == 200
    finally:
        srv.stop()
