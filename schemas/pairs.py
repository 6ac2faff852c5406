"""What identifies a pair: ``uid``, a hash of its normalised URL and its text, so the same pair
found in a WARC, a WAT and a URL list is one pair. The crawl gives every pair its uid, the shard
stage gives one to pairs of a URL list that has none, and both deduplicate by it; it is part of
the contract between stages (``records.CURATED_PAIR``), so it lives here and not in a stage.
"""

import hashlib
import re
from urllib.parse import urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


_SIMPLE = re.compile(r"^(https?)://([A-Za-z0-9.-]+)(?::(\d+))?([/?][^#]*)?(?:#.*)?$", re.IGNORECASE)


def normalise_url(url):
    """Scheme and host lower-cased, default port and fragment removed; path and query kept."""
    url = url.strip()
    m = _SIMPLE.match(url)
    if m:  # the common case, without urllib's full parse
        scheme, host, port, rest = m.group(1).lower(), m.group(2).lower(), m.group(3), m.group(4) or "/"
        if port is not None and int(port) != _DEFAULT_PORTS[scheme]:
            host = f"{host}:{int(port)}"
        if rest.startswith("?"):
            rest = "/" + rest
        return f"{scheme}://{host}{rest}"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    if parts.username or parts.password:
        netloc = f"{parts.username or ''}{':' + parts.password if parts.password else ''}@{netloc}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


# The common case of _SIMPLE, without a port, for RE2 over Arrow arrays (same groups).
_SIMPLE_ARROW = r"(?i)^(?P<scheme>https?)://(?P<host>[A-Za-z0-9.-]+)(?P<rest>[/?][^#]*)?(?:#.*)?$"


def uids_arrow(urls, texts):
    """``uid`` of each (url, text) of two Arrow string arrays, as a list: URLs of the common shape
    are normalised by Arrow compute (RE2), the rest by ``normalise_url``; the same ids."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(urls) == 0:
        return []
    simple = pc.fill_null(pc.match_substring_regex(urls, _SIMPLE_ARROW), False)
    parts = pc.extract_regex(pc.if_else(simple, urls, pa.scalar("http://x")), _SIMPLE_ARROW)
    rest = pc.fill_null(parts.field("rest"), "")
    rest = pc.if_else(pc.equal(rest, ""), "/", pc.if_else(pc.starts_with(rest, "?"),
                                                          pc.binary_join_element_wise("/", rest, ""), rest))
    keys = pc.binary_join_element_wise(pc.ascii_lower(parts.field("scheme")), "://",
                                       pc.ascii_lower(parts.field("host")), rest, "\t", texts, "")
    keys, simple_py = keys.to_pylist(), simple.to_numpy(zero_copy_only=False)
    blake = hashlib.blake2b
    out = [blake(k.encode("utf-8"), digest_size=16).hexdigest() for k in keys]
    for i in (~simple_py).nonzero()[0].tolist():
        out[i] = uid(urls[i].as_py(), texts[i].as_py())
    return out


def uid(url, text):
    return hashlib.blake2b(f"{normalise_url(url)}\t{text}".encode("utf-8"), digest_size=16).hexdigest()
