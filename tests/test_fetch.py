"""The fetcher's scheduling on a real loopback server: transfers in flight, the per-host limit,
lazy reading of the URLs, every result once; and the socket check behind the SSRF guard."""

import http.server
import threading
import time
from collections import namedtuple

import pycurl
import pytest

from clipforge.pipeline.fetch import Fetcher, split_url


class _Counting(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        srv = self.server
        host = self.headers.get("Host", "").split(":")[0]
        with srv.lock:
            srv.now[host] = srv.now.get(host, 0) + 1
            srv.total_now += 1
            srv.peak[host] = max(srv.peak.get(host, 0), srv.now[host])
            srv.total_peak = max(srv.total_peak, srv.total_now)
        time.sleep(0.05)
        body = self.path.encode()
        with srv.lock:
            srv.now[host] -= 1
            srv.total_now -= 1
        status = 503 if self.path.startswith("/busy") else 200
        self.send_response(status)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # a client that stopped reading
            pass

    def log_message(self, *a):
        pass


@pytest.fixture
def counting_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    srv.daemon_threads = True
    srv.lock, srv.now, srv.peak, srv.total_now, srv.total_peak = threading.Lock(), {}, {}, 0, 0
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _stub(host, _port):  # two names for the loopback server, both labelled public
    if host in ("a.test", "b.test"):
        return [("127.0.0.1", True)]
    raise OSError(f"unknown host {host}")


def test_per_host_limit_and_transfers_in_flight(counting_server):
    port = counting_server.server_address[1]
    urls = [(i, f"http://{'ab'[i % 2]}.test:{port}/img/{i}") for i in range(60)]
    f = Fetcher(resolver=_stub, per_host=3)
    got = dict(f.fetch_many(urls, in_flight=10))
    assert sorted(got) == list(range(60))  # every URL once
    for i, r in got.items():
        assert r.reason is None and r.body == f"/img/{i}".encode(), r
    assert counting_server.peak == {"a.test": 3, "b.test": 3}  # the limit, and reached
    assert counting_server.total_peak == 6

    counting_server.peak, counting_server.total_peak = {}, 0
    got = dict(Fetcher(resolver=_stub, per_host=64).fetch_many(urls, in_flight=5))
    assert len(got) == 60 and counting_server.total_peak == 5


def test_urls_are_read_as_transfers_free_up(counting_server):
    port = counting_server.server_address[1]
    pulled = []

    def urls():
        for i in range(10_000):
            pulled.append(i)
            yield i, f"http://127.0.0.1:{port}/img/{i}"

    f = Fetcher(allow_private=True)
    results = f.fetch_many(urls(), in_flight=4)
    next(results)
    assert len(pulled) <= 4 * 4 + 1  # not the whole list
    results.close()


def test_retries_wait_without_holding_a_transfer(counting_server):
    """One transfer slot: a URL waiting out its backoff (1 s, then 2 s) lets the others through."""
    port = counting_server.server_address[1]
    f = Fetcher(allow_private=True, retries=2, backoff=1.0)
    items = [("busy", f"http://127.0.0.1:{port}/busy")] + [(i, f"http://127.0.0.1:{port}/img/{i}") for i in range(3)]
    got = list(f.fetch_many(items, in_flight=1))
    assert [tag for tag, _ in got] == [0, 1, 2, "busy"]
    busy = dict(got)["busy"]
    assert busy.reason == "http_503" and busy.retries == 2


def test_time_queued_behind_the_per_host_limit_is_not_counted_against_the_deadline(counting_server):
    """One transfer at a time to the host, 40 images of 50 ms each: the last starts about 2 s after
    the first. The deadline (1 s) is each image's own time, from when its transfer starts, so a
    host with many images does not turn the later ones into deadline_exceeded."""
    port = counting_server.server_address[1]
    urls = [(i, f"http://127.0.0.1:{port}/img/{i}") for i in range(40)]
    got = dict(Fetcher(allow_private=True, per_host=1, deadline=1.0).fetch_many(urls, in_flight=40))
    assert sorted(got) == list(range(40))
    assert {i: r.reason for i, r in got.items() if r.reason} == {}
    assert counting_server.peak == {"127.0.0.1": 1}


Addr = namedtuple("Addr", "family socktype protocol addr")


def test_a_socket_to_an_unchecked_address_is_refused():
    """libcurl is pinned to the checked addresses; should it open a socket anywhere else, the
    socket callback refuses it (no packet: SOCKET_BAD is returned before a socket exists)."""
    from clipforge.pipeline.fetch import _Job, _Run
    import ipaddress
    import socket
    run = _Run(Fetcher(), 1)
    job = _Job(0, "http://a.test/x.jpg")
    job.host, job.allowed = "a.test", {ipaddress.ip_address("93.184.215.14")}
    assert run._open_socket(job, Addr(socket.AF_INET, socket.SOCK_STREAM, 6, ("169.254.169.254", 80))) == pycurl.SOCKET_BAD
    assert "169.254.169.254" in job.refused
    sock = run._open_socket(job, Addr(socket.AF_INET, socket.SOCK_STREAM, 6, ("93.184.215.14", 80)))
    assert isinstance(sock, socket.socket)
    sock.close()
    run.close()


@pytest.mark.parametrize("url, sent", [
    ("http://example.com/a b.jpg", "http://example.com/a%20b.jpg"),
    ("http://Example.COM:8080/ü/x.jpg?q=é#frag", "http://example.com:8080/%C3%BC/x.jpg?q=%C3%A9"),
    ("https://bücher.example/x%20y.jpg", "https://xn--bcher-kva.example/x%20y.jpg"),
    ("http://user:pw@example.com/x.jpg", "http://example.com/x.jpg"),
    ("http://[::1]:81/x", "http://[::1]:81/x"),
])
def test_urls_are_sent_encoded(url, sent):
    assert split_url(url)[0] == sent


@pytest.mark.parametrize("url", ["ftp://example.com/x", "http:///x", "http://example.com:99999/x",
                                 "http://exa mple.com/x", "http://example.com/x\r\nHost: evil", "javascript:alert(1)"])
def test_bad_urls_are_invalid(url):
    got = Fetcher().fetch(url)
    assert got.reason == "invalid_url", got


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1 that no authority signed, and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return tmp_path / "cert.pem", tmp_path / "key.pem"


def test_https_certificates_are_verified(tmp_path):
    """HTTPS goes through libcurl with verification on: a certificate no authority signed is a
    connect_error (with the TLS reason), not a fetched image."""
    import ssl
    cert, key = _self_signed(tmp_path)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    srv.daemon_threads = True
    srv.lock, srv.now, srv.peak, srv.total_now, srv.total_peak = threading.Lock(), {}, {}, 0, 0
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        got = Fetcher(allow_private=True, retries=0).fetch(f"https://127.0.0.1:{srv.server_address[1]}/img/1")
        assert got.reason == "connect_error" and got.body is None
        assert "certificate" in got.error.lower() or "ssl" in got.error.lower(), got.error
    finally:
        srv.shutdown()
        srv.server_close()
