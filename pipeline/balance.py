"""Stable ids and CLIP/MetaCLIP balancing.

A pair's ``uid`` hashes its normalised URL and its text, so the same pair found in a WARC, a
WAT and a URL list is one pair. Balancing keeps a pair with probability

    p = 1 - prod over its matched queries q of (1 - min(1, t / count(q)))

where count(q) is the number of (deduplicated) pairs matching q and t the per-query cap:
a pair of a tail query (count <= t) is always kept, a pair whose only query is a head query
is kept with probability t / count. The draw is a hash of the seed and the uid, so the same
input gives the same output on any runner and any number of workers.
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


def keep_probability(queries, counts, t):
    drop = 1.0
    for q in queries:
        drop *= 1.0 - min(1.0, t / counts[q])
    return 1.0 - drop


def draw(seed, pair_uid):
    """A uniform number in [0, 1) determined by the seed and the uid."""
    h = hashlib.blake2b(f"{seed}:{pair_uid}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


# --- the same, a partition of pairs at a time (Arrow tables, NumPy) ---------------------------

def first_per_uid(table, format_order):
    """``table`` sorted by uid, with a boolean column ``_first`` marking the one pair kept of
    each uid: the first by (input format in ``format_order``, source file, page URL)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    order = pa.array([format_order[f] for f in table.column("input_format").to_pylist()], pa.int8())
    keyed = table.append_column("_format", order).append_column(
        "_page", pc.fill_null(table.column("page_url"), ""))
    keyed = keyed.sort_by([("uid", "ascending"), ("_format", "ascending"), ("source_file", "ascending"),
                           ("_page", "ascending")])
    uids = keyed.column("uid").combine_chunks()
    n = len(uids)
    first = np.ones(n, dtype=bool)
    if n > 1:
        first[1:] = pc.not_equal(uids.slice(1), uids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    return keyed.drop_columns(["_format", "_page"]).append_column("_first", pa.array(first))


def keep_probabilities(offsets, ids, counts, t):
    """``keep_probability`` for every pair of a batch at once: pair i matched the query ids
    ``ids[offsets[i]:offsets[i+1]]`` (at least one); ``counts`` is indexed by query id."""
    import numpy as np

    if len(offsets) <= 1:
        return np.zeros(0)
    factor = 1.0 - np.minimum(1.0, t / counts[ids])
    return 1.0 - np.multiply.reduceat(factor, offsets[:-1])


def draws(seed, uids):
    """``draw(seed, uid)`` for a list of uids, as a NumPy array."""
    import numpy as np

    blake = hashlib.blake2b
    prefix = f"{seed}:"
    return np.array([int.from_bytes(blake(f"{prefix}{u}".encode(), digest_size=8).digest(), "big")
                     for u in uids], dtype=np.float64) / 2**64
