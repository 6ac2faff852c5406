"""Hostile web archives through the crawl: each probe is generated here (the bombs are a few MB of
gzip at most), and each must end as a counted reason with the rest of the input read, inside a
memory bound on the whole process tree (the watchdog kills the run past it).

Records are written with warcio (an independent WARC writer) except where the probe is a byte
layout warcio would not write (LF-only HTTP headers, a record that lies about its length).
"""

import gzip
import io
import json
import sys
import uuid
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from clipforge.pipeline import readers
from clipforge.schemas.records import QUERY

sys.path.insert(0, str(Path(__file__).parent))
from hostile_helpers import GiB, run_bounded  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLIPFORGE = [sys.executable, "-m", "clipforge"]
BOUND = int(1.5 * GiB)


def page(n, alt_words="a photo of a cat"):
    imgs = "".join(f'<img src="/img/{n}-{i}.jpg" alt="{alt_words} {n} {i}">' for i in range(3))
    return f"<html><head><title>p{n}</title></head><body>{imgs}</body></html>".encode()


def warcio_record(uri, body, ctype="text/html; charset=utf-8", status="200 OK"):
    """One response record as its own gzip member, written by warcio."""
    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=True)
    headers = StatusAndHeaders(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))],
                               protocol="HTTP/1.1")
    w.write_record(w.create_warc_record(uri, "response", payload=io.BytesIO(body), http_headers=headers))
    return buf.getvalue()


def raw_record(uri, block, length=None, version="WARC/1.0"):
    """A response record's bytes as given (no gzip): ``length`` may lie about the block."""
    head = (f"{version}\r\nWARC-Type: response\r\nWARC-Target-URI: {uri}\r\nWARC-Date: 2009-01-13T18:00:00Z\r\n"
            f"WARC-Record-ID: <urn:uuid:{uuid.uuid4()}>\r\nContent-Type: application/http; msgtype=response\r\n"
            f"Content-Length: {len(block) if length is None else length}\r\n\r\n").encode()
    return head + block + b"\r\n\r\n"


def good_records(first, n):
    return b"".join(warcio_record(f"http://good.example/{i}.html", page(i)) for i in range(first, first + n))


def zero_bomb(uri, zeros):
    """A gzip member holding a record that claims ``zeros`` bytes of zeros after its HTTP headers;
    ~1 KB of gzip per MiB (full-flush blocks repeated), so 20 GiB is ~20 MB."""
    head = raw_record(uri, b"", length=zeros + 64)[:-4]
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n".ljust(64, b" ")
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [c.compress(head + http), c.flush(zlib.Z_FULL_FLUSH)]
    block = c.compress(b"\0" * (1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    parts.append(block * (zeros >> 20))
    parts.append(c.flush())
    return b"".join(parts)


@pytest.fixture(scope="module")
def queries(tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "queries.parquet"
    pq.write_table(pa.table({"query": ["cat", "photo"], "source": ["wordnet", "wordnet"], "count": [None, None],
                             "pmi": [None, None], "lang": ["en", "en"]}, schema=QUERY), path)
    return path


def crawl(inputs, queries, out, extra=(), timeout=300):
    outcome = run_bounded(CLIPFORGE + ["crawl", "--input", *map(str, inputs), "--queries", str(queries), "--out",
                                       str(out), "--lang", "all", "--quiet", "--direct_num_workers=1", *extra],
                          max_bytes=BOUND, timeout=timeout, cwd=ROOT)
    assert not outcome.killed, f"killed for {outcome.killed} at {outcome.peak_bytes / GiB:.2f} GiB"
    assert outcome.returncode == 0, outcome.stderr[-3000:]
    stats = json.loads((Path(out) / "crawl_stats.json").read_text())
    return stats, outcome


def kept_pages(out):
    t = pa.concat_tables([pq.read_table(p) for p in sorted(Path(out).glob("pairs-*.parquet"))])
    return sorted({u.split("/")[-1].split("-")[0] for u in t.column("url").to_pylist()})


@pytest.mark.slow
def test_a_record_of_20_gib_of_zeros_is_skipped_and_the_pages_after_it_are_read(queries, tmp_path):
    warc = tmp_path / "bomb.warc.gz"
    warc.write_bytes(good_records(0, 2) + zero_bomb("http://bomb.example/", 20 << 30) + good_records(2, 2))
    assert warc.stat().st_size < 40 << 20
    stats, outcome = crawl([warc], queries, tmp_path / "out")
    assert kept_pages(tmp_path / "out") == ["0", "1", "2", "3"]
    assert stats["dropped"].get("unreadable_record", 0) >= 1
    pages = stats["extra"]["pages"]
    assert pages["html"] == 5 and pages["truncated"] == 1     # the bomb's first 4 MiB were read as a page
    assert outcome.peak_bytes < BOUND


def test_a_file_that_inflates_past_its_budget_stops_with_a_reason():
    """A file compressed as one member (no record boundary to skip to) is cut at its budget:
    here 256 MiB, the floor (a real file inflates 3-10x)."""
    body = raw_record("http://x.example/", b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + page(0))
    zeros = 300 << 20
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    data = c.compress(body + body + raw_record("http://bomb.example/", b"", length=zeros)[:-4]) \
        + c.flush(zlib.Z_FULL_FLUSH)
    data += (c.compress(b"\0" * (1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)) * (zeros >> 20) + c.flush()
    out = list(readers.read_warc(io.BytesIO(data), "one-member.warc.gz", pages := {}, size=len(data)))
    assert sum(isinstance(c, dict) for c in out) == 6          # both records before the zeros
    problems = [c.detail for c in out if isinstance(c, readers.Unreadable)]
    assert len(problems) == 2 and "inflates past 268,435,456 bytes" in problems[-1], problems
    assert pages == {"html": 2, "unreadable": 1}


def test_wat_record_of_200_mb_is_counted_and_the_rest_read(tmp_path):
    def wat(uri, links, pad=0):
        env = {"Envelope": {"WARC-Header-Metadata": {"WARC-Target-URI": uri}, "Payload-Metadata": {
            "HTTP-Response-Metadata": {"HTML-Metadata": {"Links": links}}}}, "pad": "x" * pad}
        buf = io.BytesIO()
        w = WARCWriter(buf, gzip=True)
        w.write_record(w.create_warc_record(uri, "metadata", payload=io.BytesIO(json.dumps(env).encode()),
                                            warc_content_type="application/json"))
        return buf.getvalue()
    link = [{"path": "IMG@/src", "url": "/a.jpg", "alt": "a photo of a cat"}]
    nested = b"[" * 100_000 + b"]" * 100_000
    data = (wat("http://a.example/", link) + wat("http://big.example/", link, pad=200 << 20)
            + wat("http://types.example/", ["x"]) + wat("http://head.example/", {"Head": "x"})
            + warcio_meta(b'{"Envelope": ' + nested + b"}") + wat("http://b.example/", link))
    assert len(data) < 2 << 20
    pages = {}
    got = list(readers.read_wat(io.BytesIO(data), "hostile.wat.gz", pages, size=len(data)))
    assert [c["page_url"] for c in got if isinstance(c, dict)] == ["http://a.example/", "http://b.example/"]
    problems = [c.detail for c in got if isinstance(c, readers.Unreadable)]
    assert len(problems) == 5 and any("over 16,777,216 bytes" in p for p in problems)
    assert any("RecursionError" in p for p in problems) and any("wrong type" in p for p in problems)
    assert any("inflates past 67,108,864 bytes; skipped" in p for p in problems)
    assert pages == {"html": 2, "unreadable": 4}


def warcio_meta(payload):
    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=True)
    w.write_record(w.create_warc_record("http://nested.example/", "metadata", payload=io.BytesIO(payload),
                                        warc_content_type="application/json"))
    return buf.getvalue()


@pytest.mark.slow
def test_pages_of_multi_megabyte_alts_leave_memory_flat(queries, tmp_path):
    """Each page's alt is different and 3.5 MB (under the page cap, so each is a candidate): none
    stays in the caption cache, none is cleaned, all are text_too_long."""
    records = []
    for i in range(80):
        alt = f"a photo of a cat {i} " + "猫の写真 " * 240_000
        records.append(warcio_record(f"http://alts.example/{i}.html",
                                     f'<html><body><img src="/x/{i}.jpg" alt="{alt}"></body></html>'.encode()))
    warc = tmp_path / "alts.warc.gz"
    warc.write_bytes(good_records(0, 1) + b"".join(records) + good_records(1, 1))
    stats, outcome = crawl([warc], queries, tmp_path / "out")
    assert kept_pages(tmp_path / "out") == ["0", "1"]
    assert stats["dropped"]["text_too_long"] == 80 and "truncated" not in stats["extra"]["pages"]
    assert outcome.peak_bytes < BOUND


@pytest.mark.slow
def test_500k_nested_divs_are_cut_at_the_depth_cap(queries, tmp_path):
    n = 500_000
    html = (b'<html><body><img src="/img/0-0.jpg" alt="a photo of a cat first">' + b"<div>" * n
            + b'<img src="/img/0-1.jpg" alt="a photo of a cat deep">' + b"</div>" * n)
    warc = tmp_path / "deep.warc.gz"
    warc.write_bytes(warcio_record("http://deep.example/0.html", html) + good_records(1, 1))
    assert warc.stat().st_size < 200_000
    stats, outcome = crawl([warc], queries, tmp_path / "out", timeout=180)
    t = pa.concat_tables([pq.read_table(p) for p in (tmp_path / "out").glob("pairs-*.parquet")])
    texts = set(t.column("text").to_pylist())
    assert "a photo of a cat first" in texts and "a photo of a cat deep" not in texts
    assert stats["extra"]["pages"] == {"html": 2, "truncated": 1}


@pytest.mark.slow
def test_a_host_that_breaks_urlsplit_is_an_invalid_url(queries, tmp_path):
    html = ('<html><body><img src="http://ex\u2100ample.com/a.jpg" alt="a photo of a cat nfkc">'
            '<img src="http://bücher.example/b.jpg" alt="a photo of a cat idna">'
            '<img src="http://a\x01b.example/c.jpg" alt="a photo of a cat control">'
            f'<img src="http://{"h" * 300}.example/d.jpg" alt="a photo of a cat long"></body></html>').encode()
    warc = tmp_path / "hosts.warc.gz"
    warc.write_bytes(warcio_record("http://hosts.example/", html) + good_records(0, 1))
    stats, _ = crawl([warc], queries, tmp_path / "out")
    t = pa.concat_tables([pq.read_table(p) for p in (tmp_path / "out").glob("pairs-*.parquet")])
    assert set(t.column("text").to_pylist()) >= {"a photo of a cat idna", "a photo of a cat 0 0"}
    assert stats["dropped"]["invalid_url"] == 3


def test_a_corrupt_gzip_member_loses_only_its_own_record():
    good = [warcio_record(f"http://good.example/{i}.html", page(i)) for i in range(4)]
    bad = bytearray(good[1])
    bad[len(bad) // 2:len(bad) // 2 + 40] = b"\xff" * 40       # inside the deflate data
    data = good[0] + bytes(bad) + b"garbage between members" + good[2] + good[3]
    pages = {}
    got = list(readers.read_warc(io.BytesIO(data), "corrupt.warc.gz", pages, size=len(data)))
    assert sorted({c["page_url"] for c in got if isinstance(c, dict)}) == [
        "http://good.example/0.html", "http://good.example/2.html", "http://good.example/3.html"]
    assert sum(isinstance(c, readers.Unreadable) for c in got) >= 1


def test_a_truncated_last_record_is_unreadable_not_a_page():
    data = good_records(0, 2)
    record = gzip.decompress(warcio_record("http://cut.example/", page(9)))
    data += gzip.compress(record[:len(record) - 120])
    pages = {}
    got = list(readers.read_warc(io.BytesIO(data), "cut.warc.gz", pages, size=len(data)))
    assert sum(isinstance(c, dict) for c in got) == 6
    assert pages == {"html": 2, "unreadable": 1}


def test_clueweb_style_lf_only_headers_are_read_as_html_with_their_charset():
    """ClueWeb09 (WARC/0.18) ends HTTP header lines with a bare LF; the page is EUC-JP."""
    html = '<html><body><img src="/neko.jpg" alt="猫の写真"></body></html>'.encode("euc-jp")
    block = b"HTTP/1.1 200 OK\nContent-Type: text/html; charset=EUC-JP\nServer: Apache\n\n" + html
    data = gzip.compress(raw_record("http://clueweb.example.jp/", block, version="WARC/0.18"))
    data += warcio_record("http://png.example/", b"\x89PNG", ctype="image/png")
    data += warcio_record("http://gone.example/", b"gone", status="404 Not Found")
    pages = {}
    got = [c for c in readers.read_warc(io.BytesIO(data), "clueweb.warc.gz", pages, size=len(data))]
    assert [(c["url"], c["text"]) for c in got] == [("http://clueweb.example.jp/neko.jpg", "猫の写真")]
    assert pages == {"html": 1, "not_html": 1, "status_not_200": 1}


@pytest.mark.slow
def test_page_funnel_sums_to_the_response_records(queries, tmp_path):
    long_page = (b'<html><body><img src="/img/9-0.jpg" alt="a photo of a cat before">' + b" " * 6000
                 + b'<img src="/img/9-1.jpg" alt="a photo of a cat after"></body></html>')
    data = (good_records(0, 2) + warcio_record("http://long.example/", long_page)
            + warcio_record("http://png.example/", b"\x89PNG", ctype="image/png")
            + warcio_record("http://gone.example/", b"gone", status="404 Not Found")
            + gzip.compress(raw_record("http://nohttp.example/", b"this is not an HTTP response")))
    warc = tmp_path / "mixed.warc.gz"
    warc.write_bytes(data)
    stats, _ = crawl([warc], queries, tmp_path / "out", extra=["--max-page-bytes", "5000"])
    pages = stats["extra"]["pages"]
    assert pages == {"html": 3, "not_html": 1, "status_not_200": 1, "unreadable": 1, "truncated": 1}
    assert sum(v for k, v in pages.items() if k != "truncated") == 6
    assert stats["extra"]["limits"]["max_page_bytes"] == 5000
    t = pa.concat_tables([pq.read_table(p) for p in (tmp_path / "out").glob("pairs-*.parquet")])
    texts = set(t.column("text").to_pylist())
    assert "a photo of a cat before" in texts and "a photo of a cat after" not in texts


def test_worker_logs_of_killed_runs_are_removed_a_day_later(tmp_path, monkeypatch):
    import os
    import subprocess
    import tempfile
    import time

    from clipforge.beam import _remove_stale_logs
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen(["true"])
    gone.wait()                                              # a pid that no longer runs
    old = time.time() - 2 * 86_400
    paths = {"dead_old": tmp_path / f"clipforge-beam-{gone.pid}-a.log",
             "dead_new": tmp_path / f"clipforge-beam-{gone.pid}-b.log",
             "alive_old": tmp_path / f"clipforge-beam-{os.getpid()}-c.log",
             "other": tmp_path / "clipforge-beam-notapid.log"}
    for name, p in paths.items():
        p.write_text("log")
        if name != "dead_new":
            os.utime(p, (old, old))
    _remove_stale_logs()
    assert {n for n, p in paths.items() if p.exists()} == {"dead_new", "alive_old", "other"}
