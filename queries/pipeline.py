"""The query-list pipeline: sources in, one ranked, deduplicated list out (Apache Beam).

    documents ─┬─ CountWords ──────────────┬─ unigrams (count >= min_count)
               └─ CountBigrams ─ JoinPMI ──┤─ bigrams  (count >= min_bigram_count, PMI >= min_pmi)
    pageviews ── SumViews ─────────────────┤─ titles   (views >= min_views, no ':')
    WordNet ──── Lemmas ───────────────────┤─ wordnet
    metadata.json ─────────────────────────┘─ metadata (an existing list, kept first, in order)
                                            Merge (highest-priority source wins) ─ Rank ─ Write

PMI of a bigram ``a b`` is ``log2(N * c(ab) / (c(a) * c(b)))`` where ``c`` are corpus counts
and ``N`` is the total number of word tokens (the unigram total). All counting goes through
Beam combiners and joins; no step holds the corpus's counts in one process except the
runner's own shuffle.

Every candidate entry is counted in exactly one bucket of ``queries_stats.json``: kept, or
dropped for a named reason.
"""

import bz2
import functools
import gzip
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from clipforge.queries import lexicons, tokens
from clipforge.queries.wikidump import DumpError, iter_pages, wikitext_to_prose
from clipforge.schemas.records import QUERY
from clipforge.schemas.validate import validate_table

NS = "clipforge.queries"
PRIORITY = {"metadata": 0, "wordnet": 1, "unigram": 2, "bigram": 3, "title": 4}
log = logging.getLogger("clipforge.queries")


@dataclass
class QueriesConfig:
    wiki: list = field(default_factory=list)  # MediaWiki XML dumps (.xml, .xml.bz2, .xml.gz)
    text: list = field(default_factory=list)  # plain-text corpora, one document per line
    pageviews: list = field(default_factory=list)
    wordnet: list = field(default_factory=list)  # .yaml/.yml (OEWN), .xml[.gz] (WN-LMF) or "nltk"
    metadata: list = field(default_factory=list)  # MetaCLIP metadata.json lists to import
    out: str = "data/queries"
    min_count: int = 100
    min_bigram_count: int = None  # None: same as min_count
    min_pmi: float = 30.0
    min_views: int = 70
    max_entries: int = 500_000  # 0: no cap
    pageview_domains: tuple = ("en", "en.m")

    def __post_init__(self):
        if self.min_bigram_count is None:
            self.min_bigram_count = self.min_count


@functools.lru_cache(maxsize=None)
def _counter(name):
    """A Beam counter (created once per process; it reports to whatever step is running)."""
    return Metrics.counter(NS, name)


def pmi(n_tokens, c_ab, c_a, c_b):
    return math.log2(n_tokens * c_ab / (c_a * c_b))


# --- readers -----------------------------------------------------------------------------

def _open_binary(path):
    """A binary stream of the file's decompressed bytes (bz2 multistream and gzip aware)."""
    raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    if path.endswith(".bz2"):
        return bz2.open(raw), raw
    if path.endswith(".gz"):
        return gzip.open(raw), raw
    return raw, raw


class ReadWikiPages(beam.DoFn):
    """path -> (title, wikitext) of every article; redirects and other namespaces counted and skipped."""

    def __init__(self, sizes):
        self.sizes = sizes  # path -> compressed size, for progress

    def setup(self):
        self.pages = _counter("wiki_pages")
        self.redirects = _counter("wiki_redirects_skipped")
        self.other_ns = _counter("wiki_non_article_skipped")
        self.broken = _counter("wiki_files_broken")
        self.wikitext_bytes = _counter("wiki_wikitext_bytes")

    def process(self, path):
        stream, raw = _open_binary(path)
        size = self.sizes.get(path) or 0
        start = last = time.monotonic()
        n = 0
        name = os.path.basename(path)
        try:
            for page in iter_pages(stream, name):
                self.pages.inc()
                if page.redirect:
                    self.redirects.inc()
                    continue
                if page.ns != 0:
                    self.other_ns.inc()
                    continue
                n += 1
                self.wikitext_bytes.inc(len(page.text.encode("utf-8")))
                yield page.title, page.text
                now = time.monotonic()
                if now - last > 10:
                    last = now
                    _progress(name, n, raw, size, now - start)
        except DumpError as e:
            self.broken.inc()
            log.warning("%s (pages before the break are kept)", e)
            yield beam.pvalue.TaggedOutput("errors", str(e))
        finally:
            stream.close()
        _progress(name, n, raw, size, time.monotonic() - start, done=True)


def _progress(name, n, raw, size, elapsed, done=False):
    try:
        pos = raw.tell()
    except (OSError, AttributeError):
        pos = 0
    rate = pos / max(elapsed, 1e-9) / 1e6
    if done:
        log.info("queries: %s: %d articles in %.0f s", name, n, elapsed)
    elif size:
        eta = (size - pos) / max(pos / elapsed, 1e-9)
        log.info("queries: %s: %d articles, %.0f%% of %.0f MB (%.1f MB/s), ETA %.0f s",
                 name, n, 100 * pos / size, size / 1e6, rate, eta)


def _prose(kv):
    title, text = kv
    prose = wikitext_to_prose(text)
    _counter("prose_bytes").inc(len(prose.encode("utf-8")))
    return prose


class CountTokens(beam.DoFn):
    """Documents -> partial (word, count) and, tagged "bigrams", (bigram, count) pairs.

    Counting inside the bundle first (in-mapper combining) sends one element per distinct
    token per bundle instead of one per occurrence; the dictionary is flushed whenever it
    holds ``max_keys`` entries, so a worker's memory is bounded whatever the corpus size.
    """

    def __init__(self, max_keys=200_000):
        self.max_keys = max_keys

    def setup(self):
        self.documents = _counter("documents")

    def start_bundle(self):
        self.uni, self.bi = {}, {}

    def process(self, doc):
        self.documents.inc()
        uni, bi = self.uni, self.bi
        for w in tokens.unigrams(doc):
            uni[w] = uni.get(w, 0) + 1
        for b in tokens.bigrams(doc):
            bi[b] = bi.get(b, 0) + 1
        if len(uni) + len(bi) > self.max_keys:
            yield from self._flush(wrap=False)

    def finish_bundle(self):
        yield from self._flush(wrap=True)

    def _flush(self, wrap):
        def out(kv):
            return WindowedValue(kv, MIN_TIMESTAMP, [GlobalWindow()]) if wrap else kv
        for kv in self.uni.items():
            yield out(kv)
        for kv in self.bi.items():
            yield beam.pvalue.TaggedOutput("bigrams", out(kv))
        self.uni, self.bi = {}, {}


class ReadPageviews(beam.PTransform):
    def __init__(self, paths, domains):
        super().__init__()
        self.paths, self.domains = paths, frozenset(domains)

    def expand(self, pbegin):
        lines = [pbegin | f"ReadPageviews{i}" >> beam.io.ReadFromText(p) for i, p in enumerate(self.paths)]
        return (lines | "FlattenPageviews" >> beam.Flatten()
                | "ParsePageviews" >> beam.FlatMap(_parse_pageviews, self.domains)
                | "SumViews" >> beam.CombinePerKey(sum))


def _parse_pageviews(line, domains):
    try:
        parsed = lexicons.parse_pageview_line(line, domains)
    except ValueError:
        _counter("pageview_lines_malformed").inc()
        return
    _counter("pageview_lines").inc()
    if parsed is not None:
        yield parsed


def _wordnet_lemmas(path):
    if path == "nltk":
        yield from lexicons.wordnet_lemmas("nltk")
        return
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        yield from lexicons.wordnet_lemmas(path, f)


def _metadata_entries(path):
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for i, entry in enumerate(lexicons.metadata_entries(f.read(), path)):
            yield entry, i


# --- sources -> candidates ----------------------------------------------------------------

def _candidate(query, source, order, count=None, pmi_=None):
    """(query, (priority, order, source, count, pmi)) or nothing when the entry is empty."""
    cleaned = tokens.clean_entry(query)
    if cleaned is None:
        _counter("drop_empty_or_punctuation").inc()
        return []
    return [(cleaned, (PRIORITY[source], order, source, count, pmi_))]


def _unigram(kv, min_count):
    word, c = kv
    _counter("in_unigram").inc()
    if c < min_count:
        _counter("drop_below_min_count").inc()
        return []
    return _candidate(word, "unigram", -c, c)


def _bigram_prefilter(kv, min_bigram_count):
    _counter("in_bigram").inc()
    if kv[1] < min_bigram_count:
        _counter("drop_below_min_bigram_count").inc()
        return []
    return [kv]


def _attach_first(item):
    """(first word, {"bigrams": ..., "unigram": ...}) -> (second word, (bigram, c_ab, c_a))."""
    word, grouped = item
    c_a = next(iter(grouped["unigram"]), None)
    for bigram, c_ab in grouped["bigrams"]:
        yield bigram.split(" ", 1)[1], (bigram, c_ab, c_a)


def _score_bigram(item, n_tokens, min_pmi):
    word, grouped = item
    c_b = next(iter(grouped["unigram"]), None)
    for bigram, c_ab, c_a in grouped["bigrams"]:
        value = pmi(n_tokens, c_ab, c_a, c_b)
        Metrics.distribution(NS, "pmi_milli").update(int(value * 1000))
        if value < min_pmi:
            _counter("drop_below_min_pmi").inc()
            continue
        yield from _candidate(bigram, "bigram", -value, c_ab, value)


def _title(kv, min_views):
    title, views = kv
    _counter("in_title").inc()
    if ":" in title:
        _counter("drop_title_has_colon").inc()
        return []
    if views < min_views:
        _counter("drop_below_min_views").inc()
        return []
    return _candidate(title.replace("_", " "), "title", -views, views)


def _wordnet(lemma):
    _counter("in_wordnet").inc()
    return _candidate(lemma, "wordnet", 0)


def _metadata(kv):
    entry, index = kv
    _counter("in_metadata").inc()
    return _candidate(entry, "metadata", index)


def _merge(item):
    """One query, several candidates: the highest-priority source wins."""
    query, cands = item
    cands = sorted(cands, key=lambda c: (c[0], c[1]))
    if len(cands) > 1:
        _counter("drop_duplicate_of_higher_priority").inc(len(cands) - 1)
    _counter("merged").inc()
    _, order, source, count, pmi_ = cands[0]
    return {"query": query, "source": source, "count": count, "pmi": pmi_, "_order": order}


def _rank_key(row):
    return (PRIORITY[row["source"]], row["_order"], row["query"])


class WriteOutputs(beam.DoFn):
    """The ranked list -> queries.parquet and metadata.json (through Beam's filesystems)."""

    def __init__(self, out):
        self.out = out

    def process(self, rows):
        rows = sorted(rows, key=_rank_key)
        for r in rows:
            _counter(f"kept_{r['source']}").inc()
        _counter("kept").inc(len(rows))
        table = validate_table(pa.Table.from_pylist(
            [{k: r[k] for k in ("query", "source", "count", "pmi")} for r in rows], schema=QUERY), QUERY)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        _write(FileSystems.join(self.out, "queries.parquet"), buf.getvalue())
        _write(FileSystems.join(self.out, "metadata.json"),
               (json.dumps([r["query"] for r in rows], ensure_ascii=False, indent=0) + "\n").encode("utf-8"))
        yield len(rows)


def _write(path, data):
    tmp = path + ".tmp"
    with FileSystems.create(tmp) as f:
        f.write(data)
    FileSystems.rename([tmp], [path])


# --- the pipeline --------------------------------------------------------------------------

def build(p, cfg, wiki_sizes=None):
    """Add the query-list pipeline to ``p``; returns the PCollection of the output count."""
    candidates = []
    docs = []
    if cfg.wiki:
        # One dump file per worker at a time; pages are turned into prose where they are read, so
        # only partial counts (not the corpus) travel between steps and memory stays flat.
        articles = (p | "WikiFiles" >> beam.Create(sorted(cfg.wiki))
                    | "SpreadFiles" >> beam.Reshuffle()
                    | "ReadWikiPages" >> beam.ParDo(ReadWikiPages(wiki_sizes or {})).with_outputs("errors", main="pages"))
        docs.append(articles.pages | "WikitextToProse" >> beam.Map(_prose))
    for i, path in enumerate(cfg.text):
        docs.append(p | f"ReadText{i}" >> beam.io.ReadFromText(path))
    if docs:
        partial = (docs | "Corpus" >> beam.Flatten()
                   | "CountInBundles" >> beam.ParDo(CountTokens()).with_outputs("bigrams", main="words"))
        unigram_counts = partial.words | "CountWords" >> beam.CombinePerKey(sum)
        n_tokens = (unigram_counts | "Tokens" >> beam.Values()
                    | "TotalTokens" >> beam.CombineGlobally(sum))
        candidates.append(unigram_counts | "Unigrams" >> beam.FlatMap(_unigram, cfg.min_count))
        bigram_counts = (partial.bigrams | "CountBigrams" >> beam.CombinePerKey(sum)
                         | "MinBigramCount" >> beam.FlatMap(_bigram_prefilter, cfg.min_bigram_count))
        by_first = (
            {"bigrams": bigram_counts | "KeyByFirst" >> beam.Map(lambda kv: (kv[0].split(" ", 1)[0], kv)),
             "unigram": unigram_counts}
            | "JoinFirstWord" >> beam.CoGroupByKey()
            | "AttachFirstCount" >> beam.FlatMap(_attach_first))
        candidates.append(
            {"bigrams": by_first, "unigram": unigram_counts}
            | "JoinSecondWord" >> beam.CoGroupByKey()
            | "ScorePMI" >> beam.FlatMap(_score_bigram, beam.pvalue.AsSingleton(n_tokens), cfg.min_pmi))
        (n_tokens | "CountTokens" >> beam.Map(lambda n: _counter("tokens").inc(n)))
    if cfg.pageviews:
        candidates.append(p | "Pageviews" >> ReadPageviews(cfg.pageviews, cfg.pageview_domains)
                          | "Titles" >> beam.FlatMap(_title, cfg.min_views))
    if cfg.wordnet:
        candidates.append(p | "WordNetSources" >> beam.Create(sorted(cfg.wordnet))
                          | "ReadLemmas" >> beam.FlatMap(_wordnet_lemmas)
                          | "DistinctLemmas" >> beam.Distinct()
                          | "WordNet" >> beam.FlatMap(_wordnet))
    if cfg.metadata:
        candidates.append(p | "MetadataFiles" >> beam.Create(list(cfg.metadata))
                          | "ReadMetadata" >> beam.FlatMap(_metadata_entries)
                          | "FirstIndex" >> beam.CombinePerKey(min)
                          | "Metadata" >> beam.FlatMap(_metadata))
    merged = (candidates | "AllCandidates" >> beam.Flatten()
              | "GroupByQuery" >> beam.GroupByKey()
              | "Merge" >> beam.Map(_merge))
    if cfg.max_entries:
        ranked = merged | "Cap" >> beam.combiners.Top.Smallest(cfg.max_entries, key=_rank_key)
    else:
        ranked = merged | "Collect" >> beam.combiners.ToList()
    return ranked | "Write" >> beam.ParDo(WriteOutputs(cfg.out))
