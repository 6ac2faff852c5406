"""The query-list pipeline: sources in, one ranked, deduplicated list out (Apache Beam).

    wiki dumps, text ─ ReadCorpus ─────────────┬─ CountWords ──────────┬─ unigrams (count >= min_count)
     (per file or range, counted in place)     └─ CountBigrams ─ Join ─┤─ bigrams  (count >= min_bigram_count,
                                                                       │            PMI >= min_pmi)
    pageviews ── ReadPageviews ─ SumViews ─────────────────────────────┤─ titles   (views >= min_views, no ':')
    WordNet ──── Lemmas ───────────────────────────────────────────────┤─ wordnet
    metadata.json ─────────────────────────────────────────────────────┘─ metadata (an existing list, kept first)
                         Merge (highest-priority source wins) ─ Rank ─ Write ─ FinishWithStats

PMI of a bigram ``a b`` is ``log2(N * c(ab) / (c(a) * c(b)))`` where ``c`` are corpus counts
and ``N`` is the total number of word tokens of the language. All counting goes through Beam
combiners and joins; no step holds the corpus's counts in one process except the runner's own
shuffle.

One pipeline builds every language's list: the language is part of every key ((lang, word),
(lang, a, b), (lang, title), (lang, query)), N is summed per language, the PMI groups are
(lang, shard), the list is ranked and cut per language, and ``WriteLanguage`` writes each
language's metadata/{lang}.json and its part of queries.parquet, which ``WriteOutputs`` joins in
language order. Rule sets: ``clip`` and ``metaclip1`` are thresholds; ``metaclip2`` ranks each
(language, source) with ``_TopCap`` (a count of all rows plus the first ``most`` of them, so
memory follows the cap) and cuts at ``cap_of``; the bigram cap comes from the same language's
kept unigram count, joined to it by language.

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
import unicodedata
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
from clipforge.schemas.languages import metadata_lang
from clipforge.schemas.records import QUERY
from clipforge.schemas.validate import validate_table

PRIORITY = {"metadata": 0, "wordnet": 1, "unigram": 2, "bigram": 3, "title": 4}
RULES = ("clip", "metaclip1", "metaclip2")
# MetaCLIP 2's ranked caps per language: (numerator, denominator, most): keep the first
# min(most, ceil(available * numerator / denominator)) by rank. Bigrams: of the language's
# *kept* unigram count, among those with PMI above --min-pmi. WordNet and imported lists: all.
METACLIP2_CAPS = {"unigram": (10, 100, 251_465), "bigram": (40, 100, 100_646), "title": (76, 100, 61_235)}
METACLIP2_MAX_ENTRY_CHARS = 256
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
    max_entries: int = None  # per language; 0: no cap; None: 500,000 (clip, metaclip1) or 0 (metaclip2)
    pageview_domains: tuple = ()  # only these domain codes, when given; else every Wikipedia of the languages
    rules: str = "clip"  # clip | metaclip1 | metaclip2
    langs: tuple = ("en",)  # the languages built; None or "all": every language the inputs have
    default_lang: str = "en"  # the language of inputs that name none (plain --text, --metadata paths)
    input_langs: dict = field(default_factory=dict)  # path -> language, for dumps, text files and lists
    caps: dict = None  # metaclip2's (numerator, denominator, most) per source; None: METACLIP2_CAPS
    max_page_chars: int = MAX_WIKI_PAGE_CHARS  # longer pages (and --text lines) are skipped, counted
    max_page_markup: int = MAX_WIKI_PAGE_MARKUP  # pages with more markup characters are skipped, counted

    def __post_init__(self):
        if self.rules not in RULES:
            raise ValueError(f"unknown rule set {self.rules!r} (one of {', '.join(RULES)})")
        if self.min_bigram_count is None:  # CLIP: the unigram minimum; MetaCLIP: no minimum
            self.min_bigram_count = self.min_count if self.rules == "clip" else 1
        if self.max_entries is None:
            self.max_entries = 0 if self.rules == "metaclip2" else 500_000
        if isinstance(self.langs, str):  # "all" (None: every language the inputs have) or "de,fr"
            self.langs = None if self.langs.strip() == "all" else [x.strip() for x in self.langs.split(",")]
        if self.langs is not None:
            self.langs = tuple(self.langs)
        self.caps = {**METACLIP2_CAPS, **(self.caps or {})}

    def lang_of(self, path):
        return self.input_langs.get(path, self.default_lang)

    def wants(self, lang):
        return lang is not None and (self.langs is None or lang in self.langs)


def cap_of(source, available, kept_unigrams=None, caps=METACLIP2_CAPS):
    """MetaCLIP 2's cap for ``source`` in a language with ``available`` candidates (bigrams: of
    the language's kept unigram count)."""
    num, den, most = caps[source]
    base = kept_unigrams if source == "bigram" else available
    return min(most, (base * num + den - 1) // den)


def lang_counts(counts, lang):
    """``counts`` plus a copy of each under ``lang.<lang>.<name>`` (the per-language funnel)."""
    return {**counts, **{f"lang.{lang}.{k}": v for k, v in counts.items()}}


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
    """Word and bigram counts of the documents of one work item (one language), in a dictionary
    that is flushed (as tagged ("words", ((lang, word), count)) and ("bigrams", ((lang, a, b),
    count)) pairs) whenever it holds ``max_keys`` entries, so memory is bounded whatever the
    input."""

    def __init__(self, max_keys, lang="en"):
        self.max_keys, self.lang = max_keys, lang
        self.uni, self.bi = {}, {}
        self.documents = self.tokens = 0

    def add(self, doc):
        self.documents += 1
        uni, bi = self.uni, self.bi
        words, pairs = tokens.words_and_pairs(doc, self.lang)
        self.tokens += len(words)
        for w in words:
            uni[w] = uni.get(w, 0) + 1
        for b in pairs:
            bi[b] = bi.get(b, 0) + 1
        if len(uni) + len(bi) > self.max_keys:
            yield from self.flush()

    def flush(self):
        lang = self.lang
        for w, c in self.uni.items():
            yield "words", ((lang, w), c)
        for (a, b), c in self.bi.items():
            yield "bigrams", ((lang, a, b), c)
        self.uni, self.bi = {}, {}

    def counts(self):
        return lang_counts({"documents": self.documents, "tokens": self.tokens}, self.lang)


class ReadCorpus(beam.DoFn):
    """A work item of the corpus, ("wiki", path, 0, None, lang) or ("text", path, start, end, lang) -> the
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
        kind, path, start, end, lang = work
        if kind == "wiki":
            return read_wiki(path, self.sizes.get(path) or 0, self.max_keys, self.max_page_chars,
                             self.max_page_markup, lang=lang)
        return read_text(path, start, end, self.max_keys, self.max_page_chars, lang=lang)


def corpus_work(wiki, text, sizes=None, lang_of=lambda path: "en"):
    """The corpus's work items: one per dump file, one per text range, each with its language."""
    return [("wiki", path, 0, None, lang_of(path)) for path in sorted(wiki)] + \
        [("text", path, start, end, lang_of(path)) for path, start, end in text_ranges(text, sizes)]


def read_wiki(path, size, max_keys, max_page_chars=MAX_WIKI_PAGE_CHARS, max_page_markup=MAX_WIKI_PAGE_MARKUP,
              lang="en"):
    """The articles of one dump, as ``ReadCorpus`` gives them; redirects and other namespaces
    counted and skipped, pages over a cap or that the wikitext parser fails on counted under
    their reason (``PAGE_SKIP_REASONS``) and skipped, a dump that breaks off or inflates past its
    decompression budget counted (its pages before the break kept)."""
    start = last = time.monotonic()
    n = 0
    name = os.path.basename(path)
    tally = _Tally(max_keys, lang)
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


def read_text(path, start, end, max_keys, max_page_chars=MAX_WIKI_PAGE_CHARS, lang="en"):
    """The lines of one text range (one document a line), as ``ReadCorpus`` gives them. Lines
    that are not UTF-8 are read with replacement characters, and reported; lines longer than
    ``max_page_chars`` are counted and skipped; a file that cannot be read on is counted (its
    lines before the break kept)."""
    tally = _Tally(max_keys, lang)
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
    """path of a pageviews file -> partial ((lang, title), views) sums of its lines (tagged
    "views"), then one tagged "counts" dictionary. A line's language is its project code's
    (``metadata_lang(code, "pageviews")``); lines of other projects (Wiktionary, Commons, ...), of
    languages not built, or (with ``domains``) of codes not listed are counted and skipped, as are
    malformed lines."""

    def __init__(self, domains, langs, max_keys=200_000):
        self.domains = frozenset(domains)
        self.langs = None if langs is None else frozenset(langs)
        self.max_keys = max_keys

    def process(self, path):
        views, langs = {}, {}
        lines = malformed = other_project = other_language = not_listed = 0
        counts = {"pageview_files_broken": 0, "pageview_files_over_budget": 0}
        try:
            for raw in read_lines(path, max_bytes=MAX_PAGEVIEW_LINE_BYTES):
                try:
                    if raw is None:
                        raise ValueError("line too long")
                    domain, title, n = lexicons.pageview_fields(raw.decode("utf-8"))
                except ValueError:  # UnicodeDecodeError included
                    malformed += 1
                    continue
                lines += 1
                if self.domains and domain not in self.domains:
                    not_listed += 1
                    continue
                lang = langs.get(domain, "")
                if lang == "":
                    lang = langs[domain] = metadata_lang(domain, "pageviews") if len(langs) < 10_000 else None
                if lang is None:
                    other_project += 1
                    continue
                if self.langs is not None and lang not in self.langs:
                    other_language += 1
                    continue
                key = (lang, title)
                views[key] = views.get(key, 0) + n
                if len(views) > self.max_keys:
                    yield from (("views", kv) for kv in views.items())
                    views = {}
        except READ_ERRORS as e:
            counts["pageview_files_broken"] += 1
            if _broken(path, e) == "over_budget":
                counts["pageview_files_over_budget"] += 1
        yield from (("views", kv) for kv in views.items())
        yield "counts", {"pageview_lines": lines, "pageview_lines_malformed": malformed,
                         "pageview_lines_other_project": other_project,
                         "pageview_lines_other_language": other_language,
                         "pageview_lines_domain_not_listed": not_listed, **counts}


class ReadLemmas(beam.DoFn):
    """A WordNet source -> its (lang, lemma) pairs (tagged "lemmas"; the language of each
    WN-LMF lexicon by its ``language`` attribute), then one tagged "counts" dictionary. Lemmas of
    languages not built, or of a lexicon that names no language, are counted and skipped; a
    source that cannot be read on (the launcher checked it whole, so it changed since) is
    counted, its lemmas before the break kept."""

    def __init__(self, langs):
        self.langs = None if langs is None else frozenset(langs)

    def process(self, path):
        broken = other = unnamed = 0
        try:
            for code, lemma in lexicons.wordnet_lemmas(path, with_lang=True):
                lang = metadata_lang(code, "wordnet")
                if lang is None:
                    unnamed += 1
                elif self.langs is not None and lang not in self.langs:
                    other += 1
                else:
                    yield "lemmas", (lang, lemma)
        except lexicons.LexiconError as e:
            broken = 1
            log.warning("%s (its lemmas before the break are kept)", e)
        yield "counts", {"wordnet_files_broken": broken, "wordnet_lemmas_other_language": other,
                         "wordnet_lemmas_no_language": unnamed}


def _metadata_entries(item):
    lang, path = item
    for i, entry in enumerate(lexicons.read_metadata_file(path)):
        yield (lang, entry), i


# --- sources -> candidates: each step is fn(element, ...) -> (records, counts) ----------------
# Every key carries its language: (lang, word), (lang, a, b), (lang, title), (lang, query).

def _punctuation_only(entry):
    return all(unicodedata.category(ch)[0] in "PSZ" for ch in entry)


def _candidate(lang, query, source, order, counts, count=None, pmi_=None, rules="clip"):
    """[((lang, query), (priority, order, source, count, pmi))], or [] (counted) when the entry is
    empty or a punctuation mark (MetaCLIP 2: punctuation only, or longer than 256 characters)."""
    cleaned = tokens.clean_entry(query)
    reason = None
    if cleaned is None:
        reason = "drop_empty_or_punctuation"
    elif rules == "metaclip2" and _punctuation_only(cleaned):
        reason = "drop_empty_or_punctuation"
    elif rules == "metaclip2" and len(cleaned) > METACLIP2_MAX_ENTRY_CHARS:
        reason = "drop_over_max_entry_chars"
    if reason:
        counts[reason] = counts.get(reason, 0) + 1
        counts[f"lang.{lang}.{reason}"] = counts.get(f"lang.{lang}.{reason}", 0) + 1
        return []
    return [((lang, cleaned), (PRIORITY[source], order, source, count, pmi_))]


def _unigram(kv, min_count, rules):
    """((lang, word), count) -> a candidate when frequent enough (clip, metaclip1), or a ranked
    row (lang, (-count, word, count)) for the language's cap (metaclip2)."""
    (lang, word), c = kv
    counts = lang_counts({"in_unigram": 1}, lang)
    if rules == "metaclip2":
        return [(lang, (-c, word, c))], counts
    if c < min_count:
        counts.update(lang_counts({"drop_below_min_count": 1}, lang))
        return [], counts
    return _candidate(lang, word, "unigram", -c, counts, c), counts


def _bigram_prefilter(kv, min_bigram_count):
    """((lang, a, b), count) -> ((lang, a), (b, count)) when frequent enough."""
    (lang, a, b), c = kv
    counts = lang_counts({"in_bigram": 1}, lang)
    if c < min_bigram_count:
        counts.update(lang_counts({"drop_below_min_bigram_count": 1}, lang))
        return [], counts
    return [((lang, a), (b, c))], counts


def _attach_first(item):
    """((lang, a), {"bigrams": [(b, c_ab)], "unigram": [c_a]}) -> ((lang, b), (a, c_ab, c_a))."""
    (lang, a), grouped = item
    c_a = next(iter(grouped["unigram"]), None)
    for b, c_ab in grouped["bigrams"]:
        yield (lang, b), (a, c_ab, c_a)


def _attach_second(item):
    """((lang, b), {"bigrams": ..., "unigram": [c_b]}) -> ((lang, shard), ("bigram", (a, b, c_ab, c_a, c_b)))."""
    (lang, b), grouped = item
    c_b = next(iter(grouped["unigram"]), None)
    for a, c_ab, c_a in grouped["bigrams"]:
        yield (lang, _shard(f"{a} {b}", PMI_SHARDS)), ("bigram", (a, b, c_ab, c_a, c_b))


def _tokens_to_shards(kv):
    lang, n_tokens = kv
    return [((lang, i), ("n", n_tokens)) for i in range(PMI_SHARDS)]


def _lang_tokens(counts):
    """A corpus "counts" dictionary -> (lang, tokens) for each language it counted."""
    return [(k.split(".")[1], v) for k, v in counts.items() if k.startswith("lang.") and k.endswith(".tokens")]


def _score_shard(item, min_pmi, rules):
    """((lang, shard), [("n", N), ("bigram", ...), ...]) -> tagged candidates ("records"; for
    metaclip2 ranked rows (lang, (-pmi, bigram, count, pmi)) above ``min_pmi``), one "counts"
    dictionary and one "pmi" summary {min, max, sum, count} of the PMI values in thousandths."""
    (lang, _), values = item
    n_tokens = next((v for tag, v in values if tag == "n"), None)
    counts, lo, hi, total, scored = {}, None, None, 0, 0
    drop = f"lang.{lang}.drop_below_min_pmi"
    for tag, v in values:  # a second pass over the group: N first, then the bigrams
        if tag != "bigram":
            continue
        a, b, c_ab, c_a, c_b = v
        value = pmi(n_tokens, c_ab, c_a, c_b)
        milli = int(value * 1000)
        lo = milli if lo is None else min(lo, milli)
        hi = milli if hi is None else max(hi, milli)
        total += milli
        scored += 1
        if value < min_pmi or (rules == "metaclip2" and value <= min_pmi):  # MetaCLIP 2: above
            counts["drop_below_min_pmi"] = counts.get("drop_below_min_pmi", 0) + 1
            counts[drop] = counts.get(drop, 0) + 1
            continue
        bigram = tokens.join_bigram(a, b, lang)
        if rules == "metaclip2":
            yield "records", (lang, (-value, bigram, c_ab, value))
            continue
        for cand in _candidate(lang, bigram, "bigram", -value, counts, c_ab, value):
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


def _title(kv, min_views, rules):
    (lang, title), views = kv
    counts = lang_counts({"in_title": 1}, lang)
    if ":" in title:
        counts.update(lang_counts({"drop_title_has_colon": 1}, lang))
        return [], counts
    if rules == "metaclip2":
        return [(lang, (-views, title.replace("_", " "), views))], counts
    if views < min_views:
        counts.update(lang_counts({"drop_below_min_views": 1}, lang))
        return [], counts
    return _candidate(lang, title.replace("_", " "), "title", -views, counts, views), counts


def _wordnet(item, rules):
    lang, lemma = item
    counts = lang_counts({"in_wordnet": 1}, lang)
    return _candidate(lang, lemma, "wordnet", 0, counts, rules=rules), counts


def _metadata(kv, rules):
    (lang, entry), index = kv
    counts = lang_counts({"in_metadata": 1}, lang)
    return _candidate(lang, entry, "metadata", index, counts, rules=rules), counts


class _TopCap(beam.CombineFn):
    """Ranked rows of one language -> (number of rows, the first ``most`` by rank). Accumulators
    are [count, at most 2 * most rows]: memory follows the cap, not the input."""

    def __init__(self, most):
        self.most = most

    def _trim(self, rows):
        if len(rows) > 2 * self.most:
            rows.sort()
            del rows[self.most:]
        return rows

    def create_accumulator(self):
        return [0, []]

    def add_input(self, acc, row):
        acc[0] += 1
        acc[1].append(row)
        self._trim(acc[1])
        return acc

    def merge_accumulators(self, accs):
        out = [0, []]
        for n, rows in accs:
            out[0] += n
            out[1].extend(rows)
            self._trim(out[1])
        return out

    def extract_output(self, acc):
        n, rows = acc
        return n, sorted(rows)[: self.most]


def _cut(item, source, rules, caps):
    """(lang, (available, ranked rows)) -> the first cap_of(source, available) as candidates;
    the rest counted over the cap."""
    lang, (n, rows) = item
    cap = cap_of(source, n, caps=caps)
    counts = lang_counts({"drop_over_rank_cap": n - min(cap, len(rows))}, lang)
    counts[f"lang.{lang}.available_{source}"] = n
    counts[f"lang.{lang}.cap_{source}"] = cap
    out = []
    for order, query, c in rows[:cap]:
        out.extend(_candidate(lang, query, source, order, counts, c, rules=rules))
    return out, counts


def _cut_bigrams(item, rules, caps):
    """(lang, {"bigrams": [(available, rows)], "unigrams": [kept unigram count]}) -> the first
    cap_of("bigram", ..., kept unigrams) bigrams as candidates; the rest counted over the cap."""
    lang, grouped = item
    kept_uni = sum(grouped["unigrams"])
    out, counts = [], {}
    for n, rows in grouped["bigrams"]:
        cap = cap_of("bigram", n, kept_uni, caps)
        counts = lang_counts({"drop_over_rank_cap": n - min(cap, len(rows))}, lang)
        counts[f"lang.{lang}.available_bigram"] = n
        counts[f"lang.{lang}.cap_bigram"] = cap
        for order, bigram, c, value in rows[:cap]:
            out.extend(_candidate(lang, bigram, "bigram", order, counts, c, value, rules=rules))
    return out, counts


def _kept_unigrams(item, caps):
    lang, (n, rows) = item
    return lang, min(cap_of("unigram", n, caps=caps), len(rows))


def _merge(item):
    """One (lang, query), several candidates: the highest-priority source wins. The row is
    (lang, (priority, order, query, source, count, pmi)); its first three fields rank it."""
    (lang, query), cands = item
    cands = sorted(cands, key=lambda c: (c[0], c[1]))
    counts = lang_counts({"merged": 1}, lang)
    if len(cands) > 1:
        counts.update(lang_counts({"drop_duplicate_of_higher_priority": len(cands) - 1}, lang))
    priority, order, source, count, pmi_ = cands[0]
    return [(lang, (priority, order, query, source, count, pmi_))], counts


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


def _rank_shard(item):
    lang, row = item
    return (lang, _shard(row[2], RANK_SHARDS)), row


def _lang_of_shard(item):
    (lang, _), rows = item
    return lang, rows


def metadata_json(queries):
    """A list's metadata.json bytes (MetaCLIP's format)."""
    return (json.dumps(list(queries), ensure_ascii=False, indent=0) + "\n").encode("utf-8")


class WriteLanguage(beam.DoFn):
    """(lang, ranked rows) -> metadata/{lang}.json and a part of queries.parquet (a file of its
    own, joined by ``WriteOutputs``); yields (lang, part path, kept counts)."""

    def __init__(self, out):
        self.out = out

    def process(self, item):
        lang, rows = item
        rows = sorted(rows, key=_rank_key)
        counts = {"kept": len(rows)}
        for r in rows:
            counts[f"kept_{r[3]}"] = counts.get(f"kept_{r[3]}", 0) + 1
        table = validate_table(pa.Table.from_pylist(
            [{"query": q, "source": s, "count": c, "pmi": p, "lang": lang} for _, _, q, s, c, p in rows],
            schema=QUERY), QUERY)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        part = FileSystems.join(self.out, f".queries-part-{lang}.parquet")
        _write(part, buf.getvalue())
        _write(FileSystems.join(self.out, "metadata", f"{lang}.json"), metadata_json(r[2] for r in rows))
        yield lang, part, lang_counts(counts, lang)


class WriteOutputs(beam.DoFn):
    """Every language's (lang, part, counts) -> queries.parquet (the parts in language order, one
    row group each, read one at a time), metadata.json when the run builds one language (a
    copy of metadata/{lang}.json), and the kept counts."""

    def __init__(self, out, single):
        self.out, self.single = out, single

    def process(self, parts):
        parts = sorted(parts)
        counts = {}
        path = FileSystems.join(self.out, "queries.parquet")
        tmp = path + ".tmp"
        with FileSystems.create(tmp) as f:
            writer = pq.ParquetWriter(f, QUERY, compression="zstd")
            for lang, part, c in parts:
                for k, v in c.items():
                    counts[k] = counts.get(k, 0) + v
                with FileSystems.open(part) as g:
                    writer.write_table(pq.read_table(io.BytesIO(g.read())))
            writer.close()
        FileSystems.rename([tmp], [path])
        if self.single or len(parts) == 1:
            lang = parts[0][0]
            with FileSystems.open(FileSystems.join(self.out, "metadata", f"{lang}.json")) as g:
                _write(FileSystems.join(self.out, "metadata.json"), g.read())
        FileSystems.delete([part for _, part, _ in parts])
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
    rules = cfg.rules
    ranked = rules == "metaclip2"
    candidates, counts = [], []
    if cfg.wiki or cfg.text:
        # One dump file or text range per worker at a time; documents are counted where they are
        # read, so only partial counts (not the corpus) travel between steps.
        parts = _split(p | "CorpusFiles" >> beam.Create(corpus_work(cfg.wiki, cfg.text, sizes, cfg.lang_of))
                       | "SpreadFiles" >> beam.Reshuffle()
                       | "ReadCorpus" >> beam.ParDo(ReadCorpus(sizes, max_page_chars=cfg.max_page_chars,
                                                             max_page_markup=cfg.max_page_markup)),
                       "Corpus", ("words", "bigrams", "counts"))
        counts.append(parts["counts"])
        unigram_counts = parts["words"] | "CountWords" >> beam.CombinePerKey(sum)
        n_tokens = (parts["counts"] | "Tokens" >> beam.FlatMap(_lang_tokens)
                    | "TotalTokens" >> beam.CombinePerKey(sum))
        records, c = unigram_counts | "Unigrams" >> Classify(_unigram, cfg.min_count, rules)
        counts.append(c)
        if ranked:
            top = records | "TopUnigrams" >> beam.CombinePerKey(_TopCap(cfg.caps["unigram"][2]))
            records, c = top | "CutUnigrams" >> Classify(_cut, "unigram", rules, cfg.caps)
            counts.append(c)
            kept_unigrams = top | "KeptUnigrams" >> beam.Map(_kept_unigrams, cfg.caps)
        candidates.append(records)
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
                        | "ScorePMI" >> beam.FlatMap(_score_shard, cfg.min_pmi, rules),
                        "Scored", ("records", "counts", "pmi"))
        records = scored["records"]
        if ranked:
            top = records | "TopBigrams" >> beam.CombinePerKey(_TopCap(cfg.caps["bigram"][2]))
            records, c = ({"bigrams": top, "unigrams": kept_unigrams} | "BigramsAndKeptUnigrams" >> beam.CoGroupByKey()
                          | "CutBigrams" >> Classify(_cut_bigrams, rules, cfg.caps))
            counts.append(c)
        candidates.append(records)
        counts.append(scored["counts"])
        counts.append(scored["pmi"] | "PMISummary" >> beam.CombineGlobally(_PmiSummary()).without_defaults()
                      | "PMICounts" >> beam.Map(_pmi_counts))
    if cfg.pageviews:
        parts = _split(p | "PageviewFiles" >> beam.Create(sorted(cfg.pageviews))
                       | "SpreadPageviews" >> beam.Reshuffle()
                       | "ReadPageviews" >> beam.ParDo(ReadPageviews(cfg.pageview_domains, cfg.langs)),
                       "Pageviews", ("views", "counts"))
        counts.append(parts["counts"])
        records, c = (parts["views"] | "SumViews" >> beam.CombinePerKey(sum)
                      | "Titles" >> Classify(_title, cfg.min_views, rules))
        counts.append(c)
        if ranked:
            records, c = (records | "TopTitles" >> beam.CombinePerKey(_TopCap(cfg.caps["title"][2]))
                          | "CutTitles" >> Classify(_cut, "title", rules, cfg.caps))
            counts.append(c)
        candidates.append(records)
    if cfg.wordnet:
        parts = _split(p | "WordNetSources" >> beam.Create(sorted(cfg.wordnet))
                       | "ReadLemmas" >> beam.ParDo(ReadLemmas(cfg.langs)),
                       "WordNet", ("lemmas", "counts"))
        counts.append(parts["counts"])
        records, c = (parts["lemmas"] | "DistinctLemmas" >> beam.Distinct()
                      | "WordNet" >> Classify(_wordnet, rules))
        candidates.append(records)
        counts.append(c)
    if cfg.metadata:
        records, c = (p | "MetadataFiles" >> beam.Create([(cfg.lang_of(path), path) for path in cfg.metadata
                                                           if cfg.wants(cfg.lang_of(path))])
                      | "ReadMetadata" >> beam.FlatMap(_metadata_entries)
                      | "FirstIndex" >> beam.CombinePerKey(min)
                      | "Metadata" >> Classify(_metadata, rules))
        candidates.append(records)
        counts.append(c)
    rows, c = (candidates | "AllCandidates" >> beam.Flatten()
               | "GroupByQuery" >> beam.GroupByKey()
               | "Merge" >> Classify(_merge))
    counts.append(c)
    n = cfg.max_entries or None
    single = cfg.langs is not None and len(cfg.langs) == 1
    counts.append(rows | "RankShards" >> beam.Map(_rank_shard)
                  | "RankPerShard" >> beam.CombinePerKey(_Smallest(n))
                  | "ShardLists" >> beam.Map(_lang_of_shard)
                  | "Rank" >> beam.CombinePerKey(_Smallest(n, lists=True))
                  | "WriteLanguage" >> beam.ParDo(WriteLanguage(cfg.out))
                  | "AllLanguages" >> beam.CombineGlobally(beam.combiners.ToListCombineFn()).without_defaults()
                  | "Write" >> beam.ParDo(WriteOutputs(cfg.out, single)))
    return tuple(counts) | "FinishWithStats" >> FinishWithStats(stats_path)
