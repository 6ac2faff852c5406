"""The queries stage as a command: check the inputs, run the pipeline, write queries_stats.json.

Errors in the inputs as a whole (a pattern that matches nothing, a file that is not a
dump, a WordNet or metadata file that cannot be read or is refused, an empty corpus) stop the
stage with one line; damage inside a file (a truncated bz2, a page over a cap, malformed
pageview lines, a dump inflating past its decompression budget) is counted and reported. The
caps the stage ran with are listed under ``extra.limits`` of queries_stats.json.
"""

import logging
import os
import re
import time
import uuid

from apache_beam.io.filesystems import FileSystems

from clipforge import limits
from clipforge.beam import absolute, make_pipeline, read_stats, run_pipeline
from clipforge.errors import InputError
from clipforge.queries import lexicons
from clipforge.queries.inflate import READ_ERRORS, open_input
from clipforge.queries import tokens
from clipforge.queries.pipeline import METACLIP2_CAPS, METACLIP2_MAX_ENTRY_CHARS, PAGE_SKIP_REASONS, QueriesConfig, build
from clipforge.schemas.files import Funnel, write_stats
from clipforge.schemas.languages import metadata_lang

log = logging.getLogger("clipforge.queries")

DROP_REASONS = ("below_min_count", "below_min_bigram_count", "below_min_pmi", "below_min_views",
                "title_has_colon", "over_rank_cap", "empty_or_punctuation", "over_max_entry_chars",
                "duplicate_of_higher_priority", "over_max_entries")
_LANG_PREFIX = re.compile(r"^([a-z][a-z0-9_-]{1,31})=(.+)$")


def split_lang(arg, vocabulary="wiki"):
    """"LANG=PATH" -> (metadata language, PATH); a plain path -> (None, path)."""
    m = _LANG_PREFIX.match(arg)
    if not m:
        return None, arg
    lang = metadata_lang(m.group(1), vocabulary)
    if lang is None:
        raise InputError(f"{arg}: {m.group(1)!r} is not a language code")
    return lang, m.group(2)


def wiki_lang(path):
    """The language of a dump: its <siteinfo><dbname> (dewiki -> de), else <mediawiki xml:lang>;
    None when it names neither."""
    head = _peek(path, 1 << 16)
    m = re.search(rb"<dbname>\s*([^<\s]{1,64})\s*</dbname>", head)
    db = metadata_lang(m.group(1).decode("utf-8", "replace"), "wiki") if m else None
    if db and _WIKI_CODE.match(db):
        return db
    m = re.search(rb"<mediawiki\b[^>]*\bxml:lang=[\"']([^\"']{1,64})[\"']", head)
    lang = metadata_lang(m.group(1).decode("utf-8", "replace"), "wiki") if m else None
    if db and lang and db != lang:
        log.info("%s: <dbname> names no Wikipedia language (%s): its xml:lang %s is used", path, db, lang)
    return lang or db


# A Wikipedia's language code: two or three letters, or a code with parts (zh_yue, map_bms,
# cbk_zam). A database name that gives anything else (a test wiki: demowiki) names no language,
# and the dump's xml:lang is used.
_WIKI_CODE = re.compile(r"^[a-z]{2,3}(_[a-z0-9]+)*$")
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
    read or is refused stops the stage here in one line rather than inside a worker. Returns the
    languages of its lexicons."""
    if path == "nltk":
        next(iter(lexicons.wordnet_lemmas(path)), None)
        return {"en"}
    langs = set()
    for code, _ in lexicons.wordnet_lemmas(path, with_lang=True):
        langs.add(code)
    return {x for x in (metadata_lang(c, "wordnet") for c in langs) if x}


def expand_with_langs(args, what, default_lang):
    """(path, size, lang) of every file the (LANG=)patterns match; a pattern's LANG (or, for
    --metadata, a folder's {lang}.json names) else the run's default language; for dumps their
    own language when no LANG is given (None here, read from the file later)."""
    out = []
    for arg in args:
        lang, pattern = split_lang(arg)
        if what == "--metadata" and lang is None and not any(ch in pattern for ch in "*?[") and \
                (pattern.endswith("/") or os.path.isdir(pattern)):
            for path, size in expand([FileSystems.join(pattern.rstrip("/"), "*.json")], what):
                stem = os.path.basename(path)[: -len(".json")]
                code = metadata_lang(stem, "wiki")
                if code is None:
                    raise InputError(f"--metadata {path}: in a folder, lists are named by their language ({{lang}}.json)")
                out.append((path, size, code))
            continue
        out.extend((path, size, lang or (None if what == "--wiki" else default_lang))
                   for path, size in expand([pattern], what))
    return out


def resolve_langs(langs, found):
    """The run's languages: a tuple of codes, "all" -> every language ``found`` in the inputs."""
    if langs in (None, "all", ("all",), ["all"]):
        return tuple(sorted(found)) or ("en",)
    if isinstance(langs, str):
        langs = [x for x in langs.split(",") if x.strip()]
    out = []
    for code in langs:
        lang = metadata_lang(code, "wiki")
        if lang is None:
            raise InputError(f"--langs: {code!r} is not a language code")
        if lang not in out:
            out.append(lang)
    if not out:
        raise InputError("--langs: no language given")
    return tuple(out)


def run(cfg: QueriesConfig, beam_flags=()):
    t0 = time.time()
    if cfg.langs is not None:
        resolve_langs(cfg.langs, set())  # a bad --langs code is named before anything is read
    default_lang = metadata_lang(cfg.default_lang, "wiki") if cfg.default_lang else None
    if default_lang is None:
        raise InputError(f"--default-lang: {cfg.default_lang!r} is not a language code")
    wiki = expand_with_langs(cfg.wiki, "--wiki", default_lang)
    for i, (path, size, lang) in enumerate(wiki):
        check_wiki(path)
        if lang is None:
            lang = wiki_lang(path)
            if lang is None:
                log.warning("%s: names no language (no <dbname>, no xml:lang): read as %s", path, default_lang)
            wiki[i] = (path, size, lang or default_lang)
    text_files = expand_with_langs(cfg.text, "--text", default_lang)
    pageviews = [p for p, _ in expand(cfg.pageviews, "--pageviews")]
    wordnet = [p for p, _ in expand(cfg.wordnet, "--wordnet")]
    for path in wordnet:
        lexicons.wordnet_format(path)
    metadata = expand_with_langs(cfg.metadata, "--metadata", default_lang)
    if not (wiki or text_files or pageviews or wordnet or metadata):
        raise InputError("no inputs: give at least one of --wiki, --text, --pageviews, --wordnet, --metadata")
    if cfg.max_page_chars < 1 or cfg.max_page_markup < 1:
        raise InputError("--max-page-chars and --max-page-markup must be positive")
    for path, _, _ in metadata:
        lexicons.read_metadata_file(path)
    wordnet_langs = set()
    for path in wordnet:
        wordnet_langs |= check_wordnet(path)
    found = {lang for _, _, lang in wiki + text_files + metadata} | wordnet_langs
    langs = resolve_langs(cfg.langs, found)
    skipped = {what: [p for p, _, lang in files if lang not in langs]
               for what, files in (("wiki", wiki), ("text", text_files), ("metadata", metadata))}
    for what, paths in skipped.items():
        for path in paths:
            log.warning("--%s %s: a language not built (--langs %s): skipped, counted", what, path, ",".join(langs))
    wiki, text_files, metadata = ([f for f in files if f[2] in langs] for files in (wiki, text_files, metadata))
    corpus_langs = {lang for _, _, lang in wiki + text_files}
    if corpus_langs & tokens.ICU_LANGS:
        try:
            tokens._icu()
        except RuntimeError as e:
            raise InputError(str(e)) from None
    text = [p for p, _, _ in text_files]
    input_langs = {p: lang for p, _, lang in wiki + text_files + metadata}
    resolved = QueriesConfig(**{**cfg.__dict__, "wiki": [p for p, _, _ in wiki], "text": text,
                                "pageviews": pageviews, "wordnet": wordnet, "metadata": [p for p, _, _ in metadata],
                                "langs": langs, "default_lang": default_lang, "input_langs": input_langs})
    FileSystems.mkdirs(cfg.out) if not FileSystems.exists(cfg.out) else None

    # Workers do not share our working directory (a dask worker runs where it was started):
    # the pipeline gets local paths made absolute; the stats list them as matched.
    for_workers = QueriesConfig(**{**resolved.__dict__, "out": _absolute(cfg.out),
                                   **{k: [_absolute(x) for x in getattr(resolved, k)]
                                      for k in ("wiki", "text", "pageviews", "wordnet", "metadata")},
                                   "input_langs": {_absolute(k): v for k, v in input_langs.items()}})
    sizes = {_absolute(path): size for path, size, _ in wiki + text_files}
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
    stats = funnel_from_counters(c, resolved, _pmi_summary(c), wall=time.time() - t0, skipped=skipped)
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


def rules_summary(cfg):
    """What the rule set keeps, in words and numbers (queries_stats.json's extra.rules)."""
    if cfg.rules == "metaclip2":
        caps = cfg.caps or METACLIP2_CAPS
        return {"name": "metaclip2", "caps": {s: {"fraction": num / den, "most": most}
                                              for s, (num, den, most) in caps.items()},
                "unigram": "ranked by count; first min(most, ceil(fraction * the language's distinct words))",
                "bigram": "PMI above min_pmi, ranked by PMI; first min(most, ceil(fraction * the language's "
                          "kept unigrams)); no minimum count unless min_bigram_count",
                "title": "titles without ':' ranked by page views; first min(most, ceil(fraction * their number))",
                "wordnet": "all", "metadata": "all",
                "entries": f"punctuation only or over {METACLIP2_MAX_ENTRY_CHARS} characters dropped",
                "ties": "equal counts (PMI, views) in code-point order of the entry"}
    return {"name": cfg.rules,
            "unigram": "count >= min_count", "title": "views >= min_views",
            "bigram": "count >= min_bigram_count, then PMI >= min_pmi"
                      + (" (min_bigram_count = min_count: on a Wikipedia-sized corpus no bigram of count >= 100 "
                         "reaches PMI 30, so CLIP's rule keeps none at min_pmi 30)" if cfg.rules == "clip" else
                         " (MetaCLIP 1: no minimum count)"),
            "wordnet": "all", "metadata": "all"}


def languages_from_counters(c, cfg):
    """extra.languages: per language, candidates and kept by source, drops, corpus size, caps."""
    out = {}
    langs = sorted({k.split(".")[1] for k in c if k.startswith("lang.")} | set(cfg.langs or ()))
    for lang in langs:
        g = {k[len(f"lang.{lang}."):]: v for k, v in c.items() if k.startswith(f"lang.{lang}.")}
        entry = {"sources": {s: {"candidates": g.get(f"in_{s}", 0), "kept": g.get(f"kept_{s}", 0)} for s in SOURCES},
                 "kept": g.get("kept", 0),
                 "dropped": {r: (g.get(f"drop_{r}", 0) if r != "over_max_entries"
                                 else g.get("merged", 0) - g.get("kept", 0)) for r in DROP_REASONS},
                 "documents": g.get("documents", 0), "word_tokens": g.get("tokens", 0)}
        entry["dropped"] = {k: v for k, v in entry["dropped"].items() if v}
        if cfg.rules == "metaclip2":
            entry["caps"] = {s: {"available": g.get(f"available_{s}", 0), "cap": g.get(f"cap_{s}", 0)}
                             for s in ("unigram", "bigram", "title")}
        out[lang] = entry
    return out


def funnel_from_counters(c, cfg, pmi_dist=None, wall=None, skipped=None):
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
        "thresholds": {"rules": cfg.rules, "min_count": cfg.min_count, "min_bigram_count": cfg.min_bigram_count,
                       "min_pmi": cfg.min_pmi, "min_views": cfg.min_views, "max_entries": cfg.max_entries,
                       "pageview_domains": list(cfg.pageview_domains),
                       "pmi": "log2(N * c(ab) / (c(a) * c(b))), N = word tokens of the language"},
        "rules": rules_summary(cfg),
        "languages": languages_from_counters(c, cfg),
        "langs": list(cfg.langs or ()),
        "inputs_other_language": skipped or {},
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
                   "pageview_lines_other_project": c.get("pageview_lines_other_project", 0),
                   "pageview_lines_other_language": c.get("pageview_lines_other_language", 0),
                   "pageview_lines_domain_not_listed": c.get("pageview_lines_domain_not_listed", 0),
                   "wordnet_files_broken": c.get("wordnet_files_broken", 0),
                   "wordnet_lemmas_other_language": c.get("wordnet_lemmas_other_language", 0),
                   "wordnet_lemmas_no_language": c.get("wordnet_lemmas_no_language", 0)},
        "limits": stage_limits(cfg),
        "bigram_pmi": pmi_dist,
        "inputs": {"wiki": cfg.wiki, "text": cfg.text, "pageviews": cfg.pageviews, "wordnet": cfg.wordnet,
                   "metadata": cfg.metadata},
    }
    if wall is not None:
        f.extra["seconds"] = round(wall, 2)
    return f.to_dict()
