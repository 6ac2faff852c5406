"""The crawl stage: web archives and URL lists -> balanced, query-matched pairs (Apache Beam).

    inputs ─ ReadInputs ─ CleanIdentifyMatch ─ Dedup ─┬─ CountMatches ──────────┐
      (WARC, WAT, URL lists)   (captions, lid.176,    │                         │ (side input)
                                Aho–Corasick)         └──────────── Balance ◄───┘ ─ WritePairs
                                                                      └─ CountKept ─ WriteQueryCounts

Every candidate ends in exactly one bucket of ``crawl_stats.json``: kept, or one of
``unreadable_record``, ``bad_url_scheme``, ``invalid_url``, the caption reasons of
``captions.judge``, ``lang_not_wanted``, ``no_query_match``, ``duplicate``, ``balanced_out``.
"""

import functools
import io
import math
import re
from dataclasses import dataclass, field

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from clipforge.pipeline import balance, captions, readers
from clipforge.pipeline.langid import LanguageID
from clipforge.pipeline.matching import Matcher
from clipforge.schemas.records import CURATED_PAIR
from clipforge.schemas.validate import validate_table

NS = "clipforge.crawl"
QUERY_COUNTS = pa.schema([pa.field("query", pa.string(), nullable=False),
                          pa.field("matches", pa.int64(), nullable=False),
                          pa.field("kept", pa.int64(), nullable=False),
                          pa.field("single_query_keep_prob", pa.float64(), nullable=False)])


@dataclass
class CrawlConfig:
    inputs: list = field(default_factory=list)  # (path, format, part) work items, see stage.expand_inputs
    queries: list = field(default_factory=list)  # the query strings
    out: str = "data/pairs"
    max_per_query: int = 20_000
    langs: tuple = ("en",)  # empty: keep every language
    min_lang_score: float = 0.0
    seed: int = 0
    url_col: str = None
    text_col: str = None
    page_col: str = None
    min_text_chars: int = captions.MIN_CHARS
    max_text_chars: int = captions.MAX_CHARS
    rows_per_file: int = 250_000


@functools.lru_cache(maxsize=None)
def _counter(name):
    return Metrics.counter(NS, name)


def _drop(reason, n=1):
    _counter(f"drop_{reason}").inc(n)


class ReadInputs(beam.DoFn):
    """A work item (path, format, part) -> candidate dicts; unreadable records counted as such."""

    def __init__(self, url_col, text_col, page_col):
        self.cols = (url_col, text_col, page_col)

    def process(self, item):
        path, fmt, part = item
        pages = {}
        if fmt in ("warc", "wat"):
            raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
            with raw:
                reader = readers.read_warc if fmt == "warc" else readers.read_wat
                for c in reader(raw, path, pages):
                    yield from self._emit(c)
        elif fmt == "parquet":
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
                pf = pq.ParquetFile(io.BytesIO(raw.read()) if not _local(path) else path)
                names = pf.schema_arrow.names
                cols = (readers.pick_column(names, self.cols[0], readers.URL_COLUMNS, "url", path),
                        readers.pick_column(names, self.cols[1], readers.TEXT_COLUMNS, "text", path),
                        readers.pick_column(names, self.cols[2], readers.PAGE_COLUMNS, "page", path))
                table = pf.read_row_group(part, columns=[c for c in cols if c])
                for c in readers.read_parquet_batch(table, cols, path):
                    yield from self._emit(c)
        else:
            with FileSystems.open(path) as raw:  # compression from the extension
                stream = readers.text_stream(raw, path)
                for c in readers.read_text_table(stream, path, fmt, *self.cols):
                    yield from self._emit(c)
        for k, v in pages.items():
            _counter(f"pages_{k}").inc(v)

    def _emit(self, c):
        _counter("input").inc()
        if isinstance(c, readers.Unreadable):
            _drop("unreadable_record")
            yield beam.pvalue.TaggedOutput("unreadable", c.detail)
        else:
            _counter(f"input_{c['input_format']}").inc()
            yield c


def _local(path):
    return "://" not in path


class TextFilter:
    """The text stage, a plain object: candidate -> curated pair dict, or a drop reason.

    URL check, caption cleaning, language identification (lid.176), query matching. Web alt
    texts repeat a lot (site boilerplate, product names, templated captions), so the outcome
    for the last ``cache_size`` distinct raw texts is remembered.
    """

    def __init__(self, queries, langs=("en",), min_lang_score=0.0, min_chars=captions.MIN_CHARS,
                 max_chars=captions.MAX_CHARS, cache_size=100_000):
        self.langs, self.min_lang_score = frozenset(langs), min_lang_score
        self.min_chars, self.max_chars = min_chars, max_chars
        self.lid = LanguageID()
        self.matcher = Matcher(queries)
        self.cache, self.cache_size = {}, cache_size

    def __call__(self, c):
        url = c["url"]
        m = _URL.match(url)
        if m is None:
            return "bad_url_scheme" if not _HTTP.match(url) else "invalid_url"
        raw = c["text"]
        known = self.cache.get(raw)
        if known is None:
            text, reason = captions.clean(raw, self.min_chars, self.max_chars)
            if reason:
                known = (None, reason, None, None, None)
            else:
                lang, score = self.lid.predict(text)
                wanted = (not self.langs or lang in self.langs) and score >= self.min_lang_score
                known = (text, None, lang, score, self.matcher.match(text) if wanted else None)
            if len(self.cache) >= self.cache_size:
                self.cache.clear()
            self.cache[raw] = known
        text, reason, lang, score, matched = known
        if reason:
            return reason
        if matched is None:
            return "lang_not_wanted"
        if not matched:
            return "no_query_match"
        return {"uid": balance.uid(url, text), "url": url, "text": text, "page_url": c["page_url"], "lang": lang,
                "lang_score": score, "queries": matched, "input_format": c["input_format"],
                "source_file": c["source_file"]}


# An absolute http(s) URL with a host and no whitespace; anything else is dropped.
_HTTP = re.compile(r"^https?:", re.IGNORECASE)
_URL = re.compile(r"^https?://(?:[^\s/?#@]*@)?(?:[^\s/?#:@\[\]]+|\[[0-9A-Fa-f:.]+\])(?::\d*)?(?:[/?#]\S*)?$",
                  re.IGNORECASE)


class CleanIdentifyMatch(beam.DoFn):
    """Candidate -> curated pair (without balancing) or a counted drop."""

    def __init__(self, queries, langs, min_lang_score, min_chars, max_chars):
        self.args = (queries, langs, min_lang_score, min_chars, max_chars)

    def setup(self):
        self.text_filter = TextFilter(*self.args)

    def process(self, c):
        out = self.text_filter(c)
        if isinstance(out, str):
            _drop(out)
            return
        _counter(f"lang_{out['lang']}").inc()
        yield out


_FORMAT_ORDER = {"warc": 0, "wat": 1, "urllist": 2}


def _first(item):
    """Duplicates of one uid: keep one, deterministically (by format, file, page)."""
    _, pairs = item
    pairs = list(pairs)
    if len(pairs) > 1:
        _drop("duplicate", len(pairs) - 1)
    return min(pairs, key=lambda p: (_FORMAT_ORDER[p["input_format"]], p["source_file"], p["page_url"] or ""))


def _balance(pair, counts, t, seed):
    p = balance.keep_probability(pair["queries"], counts, t)
    if balance.draw(seed, pair["uid"]) >= p:
        _drop("balanced_out")
        return []
    _counter("kept").inc()
    return [dict(pair, keep_prob=p)]


def _file_of(pair, n_files):
    return int(pair["uid"][:8], 16) % n_files, pair


class WritePairs(beam.DoFn):
    def __init__(self, tmp_dir):
        self.tmp_dir = tmp_dir

    def process(self, item):
        index, pairs = item
        pairs = sorted(pairs, key=lambda p: p["uid"])
        table = pa.Table.from_pylist(pairs, schema=CURATED_PAIR)
        validate_table(table, CURATED_PAIR, f"pairs-{index:05d}.parquet")
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", row_group_size=50_000)
        _write(FileSystems.join(self.tmp_dir, f"pairs-{index:05d}.parquet"), buf.getvalue())
        yield index


class WriteQueryCounts(beam.DoFn):
    def __init__(self, tmp_dir, t):
        self.tmp_dir, self.t = tmp_dir, t

    def process(self, rows):
        rows = sorted(rows, key=lambda r: (-r[1], r[0]))
        table = pa.Table.from_pylist(
            [{"query": q, "matches": m, "kept": k, "single_query_keep_prob": min(1.0, self.t / m)}
             for q, m, k in rows], schema=QUERY_COUNTS)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        _write(FileSystems.join(self.tmp_dir, "query_counts.parquet"), buf.getvalue())
        yield len(rows)


def _write(path, data):
    with FileSystems.create(path) as f:
        f.write(data)


def _join_counts(item):
    q, grouped = item
    before = sum(grouped["before"])
    return q, before, sum(grouped["after"])


def build(p, cfg, tmp_dir):
    candidates = (p | "WorkItems" >> beam.Create(cfg.inputs)
                  | "SpreadInputs" >> beam.Reshuffle()
                  | "ReadInputs" >> beam.ParDo(ReadInputs(cfg.url_col, cfg.text_col, cfg.page_col))
                  .with_outputs("unreadable", main="candidates"))
    pairs = (candidates.candidates
             | "CleanIdentifyMatch" >> beam.ParDo(CleanIdentifyMatch(
                 cfg.queries, cfg.langs, cfg.min_lang_score, cfg.min_text_chars, cfg.max_text_chars))
             | "KeyByUid" >> beam.Map(lambda pair: (pair["uid"], pair))
             | "GroupByUid" >> beam.GroupByKey()
             | "Dedup" >> beam.Map(_first))
    before = pairs | "QueriesOfPairs" >> beam.FlatMap(lambda pair: pair["queries"]) \
        | "CountMatches" >> beam.combiners.Count.PerElement()
    kept = pairs | "Balance" >> beam.FlatMap(_balance, beam.pvalue.AsDict(before), cfg.max_per_query, cfg.seed)
    n_files = (kept | "CountKept" >> beam.combiners.Count.Globally()
               | "Files" >> beam.Map(lambda n, per: max(1, math.ceil(n / per)), cfg.rows_per_file))
    (kept | "AssignFile" >> beam.Map(_file_of, beam.pvalue.AsSingleton(n_files))
     | "GroupByFile" >> beam.GroupByKey()
     | "WritePairs" >> beam.ParDo(WritePairs(tmp_dir)))
    after = kept | "QueriesOfKept" >> beam.FlatMap(lambda pair: pair["queries"]) \
        | "CountKeptMatches" >> beam.combiners.Count.PerElement()
    ({"before": before, "after": after} | "JoinCounts" >> beam.CoGroupByKey()
     | "QueryRows" >> beam.Map(_join_counts)
     | "CollectCounts" >> beam.combiners.ToList()
     | "WriteQueryCounts" >> beam.ParDo(WriteQueryCounts(tmp_dir, cfg.max_per_query)))
    return candidates.unreadable
