"""The queries stage as a command: check the inputs, run the pipeline, write queries_stats.json.

Errors in the inputs as a whole (a pattern that matches nothing, a file that is not a
dump, a WordNet or metadata file that cannot be read or is refused, an empty corpus) stop the
stage with one line; damage inside a file (a truncated bz2, a page over a cap, malformed
pageview lines, a dump inflating past its decompression budget) is counted and reported. The
caps the stage ran with are listed under ``extra.limits`` of queries_stats.json.
"""

import logging
import time
import uuid

from apache_beam.io.filesystems import FileSystems

from clipforge import limits
from clipforge.beam import absolute, make_pipeline, read_stats, run_pipeline
from clipforge.errors import InputError
from clipforge.queries import lexicons
from clipforge.queries.inflate import READ_ERRORS, open_input
from clipforge.queries.pipeline import PAGE_SKIP_REASONS, QueriesConfig, build
from clipforge.schemas.files import Funnel, write_stats

log = logging.getLogger("clipforge.queries")

DROP_REASONS = ("below_min_count", "below_min_bigram_count", "below_min_pmi", "below_min_views",
                "title_has_colon", "empty_or_punctuation", "duplicate_of_higher_priority", "over_max_entries")
SOURCES = ("metadata", "wordnet", "unigram", "bigram", "title")


def expand(patterns, what):
    """Every file matched by the patterns, sorted; a pattern matching nothing is an error."""
    out = []
    for pattern in patterns:
        if what == "--wordnet" and pattern == "nltk":
            out.append(pattern)
            continue
        try:
            found = FileSystems.match([pattern])[0].metadata_list
        except Exception as e:  # Beam raises BeamIOError and others for bad schemes or paths
            raise InputError(f"{what} {pattern}: {e}") from None
        files = sorted((m.path, m.size_in_bytes) for m in found)
        if not files:
            raise InputError(f"{what} {pattern}: no such file")
        out.extend(files)
    return out


def _peek(path, n=4096):
    try:
        stream, _ = open_input(path)
        with stream:
            return stream.read(n)
    except READ_ERRORS as e:
        raise InputError(f"{path}: cannot be decompressed ({e})") from None


def check_wiki(path):
    head = _peek(path).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"<?xml"):
        head = head[head.find(b"?>") + 2:].lstrip()
    if not head.startswith(b"<mediawiki"):
        raise InputError(f"--wiki {path}: not a MediaWiki XML dump (it does not start with <mediawiki>)")


def check_wordnet(path):
    """Read a WordNet source through once (streamed, bounded), so that a file that cannot be
    read or is refused stops the stage here in one line rather than inside a worker."""
    if path == "nltk":
        next(iter(lexicons.wordnet_lemmas(path)), None)
        return
    for _ in lexicons.wordnet_lemmas(path):
        pass


def run(cfg: QueriesConfig, beam_flags=()):
    t0 = time.time()
    wiki = expand(cfg.wiki, "--wiki")
    for path, _ in wiki:
        check_wiki(path)
    text_files = expand(cfg.text, "--text")
    text = [p for p, _ in text_files]
    pageviews = [p for p, _ in expand(cfg.pageviews, "--pageviews")]
    wordnet = [p for p, _ in expand(cfg.wordnet, "--wordnet")]
    for path in wordnet:
        lexicons.wordnet_format(path)
    metadata = [p for p, _ in expand(cfg.metadata, "--metadata")]
    if not (wiki or text or pageviews or wordnet or metadata):
        raise InputError("no inputs: give at least one of --wiki, --text, --pageviews, --wordnet, --metadata")
    if cfg.max_page_chars < 1 or cfg.max_page_markup < 1:
        raise InputError("--max-page-chars and --max-page-markup must be positive")
    for path in metadata:
        lexicons.read_metadata_file(path)
    for path in wordnet:
        check_wordnet(path)
    resolved = QueriesConfig(**{**cfg.__dict__, "wiki": [p for p, _ in wiki], "text": text,
                                "pageviews": pageviews, "wordnet": wordnet, "metadata": metadata})
    FileSystems.mkdirs(cfg.out) if not FileSystems.exists(cfg.out) else None

    # Workers do not share our working directory (a dask worker runs where it was started):
    # the pipeline gets local paths made absolute; the stats list them as matched.
    for_workers = QueriesConfig(**{**resolved.__dict__, "out": _absolute(cfg.out),
                                   **{k: [_absolute(x) for x in getattr(resolved, k)]
                                      for k in ("wiki", "text", "pageviews", "wordnet", "metadata")}})
    sizes = {_absolute(path): size for path, size in wiki + text_files}
    # The pipeline's counts come back as a file in the output folder (every runner's workers can
    # write there), under a name of this run's own; it is read and removed here.
    counts_path = FileSystems.join(for_workers.out, f".queries-counts-{uuid.uuid4().hex}.json")
    try:
        p = make_pipeline(list(beam_flags))
        build(p, for_workers, counts_path, sizes=sizes)
        run_pipeline(p)
        c = read_stats(counts_path)
    finally:
        if FileSystems.exists(counts_path):
            FileSystems.delete([counts_path])
    stats = funnel_from_counters(c, resolved, _pmi_summary(c), wall=time.time() - t0)
    write_stats(FileSystems.join(cfg.out, "queries_stats.json"), stats)
    if stats["kept"] == 0:
        corpus = stats["extra"]["corpus"]
        broken = sum(corpus[k] for k in ("wiki_files_broken", "text_files_broken", "pageview_files_broken",
                                         "wordnet_files_broken"))
        skipped = sum(corpus["wiki_pages_skipped"].values()) + corpus["text_lines_too_large"]
        why = ""
        if broken or skipped:
            why = (f"; {broken} file(s) broke off or were refused, {skipped} page(s) or line(s) skipped over a cap "
                   "or unparsable")
        raise InputError("no queries produced: the inputs hold no entry that passes the thresholds "
                         f"(see {FileSystems.join(cfg.out, 'queries_stats.json')}{why})")
    return stats


def _absolute(path):
    """A local path made absolute; a URL (gs://, s3://, ...) and WordNet's "nltk" as they are."""
    return path if path == "nltk" else absolute(path)


def _pmi_summary(c):
    """min, max, mean and count of the bigrams' PMI (the pipeline sums it in thousandths)."""
    v = c.get("bigram_pmi_milli")
    if not v or not v.get("count"):
        return None
    return {"min": v["min"] / 1000, "max": v["max"] / 1000, "mean": v["sum"] / v["count"] / 1000, "count": v["count"]}


def stage_limits(cfg):
    """The caps on hostile input the stage ran with (clipforge.limits; the first two are flags)."""
    return {"max_page_chars": cfg.max_page_chars, "max_page_markup": cfg.max_page_markup,
            "max_wiki_field_chars": limits.MAX_WIKI_FIELD_CHARS,
            "wiki_parse_cpu_seconds": limits.WIKI_PARSE_CPU_SECONDS,
            "wiki_parse_cpu_seconds_per_mchar": limits.WIKI_PARSE_CPU_SECONDS_PER_MCHAR,
            "max_wiki_parse_bytes": limits.MAX_WIKI_PARSE_BYTES,
            "max_decompression_ratio": limits.MAX_DECOMPRESSION_RATIO,
            "decompression_floor_bytes": limits.DECOMPRESSION_FLOOR_BYTES,
            "max_xml_depth": limits.MAX_XML_DEPTH, "max_xml_token_bytes": limits.MAX_XML_TOKEN_BYTES,
            "max_wordnet_yaml_bytes": limits.MAX_WORDNET_YAML_BYTES,
            "max_metadata_json_bytes": limits.MAX_METADATA_JSON_BYTES,
            "max_pageview_line_bytes": limits.MAX_PAGEVIEW_LINE_BYTES}


def funnel_from_counters(c, cfg, pmi_dist=None, wall=None):
    f = Funnel("queries", unit="candidate entry")
    for source in SOURCES:
        f.add_input(c.get(f"in_{source}", 0))
    f.keep(c.get("kept", 0))
    for reason in DROP_REASONS:
        n = c.get(f"drop_{reason}", 0) if reason != "over_max_entries" else c.get("merged", 0) - c.get("kept", 0)
        if n:
            f.drop(reason, n)
    f.extra = {
        "sources": {s: {"candidates": c.get(f"in_{s}", 0), "kept": c.get(f"kept_{s}", 0)} for s in SOURCES},
        "thresholds": {"min_count": cfg.min_count, "min_bigram_count": cfg.min_bigram_count,
                       "min_pmi": cfg.min_pmi, "min_views": cfg.min_views, "max_entries": cfg.max_entries,
                       "pageview_domains": list(cfg.pageview_domains),
                       "pmi": "log2(N * c(ab) / (c(a) * c(b))), N = word tokens"},
        "corpus": {"documents": c.get("documents", 0), "word_tokens": c.get("tokens", 0),
                   "distinct_words": c.get("in_unigram", 0), "distinct_bigrams": c.get("in_bigram", 0),
                   "wiki_pages": c.get("wiki_pages", 0), "wiki_redirects_skipped": c.get("wiki_redirects_skipped", 0),
                   "wiki_non_article_skipped": c.get("wiki_non_article_skipped", 0),
                   "wiki_files_broken": c.get("wiki_files_broken", 0),
                   "wiki_files_over_budget": c.get("wiki_files_over_budget", 0),
                   "wiki_pages_skipped": {r: c.get(f"wiki_{r}", 0) for r in PAGE_SKIP_REASONS},
                   "wikitext_bytes": c.get("wiki_wikitext_bytes", 0), "prose_bytes": c.get("prose_bytes", 0),
                   "text_lines_too_large": c.get("text_lines_too_large", 0),
                   "text_files_broken": c.get("text_files_broken", 0),
                   "text_files_over_budget": c.get("text_files_over_budget", 0),
                   "pageview_lines": c.get("pageview_lines", 0),
                   "pageview_lines_malformed": c.get("pageview_lines_malformed", 0),
                   "pageview_files_broken": c.get("pageview_files_broken", 0),
                   "pageview_files_over_budget": c.get("pageview_files_over_budget", 0),
                   "wordnet_files_broken": c.get("wordnet_files_broken", 0)},
        "limits": stage_limits(cfg),
        "bigram_pmi": pmi_dist,
        "inputs": {"wiki": cfg.wiki, "text": cfg.text, "pageviews": cfg.pageviews, "wordnet": cfg.wordnet,
                   "metadata": cfg.metadata},
    }
    if wall is not None:
        f.extra["seconds"] = round(wall, 2)
    return f.to_dict()
