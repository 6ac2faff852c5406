"""The query-list pipeline: sources in, one ranked, deduplicated list out (Apache Beam).

    wiki dumps, text ─ ReadCorpus ─────────────┬─ CountWords ──────────┬─ unigrams (count >= min_count)
     (per file or range, counted in place)     └─ CountBigrams ─ Join ─┤─ bigrams  (count >= min_bigram_count,
                                                                       │            PMI >= min_pmi)
    pageviews ── ReadPageviews ─ SumViews ─────────────────────────────┤─ titles   (views >= min_views, no ':')
    WordNet ──── Lemmas ───────────────────────────────────────────────┤─ wordnet
    metadata.json ─────────────────────────────────────────────────────┘─ metadata (an existing list, kept first)
                         Merge (highest-priority source wins) ─ Rank ─ Write ─ FinishWithStats

PMI of a bigram ``a b`` is ``log2(N * c(ab) / (c(a) * c(b)))`` where ``c`` are corpus counts
and ``N`` is the total number of word tokens. All counting goes through Beam combiners and
joins; no step holds the corpus's counts in one process except the runner's own shuffle.

The pipeline keeps to what every Beam runner translates faithfully (see
``clipforge.beam``): no Beam Metrics, no side inputs, no multi-output ParDos, no
Read transforms, nothing emitted from ``finish_bundle`` (Beam's DaskRunner drops it), and one
last step, ``FinishWithStats``, that depends on everything else. So:

- Files are read inside ParDos over a Create of file names (text files: of byte ranges), and
  each read counts its words and bigrams in a bounded dictionary (flushed when full), so only
  partial counts travel; the funnel counts of a file come out of the same ``process`` call.
  Dumps and text ranges are one Create and one reader, so that no Flatten stands between the
  reader and the combiners (the local runner would write every partial count out there).
- A step that emits records and counts emits tagged tuples, split by one ParDo a tag. Per-element
  count dictionaries are summed per shard right away (``Classify``); on the local runner the
  combiner is lifted into the producing step, so what travels is a handful of dictionaries.
- N reaches the PMI step as data: the bigrams are keyed by one of ``PMI_SHARDS`` shards and N
  is copied to every shard, and one GroupByKey brings them together.
- The ranked list is cut to ``max_entries`` per shard and then once more for all shards.

Every candidate entry is counted in exactly one bucket of ``queries_stats.json``: kept, or
dropped for a named reason.
"""

import io
import json
import logging
import math
import os
import time
import zlib
from dataclasses import dataclass, field

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from clipforge.beam import FinishWithStats, SumCounts
from clipforge.limits import MAX_PAGEVIEW_LINE_BYTES, MAX_WIKI_PAGE_CHARS, MAX_WIKI_PAGE_MARKUP
from clipforge.queries import lexicons, tokens
from clipforge.queries.inflate import CHUNK, READ_ERRORS, OverBudget, open_input
from clipforge.queries.prose_worker import ProseParser
from clipforge.queries.wikidump import DumpError, PageError, iter_pages, markup_cost
from clipforge.schemas.records import QUERY
from clipforge.schemas.validate import validate_table

PRIORITY = {"metadata": 0, "wordnet": 1, "unigram": 2, "bigram": 3, "title": 4}
COUNT_SHARDS = 16  # per-element counts are summed per shard before the stage's total
PMI_SHARDS = 64  # bigrams are scored in this many groups, each with its own copy of N
RANK_SHARDS = 4  # the list is cut to max_entries in this many groups, then once more
TEXT_SPLIT_BYTES = 64 << 20  # uncompressed text files are read in ranges of this size
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
    max_page_chars: int = MAX_WIKI_PAGE_CHARS  # longer pages (and --text lines) are skipped, counted
    max_page_markup: int = MAX_WIKI_PAGE_MARKUP  # pages with more markup characters are skipped, counted

    def __post_init__(self):
        if self.min_bigram_count is None:
            self.min_bigram_count = self.min_count


def pmi(n_tokens, c_ab, c_a, c_b):
    return math.log2(n_tokens * c_ab / (c_a * c_b))


def _shard(key, n):
    """A stable shard number in [0, n) for a string key (the same in every process)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % n


class _Only(beam.DoFn):
    """The values of the (tag, value) elements tagged ``tag`` (a DoFn with its parameter in the
    constructor: Beam calls it on its fast path, a FlatMap with extra arguments is not)."""

    def __init__(self, tag):
        self.tag = tag

    def process(self, element):
        if element[0] == self.tag:
            yield element[1]


def _split(pcoll, label, tags):
    """A stream of (tag, value) tuples -> {tag: PCollection of values} (one ParDo each)."""
    return {t: pcoll | f"{label}{t.capitalize()}" >> beam.ParDo(_Only(t)) for t in tags}


# --- readers -----------------------------------------------------------------------------
# The hard rule of every reader: a record (a page, a line) that cannot be used is counted under a
# reason and the run goes on; a file that cannot be read on (truncated, refused, inflating past its
# decompression budget) is counted as broken, its records before the break kept. Only a bug in
# clipforge stops a run.

# Reasons a dump page is skipped, counted as wiki_<reason> and reported under
# extra.corpus.wiki_pages_skipped.
PAGE_SKIP_REASONS = ("page_too_large", "page_markup_too_heavy", "page_parse_too_costly", "page_malformed",
                     "page_unparsable")


def splittable(path):
    return CompressionTypes.detect_compression_type(path) == CompressionTypes.UNCOMPRESSED


def text_ranges(paths, sizes=None, split_bytes=TEXT_SPLIT_BYTES):
    """(path, start, end) work items: uncompressed files in byte ranges, others whole (end None:
    to the end of the file)."""
    out = []
    for path in paths:
        size = (sizes or {}).get(path)
        if not splittable(path) or not size or size <= split_bytes:
            out.append((path, 0, None))
            continue
        starts = list(range(0, size, split_bytes))
        out.extend((path, s, e) for s, e in zip(starts, starts[1:] + [None]))
    return out


def _readline(stream, max_bytes):
    """(line, n): the next line with its newline (b"" at the end) and its length in bytes; a line
    longer than ``max_bytes`` (without its newline) is read past in bounded pieces and comes back
    as None."""
    line = stream.readline(max_bytes + 1)
    if len(line) <= max_bytes or line.endswith(b"\n"):
        return line, len(line)
    n = len(line)
    while True:
        piece = stream.readline(CHUNK)
        n += len(piece)
        if not piece or piece.endswith(b"\n"):
            return None, n


def read_lines(path, start=0, end=None, max_bytes=None):
    """The lines (bytes, without their "\\n" or "\\r\\n") that start in [start, end) of a file,
    as Beam's ReadFromText splits them; compressed files are read whole (start 0, end None). A line
    longer than ``max_bytes`` (default: 4 bytes for each of MAX_WIKI_PAGE_CHARS) is None. Raises
    what reading raises (READ_ERRORS: truncated or damaged, OverBudget)."""
    max_bytes = 4 * MAX_WIKI_PAGE_CHARS if max_bytes is None else max_bytes
    stream, raw = open_input(path)
    try:
        pos = 0
        if start:
            stream.seek(start - 1)
            pos = start - 1 + _readline(stream, max_bytes)[1]  # the line running into the range is the previous one's
        while end is None or pos < end:
            line, n = _readline(stream, max_bytes)
            if not n:
                break
            pos += n
            if line is not None and line.endswith(b"\n"):
                line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            yield line
    finally:
        stream.close()


def _broken(path, e):
    """The one-line reason a file could not be read on, logged; the counter it goes under."""
    log.warning("%s: %s (its records before the break are kept)", path,
                e if isinstance(e, OverBudget) else f"cannot be read on ({type(e).__name__}: {e})")
    return "over_budget" if isinstance(e, OverBudget) else "broken"


class _Tally:
    """Word and bigram counts of the documents of one work item, in a dictionary that is
    flushed (as tagged ("words" | "bigrams", (token, count)) pairs) whenever it holds
    ``max_keys`` entries, so memory is bounded whatever the input."""

    def __init__(self, max_keys):
        self.max_keys = max_keys
        self.uni, self.bi = {}, {}
        self.documents = self.tokens = 0

    def add(self, doc):
        self.documents += 1
        uni, bi = self.uni, self.bi
        words = tokens.unigrams(doc)
        self.tokens += len(words)
        for w in words:
            uni[w] = uni.get(w, 0) + 1
        for b in tokens.bigrams(doc):
            bi[b] = bi.get(b, 0) + 1
        if len(uni) + len(bi) > self.max_keys:
            yield from self.flush()

    def flush(self):
        for kv in self.uni.items():
            yield "words", kv
        for kv in self.bi.items():
            yield "bigrams", kv
        self.uni, self.bi = {}, {}

    def counts(self):
        return {"documents": self.documents, "tokens": self.tokens}


class ReadCorpus(beam.DoFn):
    """A work item of the corpus, ("wiki", path, 0, None) or ("text", path, start, end) -> the
    word and bigram counts of its documents (tagged "words", "bigrams"), then one tagged
    "counts" dictionary. One DoFn for both kinds, over one Create: the local runner then fuses
    reading, counting and the combiners' first step (a Flatten of two readers would make it
    write every partial count out between steps)."""

    def __init__(self, sizes, max_keys=200_000, max_page_chars=MAX_WIKI_PAGE_CHARS,
                 max_page_markup=MAX_WIKI_PAGE_MARKUP):
        self.sizes = sizes  # path -> size, for progress
        self.max_keys = max_keys
        self.max_page_chars, self.max_page_markup = max_page_chars, max_page_markup

    def process(self, work):
        kind, path, start, end = work
        if kind == "wiki":
            return read_wiki(path, self.sizes.get(path) or 0, self.max_keys, self.max_page_chars,
                             self.max_page_markup)
        return read_text(path, start, end, self.max_keys, self.max_page_chars)


def corpus_work(wiki, text, sizes=None):
    """The corpus's work items: one per dump file, one per text range."""
    return [("wiki", path, 0, None) for path in sorted(wiki)] + \
        [("text", path, start, end) for path, start, end in text_ranges(text, sizes)]


def read_wiki(path, size, max_keys, max_page_chars=MAX_WIKI_PAGE_CHARS, max_page_markup=MAX_WIKI_PAGE_MARKUP):
    """The articles of one dump, as ``ReadCorpus`` gives them; redirects and other namespaces
    counted and skipped, pages over a cap or that the wikitext parser fails on counted under
    their reason (``PAGE_SKIP_REASONS``) and skipped, a dump that breaks off or inflates past its
    decompression budget counted (its pages before the break kept)."""
    start = last = time.monotonic()
    n = 0
    name = os.path.basename(path)
    tally = _Tally(max_keys)
    counts = {"wiki_pages": 0, "wiki_redirects_skipped": 0, "wiki_non_article_skipped": 0,
              "wiki_files_broken": 0, "wiki_files_over_budget": 0, "wiki_wikitext_bytes": 0, "prose_bytes": 0,
              **{f"wiki_{r}": 0 for r in PAGE_SKIP_REASONS}}
    stream, raw = open_input(path)
    parser = ProseParser()
    try:
        for page in iter_pages(stream, name, max_page_chars):
            counts["wiki_pages"] += 1
            if page.redirect:
                counts["wiki_redirects_skipped"] += 1
                continue
            if page.ns != 0:
                counts["wiki_non_article_skipped"] += 1
                continue
            if page.skip:
                counts[f"wiki_{page.skip}"] += 1
                continue
            if markup_cost(page.text) > max_page_markup:
                counts["wiki_page_markup_too_heavy"] += 1
                continue
            try:
                prose = parser.prose(page.text)
            except PageError as e:
                counts[f"wiki_{e.reason}"] += 1
                log.warning("%s: page %r skipped (%s)", name, page.title[:200], e)
                continue
            n += 1
            counts["wiki_wikitext_bytes"] += len(page.text.encode("utf-8"))
            counts["prose_bytes"] += len(prose.encode("utf-8"))
            yield from tally.add(prose)
            now = time.monotonic()
            if now - last > 10:
                last = now
                _progress(name, n, _tell(raw), size, now - start)
    except DumpError as e:
        counts["wiki_files_broken"] += 1
        if e.reason == "over_decompression_budget":
            counts["wiki_files_over_budget"] += 1
        log.warning("%s (pages before the break are kept)", e)
    finally:
        parser.close()
        stream.close()
    _progress(name, n, 0, size, time.monotonic() - start, done=True)
    yield from tally.flush()
    yield "counts", {**counts, **tally.counts()}


def _tell(raw):
    try:
        return raw.tell()
    except (OSError, AttributeError, ValueError):
        return 0


def _progress(name, n, pos, size, elapsed, done=False):
    rate = pos / max(elapsed, 1e-9) / 1e6
    if done:
        log.info("queries: %s: %d articles in %.0f s", name, n, elapsed)
    elif size:
        eta = (size - pos) / max(pos / elapsed, 1e-9)
        log.info("queries: %s: %d articles, %.0f%% of %.0f MB (%.1f MB/s), ETA %.0f s",
                 name, n, 100 * pos / size, size / 1e6, rate, eta)


def read_text(path, start, end, max_keys, max_page_chars=MAX_WIKI_PAGE_CHARS):
    """The lines of one text range (one document a line), as ``ReadCorpus`` gives them. Lines
    that are not UTF-8 are read with replacement characters, and reported; lines longer than
    ``max_page_chars`` are counted and skipped; a file that cannot be read on is counted (its
    lines before the break kept)."""
    tally = _Tally(max_keys)
    not_utf8 = 0
    counts = {"text_lines_too_large": 0, "text_files_broken": 0, "text_files_over_budget": 0}
    try:
        for line in read_lines(path, start, end, 4 * max_page_chars):
            doc = None
            if line is not None:
                try:
                    doc = line.decode("utf-8")
                except UnicodeDecodeError:
                    doc = line.decode("utf-8", "replace")
                    not_utf8 += 1
            if doc is None or len(doc) > max_page_chars:
                counts["text_lines_too_large"] += 1
                continue
            yield from tally.add(doc)
    except READ_ERRORS as e:
        counts["text_files_broken"] += 1
        if _broken(path, e) == "over_budget":
            counts["text_files_over_budget"] += 1
    if not_utf8:
        log.warning("%s: %d lines are not UTF-8 (read with replacement characters)", path, not_utf8)
    yield from tally.flush()
    yield "counts", {**counts, **tally.counts()}


class ReadPageviews(beam.DoFn):
    """path of a pageviews file -> partial (title, views) sums of its lines (tagged "views"),
    then one tagged "counts" dictionary; malformed lines are counted and skipped."""

    def __init__(self, domains, max_keys=200_000):
        self.domains = frozenset(domains)
        self.max_keys = max_keys

    def process(self, path):
        views = {}
        lines = malformed = 0
        counts = {"pageview_files_broken": 0, "pageview_files_over_budget": 0}
        try:
            for raw in read_lines(path, max_bytes=MAX_PAGEVIEW_LINE_BYTES):
                try:
                    if raw is None:
                        raise ValueError("line too long")
                    parsed = lexicons.parse_pageview_line(raw.decode("utf-8"), self.domains)
                except ValueError:  # UnicodeDecodeError included
                    malformed += 1
                    continue
                lines += 1
                if parsed is not None:
                    title, n = parsed
                    views[title] = views.get(title, 0) + n
                    if len(views) > self.max_keys:
                        yield from (("views", kv) for kv in views.items())
                        views = {}
        except READ_ERRORS as e:
            counts["pageview_files_broken"] += 1
            if _broken(path, e) == "over_budget":
                counts["pageview_files_over_budget"] += 1
        yield from (("views", kv) for kv in views.items())
        yield "counts", {"pageview_lines": lines, "pageview_lines_malformed": malformed, **counts}


class ReadLemmas(beam.DoFn):
    """A WordNet source -> its lemmas (tagged "lemmas"), then one tagged "counts" dictionary; a
    source that cannot be read on (the launcher checked it whole, so it changed since) is
    counted, its lemmas before the break kept."""

    def process(self, path):
        broken = 0
        try:
            for lemma in lexicons.wordnet_lemmas(path):
                yield "lemmas", lemma
        except lexicons.LexiconError as e:
            broken = 1
            log.warning("%s (its lemmas before the break are kept)", e)
        yield "counts", {"wordnet_files_broken": broken}


def _metadata_entries(path):
    for i, entry in enumerate(lexicons.read_metadata_file(path)):
        yield entry, i


# --- sources -> candidates: each step is fn(element, ...) -> (records, counts) ----------------

def _candidate(query, source, order, counts, count=None, pmi_=None):
    """[(query, (priority, order, source, count, pmi))], or [] (counted) when the entry is empty."""
    cleaned = tokens.clean_entry(query)
    if cleaned is None:
        counts["drop_empty_or_punctuation"] = counts.get("drop_empty_or_punctuation", 0) + 1
        return []
    return [(cleaned, (PRIORITY[source], order, source, count, pmi_))]


def _unigram(kv, min_count):
    word, c = kv
    counts = {"in_unigram": 1}
    if c < min_count:
        counts["drop_below_min_count"] = 1
        return [], counts
    return _candidate(word, "unigram", -c, counts, c), counts


def _bigram_prefilter(kv, min_bigram_count):
    """(bigram, count) -> (first word, (bigram, count)) when frequent enough."""
    counts = {"in_bigram": 1}
    if kv[1] < min_bigram_count:
        counts["drop_below_min_bigram_count"] = 1
        return [], counts
    return [(kv[0].split(" ", 1)[0], kv)], counts


def _attach_first(item):
    """(first word, {"bigrams": ..., "unigram": ...}) -> (second word, (bigram, c_ab, c_a))."""
    word, grouped = item
    c_a = next(iter(grouped["unigram"]), None)
    for bigram, c_ab in grouped["bigrams"]:
        yield bigram.split(" ", 1)[1], (bigram, c_ab, c_a)


def _attach_second(item):
    """(second word, {"bigrams": ..., "unigram": ...}) -> (shard, ("bigram", (bigram, c_ab, c_a, c_b)))."""
    word, grouped = item
    c_b = next(iter(grouped["unigram"]), None)
    for bigram, c_ab, c_a in grouped["bigrams"]:
        yield _shard(bigram, PMI_SHARDS), ("bigram", (bigram, c_ab, c_a, c_b))


def _tokens_to_shards(n_tokens):
    return [(i, ("n", n_tokens)) for i in range(PMI_SHARDS)]


def _score_shard(item, min_pmi):
    """(shard, [("n", N), ("bigram", ...), ...]) -> tagged candidates, one "counts" dictionary
    and one "pmi" summary {min, max, sum, count} of the PMI values in thousandths."""
    _, values = item
    n_tokens = next((v for tag, v in values if tag == "n"), None)
    counts, lo, hi, total, scored = {}, None, None, 0, 0
    for tag, v in values:  # a second pass over the group: N first, then the bigrams
        if tag != "bigram":
            continue
        bigram, c_ab, c_a, c_b = v
        value = pmi(n_tokens, c_ab, c_a, c_b)
        milli = int(value * 1000)
        lo = milli if lo is None else min(lo, milli)
        hi = milli if hi is None else max(hi, milli)
        total += milli
        scored += 1
        if value < min_pmi:
            counts["drop_below_min_pmi"] = counts.get("drop_below_min_pmi", 0) + 1
            continue
        for cand in _candidate(bigram, "bigram", -value, counts, c_ab, value):
            yield "records", cand
    if scored:
        yield "counts", counts
        yield "pmi", {"min": lo, "max": hi, "sum": total, "count": scored}


class _PmiSummary(beam.CombineFn):
    """Merges {min, max, sum, count} summaries."""

    def create_accumulator(self):
        return None

    def add_input(self, acc, s):
        if acc is None:
            return dict(s)
        return {"min": min(acc["min"], s["min"]), "max": max(acc["max"], s["max"]),
                "sum": acc["sum"] + s["sum"], "count": acc["count"] + s["count"]}

    def merge_accumulators(self, accs):
        out = None
        for a in accs:
            if a is not None:
                out = self.add_input(out, a)
        return out

    def extract_output(self, acc):
        return acc


def _title(kv, min_views):
    title, views = kv
    counts = {"in_title": 1}
    if ":" in title:
        counts["drop_title_has_colon"] = 1
        return [], counts
    if views < min_views:
        counts["drop_below_min_views"] = 1
        return [], counts
    return _candidate(title.replace("_", " "), "title", -views, counts, views), counts


def _wordnet(lemma):
    counts = {"in_wordnet": 1}
    return _candidate(lemma, "wordnet", 0, counts), counts


def _metadata(kv):
    entry, index = kv
    counts = {"in_metadata": 1}
    return _candidate(entry, "metadata", index, counts), counts


def _merge(item):
    """One query, several candidates: the highest-priority source wins. The row is
    (priority, order, query, source, count, pmi); its first three fields rank it."""
    query, cands = item
    cands = sorted(cands, key=lambda c: (c[0], c[1]))
    counts = {"merged": 1}
    if len(cands) > 1:
        counts["drop_duplicate_of_higher_priority"] = len(cands) - 1
    priority, order, source, count, pmi_ = cands[0]
    return [(priority, order, query, source, count, pmi_)], counts


class _Classify(beam.DoFn):
    """element -> tagged records and one tagged (shard, counts); shards taken in turn."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def start_bundle(self):
        self.turn = 0

    def process(self, element):
        records, counts = self.fn(element, *self.args)
        for r in records:
            yield "records", r
        self.turn = (self.turn + 1) % COUNT_SHARDS
        yield "counts", (self.turn, counts)


class Classify(beam.PTransform):
    """Applies ``fn(element, *args) -> (records, counts)`` to every element. Returns the
    records and the counts, summed per shard (a handful of dictionaries, whatever the
    number of elements: on the local runner the sum happens inside the producing step)."""

    def __init__(self, fn, *args):
        super().__init__()
        self.fn, self.args = fn, args

    def expand(self, pcoll):
        parts = _split(pcoll | "Apply" >> beam.ParDo(_Classify(self.fn, self.args)), "", ("records", "counts"))
        counts = (parts["counts"] | "SumPerShard" >> beam.CombinePerKey(SumCounts())
                  | "ShardCounts" >> beam.Values())
        return parts["records"], counts


# --- the ranked list -------------------------------------------------------------------------

def _rank_key(row):
    return row[:3]


class _Smallest(beam.CombineFn):
    """The ``n`` rows that rank first (all rows when ``n`` is 0 or None); inputs are rows, or
    lists of rows when ``lists``. Accumulators are lists of at most 2n rows."""

    def __init__(self, n, lists=False):
        self.n, self.lists = n or None, lists

    def _trim(self, acc):
        if self.n and len(acc) > 2 * self.n:
            acc.sort(key=_rank_key)
            del acc[self.n:]
        return acc

    def create_accumulator(self):
        return []

    def add_input(self, acc, element):
        if self.lists:
            acc.extend(element)
        else:
            acc.append(element)
        return self._trim(acc)

    def merge_accumulators(self, accs):
        out = []
        for a in accs:
            out.extend(a)
            self._trim(out)
        return out

    def extract_output(self, acc):
        acc = sorted(acc, key=_rank_key)
        return acc[: self.n] if self.n else acc


def _rank_shard(row):
    return _shard(row[2], RANK_SHARDS), row


class WriteOutputs(beam.DoFn):
    """The ranked list -> queries.parquet and metadata.json (through Beam's filesystems), and
    the kept counts."""

    def __init__(self, out):
        self.out = out

    def process(self, rows):
        rows = sorted(rows, key=_rank_key)
        counts = {"kept": len(rows)}
        for r in rows:
            counts[f"kept_{r[3]}"] = counts.get(f"kept_{r[3]}", 0) + 1
        table = validate_table(pa.Table.from_pylist(
            [{"query": q, "source": s, "count": c, "pmi": p} for _, _, q, s, c, p in rows], schema=QUERY), QUERY)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        _write(FileSystems.join(self.out, "queries.parquet"), buf.getvalue())
        _write(FileSystems.join(self.out, "metadata.json"),
               (json.dumps([r[2] for r in rows], ensure_ascii=False, indent=0) + "\n").encode("utf-8"))
        yield counts


def _write(path, data):
    tmp = path + ".tmp"
    with FileSystems.create(tmp) as f:
        f.write(data)
    FileSystems.rename([tmp], [path])


def _pmi_counts(summary):
    return {"bigram_pmi_milli": summary}


# --- the pipeline --------------------------------------------------------------------------

def build(p, cfg, stats_path, sizes=None):
    """Add the query-list pipeline to ``p``, ending in ``FinishWithStats(stats_path)`` (the
    pipeline's counts, for the launcher); returns that last step's PCollection. ``sizes``
    maps input paths to their sizes (progress lines, text ranges)."""
    sizes = sizes or {}
    candidates, counts = [], []
    if cfg.wiki or cfg.text:
        # One dump file or text range per worker at a time; documents are counted where they are
        # read, so only partial counts (not the corpus) travel between steps.
        parts = _split(p | "CorpusFiles" >> beam.Create(corpus_work(cfg.wiki, cfg.text, sizes))
                       | "SpreadFiles" >> beam.Reshuffle()
                       | "ReadCorpus" >> beam.ParDo(ReadCorpus(sizes, max_page_chars=cfg.max_page_chars,
                                                             max_page_markup=cfg.max_page_markup)),
                       "Corpus", ("words", "bigrams", "counts"))
        counts.append(parts["counts"])
        unigram_counts = parts["words"] | "CountWords" >> beam.CombinePerKey(sum)
        n_tokens = (parts["counts"] | "Tokens" >> beam.Map(lambda c: c["tokens"])
                    | "TotalTokens" >> beam.CombineGlobally(sum).without_defaults())
        records, c = unigram_counts | "Unigrams" >> Classify(_unigram, cfg.min_count)
        candidates.append(records)
        counts.append(c)
        by_first, c = (parts["bigrams"] | "CountBigrams" >> beam.CombinePerKey(sum)
                       | "MinBigramCount" >> Classify(_bigram_prefilter, cfg.min_bigram_count))
        counts.append(c)
        by_second = ({"bigrams": by_first, "unigram": unigram_counts}
                     | "JoinFirstWord" >> beam.CoGroupByKey()
                     | "AttachFirstCount" >> beam.FlatMap(_attach_first))
        by_shard = ({"bigrams": by_second, "unigram": unigram_counts}
                    | "JoinSecondWord" >> beam.CoGroupByKey()
                    | "AttachSecondCount" >> beam.FlatMap(_attach_second))
        n_per_shard = n_tokens | "TokensToShards" >> beam.FlatMap(_tokens_to_shards)
        scored = _split((by_shard, n_per_shard) | "BigramsAndTokens" >> beam.Flatten()
                        | "GroupByShard" >> beam.GroupByKey()
                        | "ScorePMI" >> beam.FlatMap(_score_shard, cfg.min_pmi),
                        "Scored", ("records", "counts", "pmi"))
        candidates.append(scored["records"])
        counts.append(scored["counts"])
        counts.append(scored["pmi"] | "PMISummary" >> beam.CombineGlobally(_PmiSummary()).without_defaults()
                      | "PMICounts" >> beam.Map(_pmi_counts))
    if cfg.pageviews:
        parts = _split(p | "PageviewFiles" >> beam.Create(sorted(cfg.pageviews))
                       | "SpreadPageviews" >> beam.Reshuffle()
                       | "ReadPageviews" >> beam.ParDo(ReadPageviews(cfg.pageview_domains)),
                       "Pageviews", ("views", "counts"))
        counts.append(parts["counts"])
        records, c = (parts["views"] | "SumViews" >> beam.CombinePerKey(sum)
                      | "Titles" >> Classify(_title, cfg.min_views))
        candidates.append(records)
        counts.append(c)
    if cfg.wordnet:
        parts = _split(p | "WordNetSources" >> beam.Create(sorted(cfg.wordnet))
                       | "ReadLemmas" >> beam.ParDo(ReadLemmas()),
                       "WordNet", ("lemmas", "counts"))
        counts.append(parts["counts"])
        records, c = (parts["lemmas"] | "DistinctLemmas" >> beam.Distinct()
                      | "WordNet" >> Classify(_wordnet))
        candidates.append(records)
        counts.append(c)
    if cfg.metadata:
        records, c = (p | "MetadataFiles" >> beam.Create(list(cfg.metadata))
                      | "ReadMetadata" >> beam.FlatMap(_metadata_entries)
                      | "FirstIndex" >> beam.CombinePerKey(min)
                      | "Metadata" >> Classify(_metadata))
        candidates.append(records)
        counts.append(c)
    rows, c = (candidates | "AllCandidates" >> beam.Flatten()
               | "GroupByQuery" >> beam.GroupByKey()
               | "Merge" >> Classify(_merge))
    counts.append(c)
    n = cfg.max_entries or None
    counts.append(rows | "RankShards" >> beam.Map(_rank_shard)
                  | "RankPerShard" >> beam.CombinePerKey(_Smallest(n))
                  | "ShardLists" >> beam.Values()
                  | "Rank" >> beam.CombineGlobally(_Smallest(n, lists=True)).without_defaults()
                  | "Write" >> beam.ParDo(WriteOutputs(cfg.out)))
    return tuple(counts) | "FinishWithStats" >> FinishWithStats(stats_path)
