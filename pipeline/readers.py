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

import codecs
import csv
import io
import json
import re
from dataclasses import dataclass
from urllib.parse import urljoin

import pyarrow as pa
import pyarrow.compute as pc
from fastwarc.warc import ArchiveIterator, WarcRecordType
from resiliparse.parse.encoding import detect_encoding
from selectolax.lexbor import LexborHTMLParser


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
    return {"url": url, "text": text, "page_url": page_url, "text_attr": attr, "input_format": fmt,
            "source_file": source}


def read_warc(stream, source, pages=None):
    """Candidates from the HTML responses of a WARC stream. ``pages`` counts what was skipped."""
    pages = pages if pages is not None else {}
    try:
        for record in ArchiveIterator(stream, record_types=WarcRecordType.response, parse_http=True):
            try:
                uri = _target_uri(record.headers.get("WARC-Target-URI"))
                http = record.http_headers
                if http is None or not uri:
                    pages["not_http"] = pages.get("not_http", 0) + 1
                    continue
                ctype = http.get("Content-Type", "") or ""
                if http.status_code != 200:
                    pages["status_not_200"] = pages.get("status_not_200", 0) + 1
                    continue
                if not ctype.lower().startswith(HTML_TYPES):
                    pages["not_html"] = pages.get("not_html", 0) + 1
                    continue
                body = record.reader.read()
                text, _ = decode_html(body, ctype)
                pages["html"] = pages.get("html", 0) + 1
                for url, alt, attr in html_images(text, uri):
                    yield _candidate(url, alt, uri, attr, "warc", source)
            except Exception as e:  # one malformed record must not end the file
                yield Unreadable(f"{source}: record unreadable: {e}")
    except Exception as e:  # a broken gzip member or a truncated file ends this file only
        yield Unreadable(f"{source}: stream breaks off: {e}")


def read_wat(stream, source, pages=None):
    """Candidates from the IMG@/src links of Common Crawl WAT metadata records."""
    pages = pages if pages is not None else {}
    try:
        for record in ArchiveIterator(stream, record_types=WarcRecordType.metadata, parse_http=False):
            try:
                envelope = json.loads(record.reader.read())["Envelope"]
                response = envelope["Payload-Metadata"].get("HTTP-Response-Metadata")
                if response is None:
                    continue  # request and metadata envelopes carry no links
                html = response.get("HTML-Metadata")
                if html is None:
                    pages["not_html"] = pages.get("not_html", 0) + 1
                    continue
                pages["html"] = pages.get("html", 0) + 1
                uri = _target_uri(envelope["WARC-Header-Metadata"]["WARC-Target-URI"])
                base = html.get("Head", {}).get("Base")
                base = urljoin(uri, base) if base else uri
                for link in html.get("Links", ()):
                    if link.get("path") != "IMG@/src" or not link.get("url"):
                        continue
                    text, attr = image_text(link.get("alt"), link.get("title"))
                    yield _candidate(resolve(base, link["url"].strip()), text, uri, attr, "wat", source)
            except (ValueError, KeyError, TypeError) as e:
                yield Unreadable(f"{source}: WAT record unreadable: {e}")
    except Exception as e:
        yield Unreadable(f"{source}: stream breaks off: {e}")


URL_COLUMNS = ("url", "URL", "image_url", "img_url")
TEXT_COLUMNS = ("caption", "text", "TEXT", "txt", "alt", "title")
PAGE_COLUMNS = ("page_url", "PAGE_URL", "page")


def pick_column(names, wanted, candidates, what, source):
    if wanted:
        if wanted not in names:
            raise ValueError(f"{source}: no column {wanted!r} (columns: {', '.join(names)})")
        return wanted
    for c in candidates:
        if c in names:
            return c
    if what == "page":
        return None
    raise ValueError(f"{source}: no {what} column among {', '.join(names)}; name it with --{what}-col")


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


def read_text_table(stream, source, fmt, url_col=None, text_col=None, page_col=None):
    """Candidates from a CSV, TSV or JSONL URL list (a text stream)."""
    if fmt == "jsonl":
        cols = None
        for n, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                yield Unreadable(f"{source}: line {n}: {e}")
                continue
            if cols is None:
                names = list(row)
                cols = (pick_column(names, url_col, URL_COLUMNS, "url", source),
                        pick_column(names, text_col, TEXT_COLUMNS, "text", source),
                        pick_column(names, page_col, PAGE_COLUMNS, "page", source))
            yield _row(row, cols, source, f"line {n}")
        return
    reader = csv.reader(stream, delimiter="," if fmt == "csv" else "\t")
    header = next(reader, None)
    if header is None:
        return
    cols = (pick_column(header, url_col, URL_COLUMNS, "url", source),
            pick_column(header, text_col, TEXT_COLUMNS, "text", source),
            pick_column(header, page_col, PAGE_COLUMNS, "page", source))
    for n, fields in enumerate(reader, 2):
        if len(fields) != len(header):
            yield Unreadable(f"{source}: line {n}: {len(fields)} fields, header has {len(header)}")
            continue
        yield _row(dict(zip(header, fields)), cols, source, f"line {n}")


def _row(row, cols, source, where):
    url_c, text_c, page_c = cols
    url, text = row.get(url_c), row.get(text_c)
    if not isinstance(url, str) or not url.strip():
        return Unreadable(f"{source}: {where}: no URL")
    page = row.get(page_c) if page_c else None
    return _candidate(url.strip(), text if isinstance(text, str) else "", page if isinstance(page, str) else None,
                      "caption", "urllist", source)


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


def text_stream(binary, path):
    return io.TextIOWrapper(binary, encoding="utf-8", errors="replace", newline="")
