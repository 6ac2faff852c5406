"""The crawl stage: web archives and URL lists -> balanced, query-matched pairs (Apache Beam).

Three passes over hash partitions of the pairs (by uid), MetaCLIP's curation shape, so no
step holds more than one work item's batch or one partition's pairs, on any runner:

    work items ─ Match ──────────► matched/pNNNNN/*.parquet     (read, clean, match, lid.176;
     (files, row groups)  │                                       spilled by uid partition)
                          └ counts ─────────────────────────┐
    Fanout(P) ─ Dedup ───────────► dedup/pNNNNN.parquet     │  (one pair per uid)
                  └ match counts ─ SumMatches ─ counts.npy  │
    Fanout(P) ─ Balance ─────────► pairs-NNNNN.parquet      │  (keep with p(queries, counts))
                  └ kept counts ── SumKept ─ query_counts.parquet
                                                  all counts ─ stats.json (the funnel)

Every candidate ends in exactly one bucket of ``crawl_stats.json``: kept, or one of
``unreadable_record``, ``field_too_large``, ``bad_url_scheme``, ``invalid_url``, the caption reasons of
``captions.judge``, ``lang_not_wanted``, ``lang_without_list``, ``no_query_match``, ``duplicate``,
``balanced_out``. The counts travel as data (small dictionaries summed at the end), not as
runner metrics.

Worldwide (``CrawlConfig.lang_queries``, MetaCLIP 2): each text is matched against the list of
its own language (``textfilter``), query ids run over every language's list, and balancing gives
each language its own t from English's tail share (``balance.language_thresholds``), computed
where the match counts are summed and written beside them (``t.npy``); ``crawl_stats.json``'s
``extra.languages`` has each language's funnel (identified, matched, deduplicated, kept) and t.

With every language wanted (``--lang all``, no minimum score) the language decides nothing
before balancing, so lid.176 runs in Balance on the kept pairs only (each distinct text once)
instead of in Match on every matched one: the same languages in the output, and at CLIP's
t = 20,000 on a large pool most matched pairs are balanced out. ``extra.languages_kept`` of
crawl_stats.json counts the kept pairs by language in every mode.
"""

import hashlib
import io
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from clipforge import limits
from clipforge.beam import FinishWithStats
from clipforge.pipeline import balance, captions, progress, readers, spill
from clipforge.pipeline.langid import LanguageID
from clipforge.pipeline.matching import WorldMatcher
from clipforge.schemas.languages import lid_language
from clipforge.pipeline.textfilter import OK, REASONS, TextFilter
from clipforge.schemas.records import CURATED_PAIR
from clipforge.schemas.validate import validate_table

QUERY_COUNTS = pa.schema([pa.field("query", pa.string(), nullable=False),
                          pa.field("matches", pa.int64(), nullable=False),
                          pa.field("kept", pa.int64(), nullable=False),
                          pa.field("single_query_keep_prob", pa.float64(), nullable=False),
                          pa.field("lang", pa.string(), nullable=True)])  # the query's list (worldwide)

# The matched pairs between passes: CURATED_PAIR without keep_prob, queries as ids.
MATCHED = pa.schema([pa.field("uid", pa.string()), pa.field("url", pa.string()), pa.field("text", pa.string()),
                     pa.field("page_url", pa.string()), pa.field("lang", pa.string()),
                     pa.field("lang_score", pa.float32()), pa.field("qids", pa.list_(pa.int32())),
                     pa.field("input_format", pa.string()), pa.field("source_file", pa.string())])

BATCH = 8192  # links judged together (one lid.176 call)
FLUSH_ROWS = 200_000  # matched pairs a work item holds before spilling them


@dataclass
class CrawlConfig:
    inputs: list = field(default_factory=list)  # (path, format, part) work items, see crawl_stage.expand_inputs
    queries: list = field(default_factory=list)  # the query strings
    lang_queries: dict = None  # worldwide: {metadata language: query strings} (``queries`` unused)
    out: str = "data/pairs"
    max_per_query: int = 20_000
    langs: tuple = ("en",)  # empty: keep every language
    min_lang_score: float = 0.0
    seed: int = 0
    url_col: str = None
    text_col: str = None
    page_col: str = None
    max_page_bytes: int = limits.MAX_PAGE_BYTES  # bytes of a WARC page read (the rest: pages.truncated)
    no_header: bool = False  # CSV/TSV lists without a header row: the *_col are 1-based positions
    min_text_chars: int = captions.MIN_CHARS
    max_text_chars: int = captions.MAX_CHARS
    rows_per_file: int = 250_000  # target pairs per partition (and so at most per output file)
    partitions: int = 0  # 0: from the inputs' size (crawl_stage.run)
    progress_every: float = 10.0  # seconds between progress lines; 0: none


# --- per-process resources -----------------------------------------------------------------

_RESOURCES = {}


def _text_filter(key, args):
    """The TextFilter for ``args``, built once per worker process (not per bundle: building the
    automaton of a large query list and loading lid.176 take seconds), keyed by a digest."""
    tf = _RESOURCES.get(key)
    if tf is None:
        for k in [k for k in _RESOURCES if isinstance(k, str)]:
            del _RESOURCES[k]  # one query list at a time
        tf = _RESOURCES[key] = TextFilter(*args)
    return tf


def _language_id():
    """lid.176, loaded once per worker process (for the languages of kept pairs)."""
    lid = _RESOURCES.get(None)
    if lid is None:
        lid = _RESOURCES[None] = LanguageID()
    return lid


def text_filter_args(cfg):
    """TextFilter's arguments for a crawl, but the query list: with every language wanted, lid.176
    runs after balancing, on the kept pairs only (``Balance``); before, it would decide nothing."""
    return (cfg.langs, cfg.min_lang_score, cfg.min_text_chars, cfg.max_text_chars, 200_000, True)


def query_table(cfg):
    """(names, languages): the query of every id and its language (None for a one-list crawl)."""
    if cfg.lang_queries is None:
        return sorted(set(cfg.queries)), None
    world = WorldMatcher(cfg.lang_queries)
    return world.names, world.langs_of_ids()


def write_query_table(cfg, path):
    """The query list as the workers read it: ``path`` (parquet) with the query of every id and
    its language. The list goes to the workers as this file, not inside the steps (a step is
    unpickled for every bundle: a list of 500,000 entries would cost seconds each time)."""
    names, langs = query_table(cfg)
    table = pa.table({"query": pa.array(names, pa.string()),
                      "lang": pa.array(langs if langs is not None else [None] * len(names), pa.string())})
    spill.write_table(path, table)
    return len(names)


def _query_lists(path, run_id):
    """(names, languages or None, {language: queries} or None) of the run's query table, read
    once per worker process."""
    key = ("lists", run_id, path)
    got = _RESOURCES.get(key)
    if got is None:
        table = spill.read_table(path)
        names = table.column("query").to_pylist()
        langs = table.column("lang").to_pylist() if table.column("lang").null_count < table.num_rows else None
        lang_queries = None
        if langs is not None:
            lang_queries = {}
            for q, lang in zip(names, langs):
                lang_queries.setdefault(lang, []).append(q)
        for k in [k for k in _RESOURCES if isinstance(k, tuple) and k[0] == "lists"]:
            del _RESOURCES[k]
        got = _RESOURCES[key] = (names, langs, lang_queries)
    return got


def lang_counter(lang, step):
    """The name of a per-language funnel counter: ``wl:<metadata language>:<step>`` (a language
    code never holds a colon; crawl_stage.language_funnels reads them back)."""
    return f"wl:{lang}:{step}"


def _lang_counts(langs, key):
    """{lang_counter(metadata language, key): pairs} of an Arrow column of lid.176 labels."""
    out = {}
    for label, n in zip(*np.unique(langs.to_numpy(zero_copy_only=False).astype(str), return_counts=True)):
        k = lang_counter(lid_language(label), key)
        out[k] = out.get(k, 0) + int(n)
    return out


def _digest(*parts):
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(repr(p).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


# --- pass 1: read, judge, match, spill -------------------------------------------------------

def candidate_batches(item, cols, pages, no_header=False, max_page_bytes=limits.MAX_PAGE_BYTES):
    """(urls, texts, pages, {reason: unreadable count}, format, fraction of the item read)
    batches of one work item."""
    path, fmt, part = item
    if fmt not in ("warc", "wat"):
        for urls, texts, page_urls, bad, fraction in readers.url_list_batches(item, cols, no_header, BATCH):
            yield urls, texts, page_urls, bad, "urllist", fraction
        return
    size = max(1, FileSystems.match([path])[0].metadata_list[0].size_in_bytes)
    raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    reader = readers.read_warc(raw, path, pages, size, max_page_bytes) if fmt == "warc" \
        else readers.read_wat(raw, path, pages, size)

    def fraction():
        try:
            return min(0.99, raw.tell() / size)
        except (OSError, ValueError, AttributeError):
            return 0.0

    with raw:
        urls, texts, page_urls, bad, chars = [], [], [], {}, 0
        for c in reader:
            if isinstance(c, readers.Unreadable):
                reason = readers.unreadable_reason(c)
                bad[reason] = bad.get(reason, 0) + 1
                continue
            urls.append(c["url"])
            texts.append(c["text"])
            page_urls.append(c["page_url"])
            chars += len(c["text"])
            if len(urls) >= BATCH or chars > limits.MAX_BATCH_TEXT_CHARS:
                yield _arrays(urls, texts, page_urls) + (bad, fmt, fraction())
                urls, texts, page_urls, bad, chars = [], [], [], {}, 0
        if urls or bad:
            yield _arrays(urls, texts, page_urls) + (bad, fmt, 1.0)


def _arrays(*columns):
    return tuple(pa.array(c, pa.string()) for c in columns)


class Match(beam.DoFn):
    """A work item -> its matched pairs spilled to ``matched/pNNNNN/`` by uid partition; yields
    the item's counts (input, drops by reason, languages, pages)."""

    def __init__(self, cfg, tmp, n_parts, run_id):
        self.cols, self.no_header = (cfg.url_col, cfg.text_col, cfg.page_col), cfg.no_header
        self.max_page_bytes = cfg.max_page_bytes
        self.args = text_filter_args(cfg)
        self.tmp, self.root, self.n_parts, self.run_id = tmp, FileSystems.join(tmp, "matched"), n_parts, run_id
        self.key = _digest(run_id, *self.args)
        self.worldwide = cfg.lang_queries is not None

    def setup(self):
        names, _, lang_queries = _query_lists(FileSystems.join(self.tmp, "queries.parquet"), self.run_id)
        self.tf = _text_filter(self.key, (names if lang_queries is None else None, *self.args, lang_queries))

    def process(self, work):
        index, item = work
        tf, counts, pages = self.tf, Counter(), {}
        by_lang = Counter() if self.worldwide else None
        buffer, buffered, flushes, matched = [], 0, 0, 0
        notes, last_note = FileSystems.join(self.tmp, "progress"), time.monotonic()
        batches = candidate_batches(item, self.cols, pages, self.no_header, self.max_page_bytes)
        for urls, texts, page_urls, bad, fmt, fraction in batches:
            counts["input"] += len(urls) + sum(bad.values())
            counts[f"input_{fmt}"] += len(urls)
            for reason, n_bad in bad.items():
                counts[f"drop_{reason}"] += n_bad
            codes, kept, uids, cleaned, langs, scores, qids = tf.filter_arrow(urls, texts, by_lang)
            for code, n in enumerate(np.bincount(codes, minlength=len(REASONS)).tolist()):
                if n and code != OK:
                    counts[f"drop_{REASONS[code]}"] += n
            n = len(kept)
            if n:
                taken = pa.array(kept)
                buffer.append(pa.table({"uid": uids, "url": urls.take(taken), "text": cleaned,
                                        "page_url": page_urls.take(taken), "lang": langs, "lang_score": scores,
                                        "qids": qids, "input_format": pa.array([fmt] * n, pa.string()),
                                        "source_file": pa.array([item[0]] * n, pa.string())}, schema=MATCHED))
                buffered += n
            matched += n
            if buffered >= FLUSH_ROWS:
                self._spill(index, flushes, buffer)
                buffer, buffered, flushes = [], 0, flushes + 1
            if time.monotonic() - last_note >= progress.NOTE_EVERY:
                progress.note(notes, f"m{index:06d}", {"read": counts["input"], "matched": matched, "fraction": fraction})
                last_note = time.monotonic()
        if buffer:
            self._spill(index, flushes, buffer)
        for k, v in pages.items():
            counts[f"pages_{k}"] += v
        for (lang, code), v in (by_lang or {}).items():
            counts[lang_counter(lang, "identified")] += v
            counts[lang_counter(lang, REASONS[code] if code != OK else "matched")] += v
        progress.note(notes, f"m{index:06d}", {"read": counts["input"], "matched": matched, "fraction": 1.0, "done": True})
        yield dict(counts)

    def _spill(self, index, flush, tables):
        table = pa.concat_tables(tables)
        spill.write_partitioned(self.root, f"i{index:06d}-f{flush:04d}", table,
                                partition_of(table.column("uid"), self.n_parts))


def partition_of(uids, n_parts):
    """Partition number of each uid (hex strings): the first 8 hex digits modulo n_parts."""
    heads = pc.utf8_slice_codeunits(uids, 0, 8).to_numpy(zero_copy_only=False)
    return np.array([int(h, 16) for h in heads], dtype=np.int64) % n_parts


# --- pass 2: one pair per uid ----------------------------------------------------------------

_FORMAT_ORDER = {"warc": 0, "wat": 1, "urllist": 2}


class Dedup(beam.DoFn):
    """Partition number -> ``dedup/pNNNNN.parquet`` (sorted by uid); yields ("stats", counts)
    and ("matches", sparse per-query counts)."""

    def __init__(self, tmp, n_queries, worldwide=False):
        self.tmp, self.n_queries, self.worldwide = tmp, n_queries, worldwide

    def process(self, part):
        table = spill.read_partition(FileSystems.join(self.tmp, "matched"), part, MATCHED)
        table = balance.first_per_uid(table, _FORMAT_ORDER)
        dropped = table.num_rows - (table := table.filter(table.column("_first"))).num_rows
        table = table.drop_columns(["_first"])
        spill.write_table(FileSystems.join(self.tmp, "dedup", f"p{part:05d}.parquet"), table, compression="lz4")
        spill.delete_partition(FileSystems.join(self.tmp, "matched"), part)
        progress.note(FileSystems.join(self.tmp, "progress"), f"d{part:05d}", {"pairs": table.num_rows})
        stats = {"drop_duplicate": dropped} if dropped else {}
        if self.worldwide and table.num_rows:
            stats.update(_lang_counts(table.column("lang"), "deduplicated"))
        yield "stats", stats
        yield "matches", _sparse_counts(table.column("qids"), self.n_queries)


def _sparse_counts(qids, n_queries):
    flat = pc.list_flatten(qids).to_numpy(zero_copy_only=False)
    counts = np.bincount(flat, minlength=n_queries) if len(flat) else np.zeros(n_queries, np.int64)
    ids = np.flatnonzero(counts)
    return ids.astype(np.int32), counts[ids].astype(np.int64)


class SumSparse(beam.CombineFn):
    """Sums sparse count vectors ((ids, counts) pairs) into one dense vector of length n."""

    def __init__(self, n):
        self.n = n

    def create_accumulator(self):
        return np.zeros(self.n, np.int64)

    def add_input(self, acc, sparse):
        ids, counts = sparse
        np.add.at(acc, ids, counts)
        return acc

    def merge_accumulators(self, accs):
        out = np.zeros(self.n, np.int64)
        for a in accs:
            out += a
        return out

    def extract_output(self, acc):
        return acc


class WriteVector(beam.DoFn):
    """The summed match counts -> ``counts.npy`` (read by every Balance worker); worldwide, also
    each language's t (``t.npy``, the t of every query id). Yields once: worldwide, the t of each
    language and English's tail share (in millionths) as counts."""

    def __init__(self, path, cfg=None, t_path=None, lists=None, run_id=None):
        self.path, self.t_path, self.lists, self.run_id = path, t_path, lists, run_id
        self.t_en = cfg.max_per_query if cfg is not None else None
        self.worldwide = cfg is not None and cfg.lang_queries is not None

    def process(self, vector):
        _save_npy(self.path, np.asarray(vector, np.int64))
        if not self.worldwide:
            yield {}
            return
        langs = _query_lists(self.lists, self.run_id)[1]
        thresholds, p = balance.language_thresholds(vector, langs, self.t_en)
        t = np.full(len(vector), float(self.t_en))
        for lang, ids in balance.language_groups(langs).items():
            t[ids] = thresholds.get(lang, self.t_en)
        _save_npy(self.t_path, t)
        out = {lang_counter(lang, "t"): t_lang for lang, t_lang in thresholds.items()}
        if p is not None:
            out["tail_share_en_micro"] = int(round(p * 1e6))
        yield out


def _save_npy(path, array):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    with FileSystems.create(path) as f:
        f.write(buf.getvalue())


def _load_vector(path, run_id):
    key = ("vector", run_id, path)
    v = _RESOURCES.get(key)
    if v is None:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            v = np.load(io.BytesIO(f.read()), allow_pickle=False)
        for k in [k for k in _RESOURCES if isinstance(k, tuple) and k[1] != run_id]:
            del _RESOURCES[k]  # the latest run's vectors only
        _RESOURCES[key] = v
    return v


# --- pass 3: balance and write ---------------------------------------------------------------

class Balance(beam.DoFn):
    """Partition number -> ``pairs-NNNNN.parquet`` (the kept pairs, by uid); yields ("stats",
    counts) and ("kept", sparse per-query kept counts)."""

    def __init__(self, cfg, tmp, run_id):
        self.tmp, self.t, self.seed, self.run_id = tmp, cfg.max_per_query, cfg.seed, run_id
        self.worldwide = cfg.lang_queries is not None

    def setup(self):
        self.queries = _query_lists(FileSystems.join(self.tmp, "queries.parquet"), self.run_id)[0]
        self.query_array = pa.array(self.queries, pa.string())

    def process(self, part):
        counts = _load_vector(FileSystems.join(self.tmp, "counts.npy"), self.run_id)
        t = _load_vector(FileSystems.join(self.tmp, "t.npy"), self.run_id) if self.worldwide else self.t
        path = FileSystems.join(self.tmp, "dedup", f"p{part:05d}.parquet")
        table = spill.read_table(path)
        qids = table.column("qids").combine_chunks()
        p = balance.keep_probabilities(qids.offsets.to_numpy(), qids.values.to_numpy(zero_copy_only=False),
                                       counts, t)
        keep = balance.draws(self.seed, table.column("uid").to_pylist()) < p
        kept = table.filter(pa.array(keep)).append_column("keep_prob", pa.array(p[keep], pa.float64()))
        n_kept = kept.num_rows
        stats = {"kept": n_kept, "drop_balanced_out": table.num_rows - n_kept}
        if n_kept and kept.column("lang").null_count:  # identified after balancing (every language wanted)
            langs, scores = _language_id().predict_arrow(kept.column("text"))
            kept = kept.set_column(kept.schema.get_field_index("lang"), "lang", langs)
            kept = kept.set_column(kept.schema.get_field_index("lang_score"), "lang_score", scores)
        if n_kept:
            for lang, k in zip(*np.unique(kept.column("lang").to_numpy(zero_copy_only=False), return_counts=True)):
                stats[f"lang_{lang}"] = int(k)
            if self.worldwide:
                stats.update(_lang_counts(kept.column("lang"), "kept"))
            kept_qids = kept.column("qids").combine_chunks()
            names = pa.ListArray.from_arrays(kept_qids.offsets, self.query_array.take(kept_qids.values))
            out = pa.table({f.name: (names if f.name == "queries" else kept.column(f.name)) for f in CURATED_PAIR},
                           schema=CURATED_PAIR)
            name = f"pairs-{part:05d}.parquet"
            validate_table(out, CURATED_PAIR, name)
            buf = io.BytesIO()
            pq.write_table(out, buf, compression="zstd", row_group_size=50_000)
            with FileSystems.create(FileSystems.join(self.tmp, name)) as f:
                f.write(buf.getvalue())
            kept_counts = _sparse_counts(kept.column("qids"), len(self.queries))
        else:
            kept_counts = (np.zeros(0, np.int32), np.zeros(0, np.int64))
        FileSystems.delete([path])
        progress.note(FileSystems.join(self.tmp, "progress"), f"b{part:05d}", {"kept": n_kept})
        yield "stats", {k: v for k, v in stats.items() if v}
        yield "kept", kept_counts


class WriteQueryCounts(beam.DoFn):
    """Kept counts (and counts.npy's match counts) -> query_counts.parquet, every query with a
    match, most matched first."""

    def __init__(self, cfg, tmp, run_id):
        self.tmp, self.t, self.run_id = tmp, cfg.max_per_query, run_id

    def process(self, kept):
        self.queries, self.langs, _ = _query_lists(FileSystems.join(self.tmp, "queries.parquet"), self.run_id)
        matches = _load_vector(FileSystems.join(self.tmp, "counts.npy"), self.run_id)
        t = _load_vector(FileSystems.join(self.tmp, "t.npy"), self.run_id) if self.langs is not None \
            else np.full(len(matches), float(self.t))
        langs = self.langs or [None] * len(matches)
        ids = np.flatnonzero(matches)
        rows = sorted(((self.queries[i], int(matches[i]), int(kept[i]), min(1.0, t[i] / matches[i]), langs[i])
                       for i in ids), key=lambda r: (-r[1], r[4] or "", r[0]))
        table = pa.table({"query": [r[0] for r in rows], "matches": [r[1] for r in rows],
                          "kept": [r[2] for r in rows], "single_query_keep_prob": [float(r[3]) for r in rows],
                          "lang": [r[4] for r in rows]}, schema=QUERY_COUNTS)
        spill.write_table(FileSystems.join(self.tmp, "query_counts.parquet"), table)
        yield {}


def _tagged(tag):
    return lambda kv: [kv[1]] if kv[0] == tag else []


def build(p, cfg, tmp, n_parts):
    """Add the crawl to ``p``. Outputs go to ``tmp``; the funnel's counts to ``tmp/stats.json``."""
    run_id = uuid.uuid4().hex  # names this run's files in the per-process cache
    n_queries = write_query_table(cfg, FileSystems.join(tmp, "queries.parquet"))
    item_counts = (p | "WorkItems" >> beam.Create(list(enumerate(cfg.inputs)))
                   | "SpreadInputs" >> beam.Reshuffle()
                   | "Match" >> beam.ParDo(Match(cfg, tmp, n_parts, run_id)))
    deduped = (item_counts | "AfterMatch" >> spill.Fanout(n_parts)
               | "Dedup" >> beam.ParDo(Dedup(tmp, n_queries, cfg.lang_queries is not None)))
    matches_written = (deduped | "MatchCounts" >> beam.FlatMap(_tagged("matches"))
                       | "SumMatches" >> beam.CombineGlobally(SumSparse(n_queries)).without_defaults()
                       | "WriteMatchCounts" >> beam.ParDo(WriteVector(FileSystems.join(tmp, "counts.npy"), cfg,
                                                                     FileSystems.join(tmp, "t.npy"),
                                                                     FileSystems.join(tmp, "queries.parquet"), run_id)))
    balanced = (matches_written | "AfterDedup" >> spill.Fanout(n_parts)
                | "Balance" >> beam.ParDo(Balance(cfg, tmp, run_id)))
    query_counts = (balanced | "KeptCounts" >> beam.FlatMap(_tagged("kept"))
                    | "SumKept" >> beam.CombineGlobally(SumSparse(n_queries)).without_defaults()
                    | "WriteQueryCounts" >> beam.ParDo(WriteQueryCounts(cfg, tmp, run_id)))
    dedup_stats = deduped | "DedupStats" >> beam.FlatMap(_tagged("stats"))
    balance_stats = balanced | "BalanceStats" >> beam.FlatMap(_tagged("stats"))
    thresholds = matches_written | "Thresholds" >> beam.Filter(bool)
    return ((item_counts, dedup_stats, balance_stats, query_counts, thresholds)
            | "Funnel" >> FinishWithStats(FileSystems.join(tmp, "stats.json")))


def n_partitions(estimated_links, rows_per_file):
    return max(1, min(10_000, math.ceil(estimated_links / rows_per_file)))
