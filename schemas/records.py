"""pyarrow schemas of the records that pass between stages.

Field metadata ``checks`` names the value checks ``validate`` applies beyond the type:
``nonempty`` (string not empty), ``http_url`` (absolute http or https URL), ``positive``
(> 0), ``unit`` (within [0, 1]), ``hex64`` (64 lowercase hex digits), ``key`` (a WebDataset
key: no dots, no slashes), ``query_source`` (one of QUERY_SOURCES), ``input_format``
(one of INPUT_FORMATS).
"""

import pyarrow as pa

QUERY_SOURCES = ("wordnet", "unigram", "bigram", "title", "metadata")
INPUT_FORMATS = ("wat", "warc", "urllist")


def _f(name, type_, nullable=False, checks=(), doc="", optional=False):
    """A contract's field. ``optional``: added in a later version; files written before it may
    lack the column, which then reads as nulls."""
    meta = {"doc": doc}
    if checks:
        meta["checks"] = ",".join(checks)
    if optional:
        meta["optional"] = "1"
    return pa.field(name, type_, nullable=nullable, metadata=meta)


# queries/queries.parquet: one row per query, in output order.
QUERY = pa.schema(
    [
        _f("query", pa.string(), checks=("nonempty",), doc="the query string, case-sensitive"),
        _f("source", pa.string(), checks=("query_source",), doc="which source admitted it first"),
        _f("count", pa.int64(), nullable=True, doc="corpus count (unigram, bigram) or summed page views (title)"),
        _f("pmi", pa.float64(), nullable=True, doc="bigram PMI, log2(N*c(ab)/(c(a)c(b))); null for other sources"),
        _f("lang", pa.string(), nullable=True, optional=True,
           doc="the list's language (schemas.languages.metadata_lang: a Wikipedia code); null: a one-language "
               "list of earlier versions, read as English"),
    ],
    metadata={"contract": "query", "version": "2"},
)

# What the crawl readers emit, before any filter: one row per <img> link or URL-list row.
CANDIDATE_PAIR = pa.schema(
    [
        _f("url", pa.string(), checks=("nonempty",), doc="image URL, resolved against the page or <base> where relative"),
        _f("text", pa.string(), doc="the raw alt text (or title, or the URL list's caption)"),
        _f("page_url", pa.string(), nullable=True, doc="URL of the page that held the image; null for URL lists"),
        _f("text_attr", pa.string(), doc="where the text came from: alt, title or caption"),
        _f("input_format", pa.string(), checks=("input_format",), doc="wat, warc or urllist"),
        _f("source_file", pa.string(), doc="the input file the record was read from"),
    ],
    metadata={"contract": "candidate_pair", "version": "1"},
)

# pairs/pairs-*.parquet, the crawl's output. Also a valid img2dataset URL list
# (--url_col url --caption_col text).
CURATED_PAIR = pa.schema(
    [
        _f("uid", pa.string(), checks=("nonempty",), doc="stable id: hash of the normalised URL and text"),
        _f("url", pa.string(), checks=("http_url",), doc="absolute http(s) image URL"),
        _f("text", pa.string(), checks=("nonempty",), doc="cleaned caption"),
        _f("page_url", pa.string(), nullable=True, doc="page the image was found on; null for URL lists"),
        _f("lang", pa.string(), checks=("nonempty",), doc="fastText lid.176 language code, e.g. en"),
        _f("lang_score", pa.float32(), checks=("unit",), doc="fastText probability of lang"),
        _f("queries", pa.list_(pa.string()), doc="every query contained in text; at least one"),
        _f("input_format", pa.string(), checks=("input_format",), doc="wat, warc or urllist"),
        _f("source_file", pa.string(), doc="the input file the pair was read from"),
        _f("keep_prob", pa.float64(), checks=("unit",), doc="balancing keep probability of the pair"),
    ],
    metadata={"contract": "curated_pair", "version": "1"},
)

# KEY.json inside a shard tar. KEY.jpg is the encoded image, KEY.txt the caption (UTF-8).
SHARD_SAMPLE = pa.schema(
    [
        _f("key", pa.string(), checks=("key",), doc="WebDataset key: 12 digits, shard index then position"),
        _f("uid", pa.string(), checks=("nonempty",), doc="the pair's uid"),
        _f("url", pa.string(), checks=("http_url",), doc="where the image was fetched from (before redirects)"),
        _f("text", pa.string(), checks=("nonempty",), doc="caption, identical to KEY.txt"),
        _f("page_url", pa.string(), nullable=True),
        _f("lang", pa.string(), nullable=True),
        _f("queries", pa.list_(pa.string()), nullable=True),
        _f("original_width", pa.int32(), checks=("positive",)),
        _f("original_height", pa.int32(), checks=("positive",)),
        _f("width", pa.int32(), checks=("positive",), doc="size of KEY.jpg"),
        _f("height", pa.int32(), checks=("positive",)),
        _f("sha256", pa.string(), checks=("hex64",), doc="SHA-256 of the KEY.jpg bytes"),
    ],
    metadata={"contract": "shard_sample", "version": "1"},
)

# shards/NNNNNN.parquet: one row per pair attempted for NNNNNN.tar, in key order; the rows
# whose status is "success" are exactly the tar's samples, in tar order.
SHARD_INDEX = pa.schema(
    [
        _f("key", pa.string(), checks=("key",), doc="the sample's key (also for failures)"),
        _f("uid", pa.string(), checks=("nonempty",)),
        _f("url", pa.string(), doc="the pair's URL as given"),
        _f("text", pa.string()),
        _f("page_url", pa.string(), nullable=True),
        _f("lang", pa.string(), nullable=True),
        _f("queries", pa.list_(pa.string()), nullable=True),
        _f("status", pa.string(), checks=("nonempty",), doc="success, or the reason the pair has no sample"),
        _f("error", pa.string(), nullable=True, doc="detail of a failure"),
        _f("original_width", pa.int32(), nullable=True, checks=("positive",)),
        _f("original_height", pa.int32(), nullable=True, checks=("positive",)),
        _f("width", pa.int32(), nullable=True, checks=("positive",)),
        _f("height", pa.int32(), nullable=True, checks=("positive",)),
        _f("sha256", pa.string(), nullable=True, checks=("hex64",)),
        _f("jpg_bytes", pa.int64(), nullable=True, checks=("positive",)),
        _f("shard", pa.string(), doc="the tar's basename, e.g. 000000.tar"),
        _f("phash", pa.int64(), nullable=True, optional=True,
           doc="64-bit perceptual hash of the stored image (schemas.phash); absent in version 2 files"),
    ],
    metadata={"contract": "shard_index", "version": "3"},
)

SCHEMAS = {
    "query": QUERY,
    "candidate_pair": CANDIDATE_PAIR,
    "curated_pair": CURATED_PAIR,
    "shard_sample": SHARD_SAMPLE,
    "shard_index": SHARD_INDEX,
}
