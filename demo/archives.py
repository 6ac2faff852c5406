"""Common Crawl-style WARC and WAT files of the demo web's pages, written with warcio.

The WARC holds a ``warcinfo`` record, then a request and a response record per capture.
The WAT holds, as Common Crawl's do, one ``metadata`` record of JSON per WARC record; the
JSON of a response carries the page's ``HTML-Metadata``: ``Head`` (title, base, metas) and
``Links`` with ``IMG@/src`` entries whose ``url`` is the ``src`` exactly as written (so
relative URLs stay relative) and ``alt``/``title`` as written.

Dates and record ids derive from the capture index, so the bytes are reproducible.
"""

import io
import json
import uuid
from datetime import datetime, timedelta, timezone

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

_NS = uuid.UUID("6f1c2b7e-3d1a-4c1e-9a51-3c0ffee0c11f")
_EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _rid(*parts):
    return f"<urn:uuid:{uuid.uuid5(_NS, '/'.join(map(str, parts)))}>"


def _date(i):
    return (_EPOCH + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ")


class Capture:
    """One fetched page: URL, HTTP status and headers, body, and the HTML facts for the WAT."""

    def __init__(self, url, status, headers, body, title="", base=None, metas=(), links=()):
        self.url, self.status, self.headers, self.body = url, status, list(headers), body
        self.title, self.base, self.metas, self.links = title, base, list(metas), list(links)


def write_warc_and_wat(captures, warc_name, seed):
    """Return (warc bytes, wat bytes), both gzip-per-record as Common Crawl ships them."""
    warc_buf, wat_buf = io.BytesIO(), io.BytesIO()
    warc = WARCWriter(warc_buf, gzip=True, warc_version="1.0")
    wat = WARCWriter(wat_buf, gzip=True, warc_version="1.0")

    info = b"software: clipforge demo\r\nformat: WARC File Format 1.0\r\nisPartOf: clipforge-demo\r\n"
    warc.write_record(warc.create_warc_record(
        "", "warcinfo", payload=io.BytesIO(info), warc_content_type="application/warc-fields",
        warc_headers_dict={"WARC-Record-ID": _rid(seed, "warcinfo"), "WARC-Date": _date(0),
                           "WARC-Filename": warc_name}))
    wat_name = warc_name.replace(".warc.gz", ".warc.wat.gz")
    wat.write_record(wat.create_warc_record(
        "", "warcinfo", payload=io.BytesIO(info), warc_content_type="application/warc-fields",
        warc_headers_dict={"WARC-Record-ID": _rid(seed, "wat-warcinfo"), "WARC-Date": _date(0),
                           "WARC-Filename": wat_name}))

    for i, cap in enumerate(captures, start=1):
        path = "/" + cap.url.split("://", 1)[1].split("/", 1)[1]
        host = cap.url.split("://", 1)[1].split("/", 1)[0]
        req_id, resp_id = _rid(seed, i, "request"), _rid(seed, i, "response")
        req_headers = StatusAndHeaders(f"GET {path} HTTP/1.1", [("Host", host), ("User-Agent", "clipforge-demo")],
                                       is_http_request=True)
        offset = warc_buf.tell()
        warc.write_record(warc.create_warc_record(
            cap.url, "request", http_headers=req_headers,
            warc_headers_dict={"WARC-Record-ID": req_id, "WARC-Date": _date(i),
                               "WARC-Concurrent-To": resp_id}))
        req_len = warc_buf.tell() - offset
        reason = {200: "OK", 404: "Not Found"}.get(cap.status, "OK")
        resp_headers = StatusAndHeaders(f"{cap.status} {reason}", cap.headers + [("Content-Length", str(len(cap.body)))],
                                        protocol="HTTP/1.1")
        resp_offset = warc_buf.tell()
        record = warc.create_warc_record(
            cap.url, "response", payload=io.BytesIO(cap.body), http_headers=resp_headers,
            warc_headers_dict={"WARC-Record-ID": resp_id, "WARC-Date": _date(i)})
        warc.write_record(record)
        resp_len = warc_buf.tell() - resp_offset

        for kind, rid, off, length in (("request", req_id, offset, req_len),
                                       ("response", resp_id, resp_offset, resp_len)):
            envelope = _wat_envelope(cap, kind, rid, i, warc_name, off, length)
            body = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            wat.write_record(wat.create_warc_record(
                cap.url, "metadata", payload=io.BytesIO(body), warc_content_type="application/json",
                warc_headers_dict={"WARC-Record-ID": _rid(seed, i, kind, "wat"), "WARC-Date": _date(i),
                                   "WARC-Refers-To": rid, "Content-Type": "application/json"}))
    return warc_buf.getvalue(), wat_buf.getvalue()


def _wat_envelope(cap, kind, rid, i, warc_name, offset, length):
    header_meta = {
        "WARC-Type": kind,
        "WARC-Target-URI": cap.url,
        "WARC-Date": _date(i),
        "WARC-Record-ID": rid,
        "Content-Type": f"application/http; msgtype={kind}",
    }
    if kind == "request":
        payload = {"Actual-Content-Type": "application/http; msgtype=request",
                   "HTTP-Request-Metadata": {"Request-Message": {"Method": "GET", "Version": "HTTP/1.1"},
                                             "Headers": {"User-Agent": "clipforge-demo"}}}
    else:
        head = {"Title": cap.title, "Metas": cap.metas}
        if cap.base:
            head["Base"] = cap.base
        payload = {
            "Actual-Content-Type": "application/http; msgtype=response",
            "HTTP-Response-Metadata": {
                "Response-Message": {"Version": "HTTP/1.1", "Status": str(cap.status), "Reason": "OK"},
                "Headers": dict(cap.headers),
                "Entity-Length": str(len(cap.body)),
                "HTML-Metadata": {"Head": head, "Links": cap.links},
            },
        }
    return {
        "Container": {"Filename": warc_name, "Compressed": True,
                      "Offset": str(offset), "Gzip-Metadata": {"Deflate-Length": str(length)}},
        "Envelope": {"Format": "WARC", "WARC-Header-Metadata": header_meta, "Payload-Metadata": payload},
    }
