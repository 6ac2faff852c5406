"""Readers: web archives and URL lists -> candidate pairs (``schemas.records.CANDIDATE_PAIR``).

- ``read_warc``: HTML responses of a WARC; every ``<img>`` with its ``alt`` (or ``title``
  when alt is missing or empty), ``src`` resolved against ``<base href>`` or the page URL.
  The page is decoded with its charset: byte-order mark, then the HTTP header, then
  ``<meta charset>``/``http-equiv``, then detection (resiliparse), as browsers do; legacy
  labels map to their supersets (gb2312 -> gb18030, iso-8859-1 -> windows-1252).
- ``read_wat``: Common Crawl WAT metadata records; ``IMG@/src`` links with ``alt``/``title``,
  resolved against the page's ``Head.Base`` or URL (relative links kept, unlike cc2dataset).
- ``read_url_list``: parquet, CSV, TSV or JSONL with img2dataset's (``url``/``caption``) or
  LAION's (``URL``/``TEXT``) columns, or any named by the caller.

Readers yield candidate dicts, or ``Unreadable(detail)`` for a record they cannot read (a
malformed WARC record, a broken gzip member, a garbage line), so that it is counted.
"""

import bz2
import codecs
import contextlib
import csv
import gzip
import http.client
import io
import json
import re
import zlib
from dataclasses import dataclass
from urllib.parse import urljoin

import pyarrow as pa
import pyarrow.compute as pc
from fastwarc.warc import ArchiveIterator, WarcRecordType
from resiliparse.parse.encoding import detect_encoding
from selectolax.lexbor import LexborHTMLParser

from clipforge import limits
from clipforge.errors import InputError


@dataclass
class Unreadable:
    detail: str


_ALIASES = {"gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "iso-8859-1": "cp1252",
            "latin1": "cp1252", "latin-1": "cp1252", "us-ascii": "cp1252", "ascii": "cp1252",
            "iso8859-1": "cp1252", "x-sjis": "shift_jis", "windows-874": "cp874", "tis-620": "cp874"}
_CHARSET_IN_TYPE = re.compile(rb"charset\s*=\s*[\"']?([\w.:-]+)", re.IGNORECASE)
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([\w.:-]+)", re.IGNORECASE)
HTML_TYPES = ("text/html", "application/xhtml+xml")


def _codec(label):
    if not label:
        return None
    label = label.strip().lower()
    label = _ALIASES.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def decode_html(body, content_type=""):
    """(text, encoding used) for an HTML body."""
    for bom, enc in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if body.startswith(bom):
            return body[len(bom):].decode(enc, errors="replace"), enc
    enc = None
    m = _CHARSET_IN_TYPE.search(content_type.encode("latin-1", "replace") if isinstance(content_type, str) else content_type)
    if m:
        enc = _codec(m.group(1).decode("ascii", "replace"))
    if enc is None:
        m = _META_CHARSET.search(body[:4096])
        if m:
            enc = _codec(m.group(1).decode("ascii", "replace"))
    if enc is None:
        enc = _codec(detect_encoding(body[:65536])) or "utf-8"
    return body.decode(enc, errors="replace"), enc


def html_images(html_text, page_url):
    """(src, text, attr) of every <img> of a page, src resolved; attr is alt, title or none."""
    tree = LexborHTMLParser(html_text)
    base_node = tree.css_first("base[href]")
    base = urljoin(page_url, base_node.attributes.get("href") or "") if base_node else page_url
    out = []
    for img in tree.css("img"):
        attrs = img.attributes
        src = (attrs.get("src") or "").strip()
        if (not src or src.startswith("data:")) and attrs.get("data-src"):
            src = attrs["data-src"].strip()  # lazy loading puts the real URL in data-src
        if not src:
            continue
        text, attr = image_text(attrs.get("alt"), attrs.get("title"))
        out.append((resolve(base, src), text, attr))
    return out


# Elements that do not nest (void) or whose end tag is optional: they do not deepen a page.
_FLAT = frozenset("area base br col embed hr img input link meta param source track wbr p li dt dd tr td th "
                  "option optgroup rb rt rp thead tbody tfoot colgroup caption html head body".split())
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)")
_SCAN_ABOVE = 20_000


def bounded_html(text):
    """(text, whether it was cut): a page cut before the tag where nesting passes
    ``limits.MAX_HTML_DEPTH`` or elements pass ``limits.MAX_HTML_ELEMENTS``. Tree building takes
    time in proportion to depth for every element, so a page of 500k nested <div> would take hours;
    real pages nest a few dozen deep. Pages with fewer than 20,000 tags are not scanned."""
    if text.count("<") <= _SCAN_ABOVE:
        return text, False
    depth, n = 0, 0
    for m in _TAG.finditer(text):
        n += 1
        if n > limits.MAX_HTML_ELEMENTS:
            return text[:m.start()], True
        if m.group(2).lower() in _FLAT:
            continue
        if m.group(1):
            depth = max(0, depth - 1)
        else:
            depth += 1
            if depth > limits.MAX_HTML_DEPTH:
                return text[:m.start()], True
    return text, False


def image_text(alt, title):
    """(text, attribute it came from): alt, or title where alt is missing or blank."""
    if alt and alt.strip():
        return alt, "alt"
    if title and title.strip():
        return title, "title"
    return alt or "", "alt" if alt is not None else "none"


def resolve(base, src):
    if src.startswith(("data:", "javascript:", "mailto:", "blob:")):
        return src
    try:
        return urljoin(base, src)
    except ValueError:
        return src


def _target_uri(uri):
    """WARC-Target-URI without the angle brackets some writers (wget, WARC/1.1) put around it."""
    if uri and uri.startswith("<") and uri.endswith(">"):
        return uri[1:-1]
    return uri


def _candidate(url, text, page_url, attr, fmt, source):
    # A text or URL past its cap cannot give a pair (it is text_too_long or invalid_url whatever
    # follows): cut here so that no candidate carries megabytes through the batch.
    if len(text) > limits.MAX_RAW_TEXT_CHARS:
        text = text[:limits.MAX_RAW_TEXT_CHARS + 1]
    if len(url) > limits.MAX_URL_CHARS:
        url = url[:limits.MAX_URL_CHARS + 1]
    return {"url": url, "text": text, "page_url": page_url, "text_attr": attr, "input_format": fmt,
            "source_file": source}


class Inflater(io.RawIOBase):
    """A ``.warc.gz`` stream inflated gzip member by member, within a byte budget, resynchronising
    after a corrupt member.

    WARC writers (Common Crawl, wget, warcio) compress each record as its own gzip member. When a
    member is corrupt (bad deflate data, garbage between members, a truncated file), the stream
    ends there and ``error`` says why; ``resume()`` then finds the next member that starts a WARC
    record (gzip's magic bytes whose first inflated bytes are ``WARC/``) and the stream goes on
    from it. Past ``budget`` inflated bytes the stream ends for good (a compression bomb).
    """

    CHUNK = 1 << 16
    MAGIC = b"\x1f\x8b\x08"

    def __init__(self, raw, budget, member_cap=limits.MAX_WARC_MEMBER_BYTES):
        super().__init__()
        self.raw, self.budget, self.member_cap = raw, budget, member_cap
        self.member_out, self.member_out_start, self.records_in_member = 0, 0, 0
        self.inflated = 0            # bytes out
        self.offset = 0              # compressed bytes taken from raw
        self.member_start = 0        # offset of the current member
        self.pending = b""           # compressed bytes taken but not given to the decompressor
        self.scan = b""              # after an error: where the search for the next member starts
        self.d, self.fresh = zlib.decompressobj(31), True
        self.error, self.over_budget, self.broken = "", False, False

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.inflated

    def seek(self, pos, whence=io.SEEK_SET):
        """Forward only (fastwarc skips the rest of a record this way): reads and discards."""
        target = pos if whence == io.SEEK_SET else self.inflated + pos if whence == io.SEEK_CUR else None
        if target is None or target < self.inflated:
            raise io.UnsupportedOperation("an inflating stream seeks forward only")
        buf = bytearray(min(1 << 20, max(1, target - self.inflated)))
        while self.inflated < target:
            n = self.readinto(memoryview(buf)[:min(len(buf), target - self.inflated)])
            if not n:
                break
        return self.inflated

    def _take(self):
        chunk = self.raw.read(self.CHUNK)
        self.offset += len(chunk)
        return chunk

    def _break(self, why, rest):
        self.error, self.broken, self.scan, self.pending = f"{why} (compressed byte {self.member_start:,})", True, rest, b""
        return 0

    def readinto(self, b):
        if self.broken or self.over_budget:
            return 0
        while True:
            data = self.d.unconsumed_tail or self.pending or self._take()
            self.pending = b""
            if not data:
                return 0 if self.fresh else self._break("gzip member breaks off", b"")
            if self.fresh:
                if len(data) < 3 and data == self.MAGIC[:len(data)]:
                    more = self._take()
                    if more:
                        self.pending = data + more
                        continue
                if not data.startswith(self.MAGIC):
                    if not data.strip(b"\x00\r\n\t "):      # padding at the end of a file
                        self.pending = b""
                        continue
                    return self._break("bytes that are not a gzip member", data)
                self.member_start, self.fresh = self.offset - len(data), False
                self.member_out, self.member_out_start, self.records_in_member = 0, self.inflated, 0
            try:
                out = self.d.decompress(data, len(b))
            except zlib.error as e:
                return self._break(f"corrupt gzip member: {e}", data)
            if self.d.eof:
                self.pending, self.d, self.fresh = self.d.unused_data, zlib.decompressobj(31), True
            if out:
                self.inflated += len(out)
                self.member_out += len(out)
                if self.member_out > self.member_cap and self.records_in_member <= 1 and not self.fresh:
                    # One record's member (WARC writers compress record by record) far past any
                    # page: skip to the next member instead of inflating it. A file compressed as
                    # a single member holds many records by then, and is read on.
                    return self._break(f"a record inflates past {self.member_cap:,} bytes; skipped",
                                       self.d.unconsumed_tail)
                if self.inflated > self.budget:
                    self.error, self.over_budget = (f"inflates past {self.budget:,} bytes "
                                                    f"({limits.MAX_DECOMPRESSION_RATIO}x its compressed size)"), True
                    return 0
                b[:len(out)] = out
                return len(out)

    def note_record(self, start):
        """A record begins at inflated offset ``start`` (fastwarc's stream_pos)."""
        if start >= self.member_out_start:
            self.records_in_member += 1

    def resume(self):
        """After a corrupt member: go on at the next member that starts a WARC record. False at the end."""
        if not self.broken:
            return False
        buf, start = self.scan, 0
        self.scan = b""
        while True:
            base = self.offset - len(buf)           # compressed offset of buf[0]
            i = buf.find(self.MAGIC, start)
            if i < 0 or len(buf) - i < 4096:
                more = self._take()
                if more:
                    buf += more
                    if len(buf) > (1 << 21) and i < 0:   # a bounded window: drop what was searched
                        buf, start = buf[-(1 << 20):], 0
                    continue
                if i < 0:
                    self.error = ""
                    return False
            if base + i > self.member_start:
                try:
                    head = zlib.decompressobj(31).decompress(buf[i:i + 4096], 16)
                except zlib.error:
                    head = b""
                if head.startswith(b"WARC/"):
                    self.pending, self.d, self.fresh = buf[i:], zlib.decompressobj(31), True
                    self.broken, self.error = False, ""
                    return True
            start = i + 1


def _open_archive(stream, size):
    """The stream to give fastwarc: an ``Inflater`` for gzip, the stream itself otherwise
    (plain WARC, or a compression fastwarc detects itself)."""
    head = stream.read(2)
    if head == b"\x1f\x8b":
        return Inflater(_Prefixed(head, stream), limits.decompressed_budget(size or 0))
    if stream.seekable():
        stream.seek(0)
        return stream
    return _Prefixed(head, stream)


class _Prefixed(io.RawIOBase):
    """``prefix`` then the rest of ``stream``."""

    def __init__(self, prefix, stream):
        super().__init__()
        self.prefix, self.stream = prefix, stream

    def readable(self):
        return True

    def readinto(self, b):
        if self.prefix:
            n = min(len(b), len(self.prefix))
            b[:n], self.prefix = self.prefix[:n], self.prefix[n:]
            return n
        data = self.stream.read(len(b))
        b[:len(data)] = data
        return len(data)


_PASS = (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError)


def _records(stream, size, record_type, source):
    """(record or None, problem) for every record of one type, across corrupt gzip members."""
    archive = _open_archive(stream, size)
    inflater = isinstance(archive, Inflater)
    while True:
        base = archive.tell() if inflater else 0
        for record in ArchiveIterator(archive, record_types=record_type, parse_http=False):
            if inflater:
                archive.note_record(base + record.stream_pos)
            yield record, None
        if isinstance(archive, Inflater) and archive.error:
            yield None, f"{source}: {archive.error}"
            if archive.resume():
                continue
        return


_STATUS = re.compile(rb"^HTTP/\d(?:\.\d)?\s+(\d{3})")


def parse_http(payload):
    """(status, Content-Type, body) of an HTTP response block; header lines may end in CRLF or a bare
    LF (ClueWeb's WARC/0.18 files), as they are read by ``http.client``. ValueError if it is none."""
    end = payload.find(b"\n")
    m = _STATUS.match(payload[:end if end >= 0 else 64])
    if end < 0 or not m:
        raise ValueError("no HTTP status line")
    block = io.BytesIO(payload)
    block.seek(end + 1)
    try:
        headers = http.client.parse_headers(block)
    except http.client.HTTPException as e:
        raise ValueError(f"bad HTTP headers ({type(e).__name__})") from None
    return int(m.group(1)), headers.get("Content-Type", "") or "", payload[block.tell():]


def _payload(record, cap):
    """(bytes of the record's block up to cap, whether it went past cap); ValueError if the record is
    shorter than its Content-Length says (a truncated file)."""
    data = record.reader.read(cap + 1)
    if len(data) > cap:
        return data[:cap], True
    if record.content_length is not None and len(data) < min(record.content_length, cap):
        raise ValueError(f"record truncated ({len(data):,} of {record.content_length:,} bytes)")
    return data, False


def _count(pages, key):
    pages[key] = pages.get(key, 0) + 1


def read_warc(stream, source, pages=None, size=None, max_page_bytes=limits.MAX_PAGE_BYTES):
    """Candidates from the HTML responses of a WARC stream.

    ``pages`` counts every response record in exactly one bucket: ``html`` (read as HTML),
    ``not_html``, ``status_not_200`` or ``unreadable``; and, besides, ``truncated`` for pages cut at
    ``max_page_bytes`` (or at the HTML depth and element caps) and still read."""
    pages = pages if pages is not None else {}
    try:
        for record, problem in _records(stream, size, WarcRecordType.response, source):
            if problem:
                yield Unreadable(problem)
                continue
            try:
                uri = _target_uri(record.headers.get("WARC-Target-URI"))
                payload, cut = _payload(record, max_page_bytes)
                if not uri:
                    raise ValueError("no WARC-Target-URI")
                status, ctype, body = parse_http(payload)
            except Exception as e:  # one malformed record must not end the file
                _count(pages, "unreadable")
                yield Unreadable(f"{source}: record unreadable: {e}")
                continue
            if status != 200:
                _count(pages, "status_not_200")
                continue
            if not ctype.lower().lstrip().startswith(HTML_TYPES):
                _count(pages, "not_html")
                continue
            try:
                text, _ = decode_html(body, ctype)
                text, cut_html = bounded_html(text)
                found = html_images(text, uri)
            except Exception as e:
                _count(pages, "unreadable")
                yield Unreadable(f"{source}: page unreadable: {e}")
                continue
            _count(pages, "html")
            if cut or cut_html:
                _count(pages, "truncated")
            for url, alt, attr in found:
                yield _candidate(url, alt, uri, attr, "warc", source)
    except _PASS:
        raise
    except BaseException as e:  # a stream that cannot be read at all (fastwarc panics too): this file only
        yield Unreadable(f"{source}: stream breaks off: {type(e).__name__}: {str(e)[:200]}")


def _wat_links(data):
    """(page uri, links) of one WAT record's JSON, or None for records that describe no response;
    ValueError for anything of the wrong shape."""
    doc = json.loads(data)   # nesting past the recursion limit raises RecursionError, in bounded time
    envelope = doc["Envelope"] if isinstance(doc, dict) else None
    if not isinstance(envelope, dict):
        raise ValueError("no Envelope object")
    meta = envelope.get("Payload-Metadata")
    response = meta.get("HTTP-Response-Metadata") if isinstance(meta, dict) else None
    if response is None:
        return None
    if not isinstance(response, dict):
        raise ValueError("HTTP-Response-Metadata is not an object")
    return envelope, response


def read_wat(stream, source, pages=None, size=None):
    """Candidates from the IMG@/src links of Common Crawl WAT metadata records. ``pages`` counts the
    records that describe an HTTP response: ``html``, ``not_html`` or ``unreadable``."""
    pages = pages if pages is not None else {}
    try:
        for record, problem in _records(stream, size, WarcRecordType.metadata, source):
            if problem:
                yield Unreadable(problem)
                continue
            try:
                data, cut = _payload(record, limits.MAX_WAT_RECORD_BYTES)
                if cut:
                    raise ValueError(f"record over {limits.MAX_WAT_RECORD_BYTES:,} bytes")
                got = _wat_links(data)
                if got is None:
                    continue  # request and metadata envelopes carry no links
                envelope, response = got
                html = response.get("HTML-Metadata")
                if html is None:
                    _count(pages, "not_html")
                    continue
                uri = _target_uri(envelope["WARC-Header-Metadata"]["WARC-Target-URI"])
                if not isinstance(uri, str) or not isinstance(html, dict):
                    raise ValueError("WARC-Target-URI or HTML-Metadata of the wrong type")
                head, links = html.get("Head") or {}, html.get("Links") or []
                if not isinstance(head, dict) or not isinstance(links, list):
                    raise ValueError("Head or Links of the wrong type")
                base = head.get("Base")
                base = urljoin(uri, base) if isinstance(base, str) and base else uri
                found = []
                for link in links:
                    if not isinstance(link, dict):
                        raise ValueError("a link that is not an object")
                    if link.get("path") != "IMG@/src" or not link.get("url"):
                        continue
                    alt, title = link.get("alt"), link.get("title")
                    text, attr = image_text(alt if isinstance(alt, str) else None,
                                            title if isinstance(title, str) else None)
                    if isinstance(link["url"], str):
                        found.append(_candidate(resolve(base, link["url"].strip()), text, uri, attr, "wat", source))
            except Exception as e:  # RecursionError, wrong types, bad JSON: this record only
                _count(pages, "unreadable")
                yield Unreadable(f"{source}: WAT record unreadable: {type(e).__name__}: {str(e)[:200]}")
                continue
            _count(pages, "html")
            yield from found
    except _PASS:
        raise
    except BaseException as e:  # fastwarc's panics are BaseExceptions
        yield Unreadable(f"{source}: stream breaks off: {type(e).__name__}: {str(e)[:200]}")


URL_COLUMNS = ("url", "URL", "image_url", "img_url")
TEXT_COLUMNS = ("caption", "text", "TEXT", "txt", "alt", "title")
PAGE_COLUMNS = ("page_url", "PAGE_URL", "page")

# With --no-header, a CSV/TSV list's columns are named by position: "1", "2", ...
NO_HEADER_HINT = "a list without a header row: pass --no-header and give columns as positions (1, 2, ...)"


@dataclass
class FieldTooLarge(Unreadable):
    """A CSV/TSV row with a field longer than ``limits.MAX_CSV_FIELD_CHARS``: counted as
    ``field_too_large``, the rest of the file is read."""

    reason = "field_too_large"  # a class attribute; plain Unreadable records count as unreadable_record


def unreadable_reason(record):
    """The funnel reason of an ``Unreadable`` record."""
    return getattr(record, "reason", "unreadable_record")


def _names(names, width=40, most=12):
    """Column names for a message: each cut to ``width`` characters, at most ``most`` of them."""
    shown = [" ".join(n.split()) for n in map(str, names[:most])]  # one line, whatever a header holds
    shown = [n if len(n) <= width else n[: width - 1] + "…" for n in shown]
    return ", ".join(shown) + (f", … ({len(names)} columns)" if len(names) > most else "")


def pick_column(names, wanted, candidates, what, source):
    if wanted:
        if wanted not in names:
            hint = f"; {NO_HEADER_HINT}" if str(wanted).isdigit() else ""
            raise InputError(f"{source}: no column {wanted!r} (columns: {_names(names)}){hint}")
        return wanted
    for c in candidates:
        if c in names:
            return c
    if what == "page":
        return None
    hint = f" ({NO_HEADER_HINT})" if any("://" in str(n) for n in names) else ""
    raise InputError(f"{source}: no {what} column among {_names(names)}; name it with --{what}-col{hint}")


def column_position(value, flag):
    """The 1-based column position a --*-col flag gives with --no-header (None stays None)."""
    if value is None:
        return None
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"{flag} {value!r}: with --no-header a column is a position, 1 for the first column")
    return int(text)


def pick_columns(names, url_col, text_col, page_col, source, no_header=False):
    """(url, text, page) column names of a URL list whose columns are ``names`` (page may be None).
    With ``no_header`` the names are the positions "1".."N" and the columns must be given."""
    if not no_header:
        return (pick_column(names, url_col, URL_COLUMNS, "url", source),
                pick_column(names, text_col, TEXT_COLUMNS, "text", source),
                pick_column(names, page_col, PAGE_COLUMNS, "page", source))
    out = []
    for flag, value in (("--url-col", url_col), ("--text-col", text_col), ("--page-url-col", page_col)):
        pos = column_position(value, flag)
        if pos is None:
            if flag != "--page-url-col":
                raise InputError(f"--no-header needs {flag} as a column position (1, 2, ...)")
            out.append(None)
            continue
        if pos > len(names):
            raise InputError(f"{source}: {flag} {pos} is past the last column (its first row has "
                             f"{len(names)} column{'s' if len(names) != 1 else ''})")
        out.append(str(pos))
    return tuple(out)


def open_parquet(path):
    """A pyarrow ParquetFile of a local path, or of any Beam filesystem URL (read whole)."""
    import pyarrow.parquet as pq

    if "://" not in path:
        return pq.ParquetFile(path)
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return pq.ParquetFile(io.BytesIO(f.read()))


def url_list_format(path):
    name = path.lower()
    for ext in (".gz", ".bz2", ".zst"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    for fmt, exts in (("parquet", (".parquet",)), ("csv", (".csv",)), ("tsv", (".tsv", ".tab")),
                      ("jsonl", (".jsonl", ".json", ".ndjson"))):
        if name.endswith(exts):
            return fmt
    return None


def _field_limit():
    """Sets the csv module's field limit (a process-wide setting, 131,072 by default) to
    limits.MAX_CSV_FIELD_CHARS and returns it."""
    csv.field_size_limit(limits.MAX_CSV_FIELD_CHARS)
    return limits.MAX_CSV_FIELD_CHARS


# A physical line of a CSV/TSV list is read at most this many field limits long. A row of a URL
# list has a handful of fields, so a longer line holds a field over the limit (or far too many
# fields): it is read through in pieces, never held whole, and counted as field_too_large.
LINE_CAP_FIELDS = 8


def _bounded_lines(stream, cap, state):
    """The physical lines of a text stream for csv.reader, none longer than ``cap`` characters;
    the number of each longer line, skipped, is appended to ``state["skipped"]``, and
    ``state["line"]`` is the number of the last line read."""
    readline, ends = stream.readline, ("\n", "\r")
    while True:
        line = readline(cap + 1)
        if not line:
            return
        state["line"] += 1
        if len(line) > cap and not line.endswith(ends):
            while line and not line.endswith(ends):
                line = readline(cap)
            state["skipped"].append(state["line"])
            continue
        yield line


def _csv_rows(stream, fmt, state):
    """(fields or a csv.Error, physical line number) of each row of a CSV/TSV stream, blank lines
    left out, with (None, n) for each physical line n over the line cap."""
    limit = _field_limit()
    reader = csv.reader(_bounded_lines(stream, LINE_CAP_FIELDS * limit, state),
                        delimiter="," if fmt == "csv" else "\t")
    skipped = state["skipped"]
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            fields = e
        while skipped:
            yield None, skipped.pop(0)
        if fields != []:
            yield fields, state["line"]
    while skipped:
        yield None, skipped.pop(0)


def _too_large(source, n, fields):
    if fields is None:
        return FieldTooLarge(f"{source}: line {n}: longer than {LINE_CAP_FIELDS * limits.MAX_CSV_FIELD_CHARS:,} "
                             f"characters (a field over {limits.MAX_CSV_FIELD_CHARS:,})")
    if "field larger than field limit" in str(fields):
        return FieldTooLarge(f"{source}: line {n}: a field longer than {limits.MAX_CSV_FIELD_CHARS:,} characters")
    return Unreadable(f"{source}: line {n}: {fields}")


def text_table_header(stream, source, fmt, no_header=False):
    """The column names of a CSV/TSV stream: its first row, or the positions "1".."N" of the
    first row with ``no_header``. A header row that cannot be read is a ValueError (one line)."""
    names, _ = _first_row(stream, source, fmt, no_header, {"line": 0, "skipped": []})
    return names


def _first_row(stream, source, fmt, no_header, state):
    """(column names, the rows iterator positioned after the header; with no_header the first
    row and the records before it come first)."""
    rows = _csv_rows(stream, fmt, state)
    pending = []
    for fields, n in rows:
        if isinstance(fields, list):
            if no_header:
                names = [str(i) for i in range(1, len(fields) + 1)]
                return names, _chain(pending + [(fields, n)], rows)
            return fields, rows
        if not no_header:
            problem = _too_large(source, n, fields)
            why = (f"has a field longer than {limits.MAX_CSV_FIELD_CHARS:,} characters"
                   if isinstance(problem, FieldTooLarge) else f"cannot be read ({fields})")
            raise InputError(f"{source}: the header row (line {n}) {why}: not a URL list with a header row")
        pending.append((fields, n))  # counted by the caller, as any row
    return None, iter(pending)


def _chain(first, rest):
    yield from first
    yield from rest


def read_text_table(stream, source, fmt, url_col=None, text_col=None, page_col=None, no_header=False):
    """Candidates from a CSV, TSV or JSONL URL list (a text stream). CSV/TSV rows with a field
    longer than limits.MAX_CSV_FIELD_CHARS come out as ``FieldTooLarge``."""
    if fmt == "jsonl":
        if no_header:
            raise InputError(f"{source}: --no-header is for CSV and TSV lists (JSONL rows name their fields)")
        cols, state = None, {"line": 0, "skipped": []}
        for line in _bounded_lines(stream, LINE_CAP_FIELDS * _field_limit(), state):
            while state["skipped"]:          # lines over the cap, read through and not held
                yield _too_large(source, state["skipped"].pop(0), None)
            n = state["line"]
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise InputError("not an object")
            except ValueError as e:
                yield Unreadable(f"{source}: line {n}: {e}")
                continue
            if cols is None:
                cols = pick_columns(list(row), url_col, text_col, page_col, source)
            yield _row(row, cols, source, f"line {n}")
        while state["skipped"]:
            yield _too_large(source, state["skipped"].pop(0), None)
        return
    names, rows = _first_row(stream, source, fmt, no_header, {"line": 0, "skipped": []})
    if names is None:  # nothing but unreadable lines
        for fields, n in rows:
            yield _too_large(source, n, fields)
        return
    cols = pick_columns(names, url_col, text_col, page_col, source, no_header)
    width = len(names)
    for fields, n in rows:
        if not isinstance(fields, list):
            yield _too_large(source, n, fields)
        elif len(fields) != width:
            yield Unreadable(f"{source}: line {n}: {len(fields)} fields, "
                             f"{'the first row' if no_header else 'the header'} has {width}")
        else:
            yield _row(dict(zip(names, fields)), cols, source, f"line {n}")


def _row(row, cols, source, where):
    url_c, text_c, page_c = cols
    url, text = row.get(url_c), row.get(text_c)
    if not isinstance(url, str) or not url.strip():
        return Unreadable(f"{source}: {where}: no URL")
    page = row.get(page_c) if page_c else None
    if not isinstance(page, str) or len(page) > limits.MAX_URL_CHARS:
        page = None  # not a URL a page can have: the pair goes on without it
    return _candidate(url.strip(), text if isinstance(text, str) else "", page, "caption", "urllist", source)


def url_list_columns(path, fmt, url_col=None, text_col=None, page_col=None, no_header=False):
    """(url, text, page) columns of a URL list file (parquet, CSV, TSV or JSONL; any Beam
    filesystem path), read from its schema, header row or first line: a ValueError in one line
    when they are missing, when --no-header meets a list that names its columns, or when the
    header cannot be read."""
    if fmt == "parquet":
        if no_header:
            raise InputError(f"{path}: --no-header is for CSV and TSV lists (parquet names its columns)")
        names = open_parquet(path).schema_arrow.names
    elif fmt == "jsonl":
        if no_header:
            raise InputError(f"{path}: --no-header is for CSV and TSV lists (JSONL rows name their fields)")
        with open_url_list(path) as (binary, _):
            stream = text_stream(binary, path)
            line = next((ln for ln in _bounded_lines(stream, LINE_CAP_FIELDS * _field_limit(),
                                                     {"line": 0, "skipped": []}) if ln.strip()), "")
        try:
            names = list(json.loads(line))
        except (ValueError, TypeError):
            raise InputError(f"{path}: the first line is not a JSON object") from None
    else:
        with open_url_list(path) as (binary, _):
            names = text_table_header(text_stream(binary, path), path, fmt, no_header)
        if names is None:
            raise InputError(f"{path}: no readable row")
    return pick_columns(names, url_col, text_col, page_col, path, no_header)


def url_list_batches(item, cols, no_header=False, batch_rows=8192):
    """(urls, texts, pages, {reason: unreadable rows}, fraction of the item read) Arrow batches of
    one URL-list work item ``(path, format, part)``: a parquet row group, or a whole CSV, TSV or
    JSONL file (compressed by its extension). ``cols`` is (url, text, page) as the user named
    them (None: detected)."""
    from apache_beam.io.filesystems import FileSystems

    path, fmt, part = item
    if fmt == "parquet":
        pf = open_parquet(path)
        url_c, text_c, page_c = pick_columns(pf.schema_arrow.names, *cols, path, no_header)
        rows, done = max(1, pf.metadata.row_group(part).num_rows), 0
        for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[part],
                                     columns=[c for c in (url_c, text_c, page_c) if c]):
            done += batch.num_rows
            urls, texts, pages, bad = url_list_arrow(batch, url_c, text_c, page_c)
            yield urls, texts, pages, ({"unreadable_record": bad} if bad else {}), done / rows
        return
    size = max(1, FileSystems.match([path])[0].metadata_list[0].size_in_bytes)
    with open_url_list(path) as (binary, raw):

        def fraction():
            try:
                return min(0.99, raw.tell() / size)  # bytes of the file itself, compressed or not
            except (OSError, ValueError, AttributeError):
                return 0.0

        urls, texts, pages, bad, chars = [], [], [], {}, 0
        for c in read_text_table(text_stream(binary, path), path, fmt, *cols, no_header=no_header):
            if isinstance(c, Unreadable):
                reason = unreadable_reason(c)
                bad[reason] = bad.get(reason, 0) + 1
                continue
            urls.append(c["url"])
            texts.append(c["text"])
            pages.append(c["page_url"])
            chars += len(c["url"]) + len(c["text"]) + len(c["page_url"] or "")
            if len(urls) >= batch_rows or chars > limits.MAX_BATCH_TEXT_CHARS:
                yield _strings(urls), _strings(texts), _strings(pages), bad, fraction()
                urls, texts, pages, bad, chars = [], [], [], {}, 0
        if urls or bad:
            yield _strings(urls), _strings(texts), _strings(pages), bad, 1.0


def _strings(values):
    return pa.array(values, pa.string())


def count_lines(path):
    """Lines of a text file (decompressed by its extension), counted in bounded memory: the
    launcher's estimate of a CSV/TSV/JSONL list's rows."""
    n, last = 0, b"\n"
    with open_url_list(path) as (binary, _):
        while chunk := binary.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


# Every character str.strip() removes (str.isspace), for the same strip in Arrow.
_PY_WHITESPACE = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())


def url_list_arrow(batch, url_c, text_c, page_c):
    """(urls, texts, pages, unreadable count) of an Arrow batch of a URL list: rows without a
    URL (null, empty, white space only, not a string) are unreadable; URLs are stripped as
    str.strip() does; missing texts become empty, missing pages null."""
    n = batch.num_rows
    urls = batch.column(url_c)
    if not pa.types.is_string(urls.type) and not pa.types.is_large_string(urls.type):
        empty = pa.array([], pa.string())
        return empty, empty, empty, n
    urls = pc.utf8_trim(urls.cast(pa.string()), characters=_PY_WHITESPACE)
    has_url = pc.fill_null(pc.greater(pc.utf8_length(urls), 0), False)
    texts = batch.column(text_c)
    texts = pc.fill_null(texts.cast(pa.string()), "") if pa.types.is_string(texts.type) or \
        pa.types.is_large_string(texts.type) else pa.array([""] * n, pa.string())
    pages = batch.column(page_c) if page_c else None
    pages = pages.cast(pa.string()) if pages is not None and (pa.types.is_string(pages.type) or
                                                              pa.types.is_large_string(pages.type)) \
        else pa.nulls(n, pa.string())
    good = pc.sum(has_url).as_py() or 0
    if good < n:
        urls, texts, pages = urls.filter(has_url), texts.filter(has_url), pages.filter(has_url)
    return urls, texts, pages, n - good


@contextlib.contextmanager
def open_url_list(path):
    """(binary stream of the decompressed bytes, the file's own stream for tell()) of a URL list
    on any Beam filesystem. .gz, .bz2 and .zst are inflated here, a bounded piece at a time:
    Beam's own CompressedFile inflates all it reads at once, so a small file holding one huge
    line would be inflated whole into memory."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    name = path.lower()
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        if name.endswith(".gz"):
            binary = gzip.GzipFile(fileobj=raw, mode="rb")
        elif name.endswith(".bz2"):
            binary = bz2.BZ2File(raw, mode="rb")
        elif name.endswith(".zst"):
            import zstandard

            binary = zstandard.ZstdDecompressor().stream_reader(raw)
        else:
            binary = raw
        yield binary, raw


class _Readable(io.RawIOBase):
    """A file-like object with only read() (Beam's CompressedFile for .gz/.bz2/.zst) as a raw
    stream that io's buffered and text layers accept."""

    def __init__(self, f):
        self.f = f

    def readable(self):
        return True

    def readinto(self, b):
        data = self.f.read(len(b))
        b[:len(data)] = data
        return len(data)


def text_stream(binary, path):
    """A UTF-8 text stream over a binary file (bad bytes replaced, line ends kept for csv)."""
    if not isinstance(binary, io.IOBase):
        binary = io.BufferedReader(_Readable(binary), 1 << 20)
    return io.TextIOWrapper(binary, encoding="utf-8", errors="replace", newline="")
