"""The crawl stage as a command: resolve inputs and the query list, choose the number of uid
partitions from the inputs' size, run the pipeline, publish the outputs (written aside, then
moved into place) and write crawl_stats.json."""

import dataclasses
import io
import logging
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from clipforge import limits
from clipforge.beam import absolute, make_pipeline, read_stats, run_pipeline
from clipforge.errors import InputError
from clipforge.pipeline import progress, readers
from clipforge.pipeline.crawl import QUERY_COUNTS, CrawlConfig, build, n_partitions
from clipforge.schemas.files import Funnel, read_metadata, write_stats
from clipforge.schemas.languages import metadata_lang
from clipforge.schemas.records import CURATED_PAIR

log = logging.getLogger("clipforge.crawl")

CAPTION_REASONS = ("no_text", "text_too_short", "text_too_long", "text_number", "text_file_name", "text_boilerplate")
DROP_REASONS = ("unreadable_record", "field_too_large", "bad_url_scheme", "invalid_url") + CAPTION_REASONS + (
    "lang_not_wanted", "lang_without_list", "no_query_match", "duplicate", "balanced_out")
LANG_STEPS = ("identified", "lang_not_wanted", "lang_without_list", "no_query_match", "matched", "deduplicated", "kept")


def input_format(path):
    name = path.lower()
    if name.endswith((".wat.gz", ".wat")):
        return "wat"
    if name.endswith((".warc.gz", ".warc")):
        return "warc"
    fmt = readers.url_list_format(path)
    if fmt:
        return fmt
    raise InputError(f"--input {path}: unknown format (expected .warc[.gz], .wat[.gz], or a "
                     ".parquet/.csv/.tsv/.jsonl URL list)")


def _parquet_metadata(path):
    return readers.open_parquet(path).metadata


def expand_inputs(patterns):
    """Work items (path, format, part): parquet URL lists are split by row group."""
    items = []
    for pattern in patterns:
        try:
            found = FileSystems.match([pattern])[0].metadata_list
        except Exception as e:
            raise InputError(f"--input {pattern}: {e}") from None
        if not found:
            raise InputError(f"--input {pattern}: no such file")
        for m in sorted(found, key=lambda m: m.path):
            fmt = input_format(m.path)
            if fmt == "parquet":
                try:
                    meta = _parquet_metadata(m.path)
                except Exception as e:
                    raise InputError(f"--input {m.path}: not a readable parquet file ({e})") from None
                items.extend((m.path, fmt, g) for g in range(meta.num_row_groups))
            else:
                items.append((m.path, fmt, 0))
    return items


# Image links per byte of input, on the generous side (more partitions is only more files):
# a compressed WARC page of ~20 KB holds a few dozen <img>; a WAT link record ~150 bytes; a
# URL-list row ~100 bytes (and compressed lists hold about four times more).
_LINKS_PER_BYTE = {"warc": 1 / 500, "wat": 1 / 150, "csv": 1 / 100, "tsv": 1 / 100, "jsonl": 1 / 100}


def estimate_links(items):
    """Estimated image links of each work item, from its file's size (row counts for parquet)."""
    out, sizes = [], {}
    for path, fmt, part in items:
        if fmt == "parquet":
            out.append(_parquet_metadata(path).row_group(part).num_rows)
            continue
        if path not in sizes:
            sizes[path] = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
        compressed = path.lower().endswith((".gz", ".bz2", ".zst")) and fmt not in ("warc", "wat")
        out.append(int(sizes[path] * _LINKS_PER_BYTE[fmt] * (4 if compressed else 1)))
    return out


def check_columns(items, url_col=None, text_col=None, page_col=None, no_header=False):
    """Fail early, in one line, when a URL list lacks the columns the crawl needs, when its
    header row cannot be read, or when --no-header meets a list that names its columns."""
    seen = set()
    for path, fmt, _ in items:
        if fmt in ("warc", "wat") or path in seen:
            continue
        seen.add(path)
        try:
            readers.url_list_columns(path, fmt, url_col, text_col, page_col, no_header)
        except ValueError as e:
            raise InputError(f"--input {e}") from None


def load_queries(path):
    """The query strings from a queries directory, a queries.parquet or a metadata.json."""
    if FileSystems.exists(FileSystems.join(path, "queries.parquet")):
        path = FileSystems.join(path, "queries.parquet")
    elif FileSystems.exists(FileSystems.join(path, "metadata.json")):
        path = FileSystems.join(path, "metadata.json")
    if not FileSystems.exists(path):
        raise InputError(f"--queries {path}: no such file or directory")
    if path.endswith(".parquet"):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            table = pq.read_table(io.BytesIO(f.read()), columns=["query"])
        return table.column("query").to_pylist()
    if path.endswith(".json"):
        return read_metadata(path)
    raise InputError(f"--queries {path}: expected a queries directory, queries.parquet or metadata.json")


def load_query_lists(path):
    """{metadata language: query strings} of a worldwide list: a queries directory or a
    queries.parquet with a ``lang`` column (rows without one are English), or a folder of
    MetaCLIP 2 lists named ``{lang}.json`` (its ``data/metadata/``; a queries directory's
    ``metadata/``). Each file name is read as a Wikipedia language code (``zh_yue`` joins ``zh``)."""
    folder = path
    if FileSystems.exists(FileSystems.join(path, "queries.parquet")):
        path = FileSystems.join(path, "queries.parquet")
    elif FileSystems.exists(FileSystems.join(path, "metadata")):
        folder = FileSystems.join(path, "metadata")
    if path.endswith(".parquet"):
        if not FileSystems.exists(path):
            raise InputError(f"--queries {path}: no such file or directory")
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            table = pq.read_table(io.BytesIO(f.read()))
        langs = table.column("lang").to_pylist() if "lang" in table.column_names else [None] * table.num_rows
        out = {}
        for q, lang in zip(table.column("query").to_pylist(), langs):
            out.setdefault(metadata_lang(lang or "en", "wiki") or "en", []).append(q)
        return out
    try:
        files = FileSystems.match([FileSystems.join(folder, "*.json")])[0].metadata_list
    except Exception as e:
        raise InputError(f"--queries {folder}: {e}") from None
    if not files:
        raise InputError(f"--queries {path}: expected a queries directory, a queries.parquet with a lang column, "
                         "or a folder of {lang}.json lists (MetaCLIP 2's layout)")
    out = {}
    for m in sorted(files, key=lambda m: m.path):
        stem = m.path.rsplit("/", 1)[-1][:-len(".json")]
        lang = metadata_lang(stem, "wiki")
        if lang is None:
            raise InputError(f"--queries {m.path}: {stem!r} is not a language code (expected {{lang}}.json)")
        out.setdefault(lang, []).extend(read_metadata(m.path))
    return out


def run(cfg: CrawlConfig, beam_flags=()):
    t0 = time.time()
    if cfg.lang_queries is not None:
        cfg = dataclasses.replace(cfg, lang_queries={k: v for k, v in cfg.lang_queries.items() if v})
    if not (cfg.queries if cfg.lang_queries is None else cfg.lang_queries):
        raise InputError("the query list is empty")
    check_columns(cfg.inputs, cfg.url_col, cfg.text_col, cfg.page_col, cfg.no_header)
    # Workers of a distributed runner do not share the launcher's working directory.
    cfg = dataclasses.replace(cfg, out=absolute(cfg.out),
                              inputs=[(absolute(path), fmt, part) for path, fmt, part in cfg.inputs])
    estimates = estimate_links(cfg.inputs)
    n_parts = cfg.partitions or n_partitions(sum(estimates), cfg.rows_per_file)
    tmp = FileSystems.join(cfg.out, "_tmp")
    if FileSystems.exists(tmp):  # left by a run that was killed
        FileSystems.delete([tmp])
    for d in (cfg.out, tmp):
        if not FileSystems.exists(d):
            FileSystems.mkdirs(d)
    lists = (f"{sum(map(len, cfg.lang_queries.values())):,} queries in {len(cfg.lang_queries)} languages"
             if cfg.lang_queries is not None else f"{len(cfg.queries):,} queries")
    print(f"crawl: {len(cfg.inputs)} input part(s), {lists}, {n_parts} uid partition(s)", file=sys.stderr, flush=True)
    p = make_pipeline(list(beam_flags))
    build(p, cfg, tmp, n_parts)
    with progress.ProgressLine(_describe(FileSystems.join(tmp, "progress"), estimates, n_parts),
                               interval=cfg.progress_every, quiet=cfg.progress_every <= 0):
        run_pipeline(p)
    c = read_stats(FileSystems.join(tmp, "stats.json"))
    if "input" not in c:
        raise RuntimeError(f"the pipeline finished without writing its counts ({tmp}/stats.json)")
    publish(cfg.out, tmp)
    stats = funnel_from_counters(c, cfg, time.time() - t0)
    stats["extra"]["partitions"] = n_parts
    write_stats(FileSystems.join(cfg.out, "crawl_stats.json"), stats)
    return stats


def _describe(notes_dir, estimates, n_parts):
    """The progress line of a running crawl, from its workers' notes."""
    start, total = time.monotonic(), max(1, sum(estimates))

    def describe():
        notes = progress.read_notes(notes_dir)
        items = {int(k[1:]): v for k, v in notes.items() if k.startswith("m")}
        elapsed = time.monotonic() - start
        if not items:
            return f"crawl: starting the workers ({len(estimates)} parts, {_fmt(total)} links estimated)"
        read = sum(v["read"] for v in items.values())
        matched = sum(v["matched"] for v in items.values())
        done = sum(bool(v.get("done")) for v in items.values())
        if done < len(estimates):
            fraction = sum(estimates[i] * min(1.0, v["fraction"]) for i, v in items.items()) / total
            return (f"crawl: matching {progress.bar(fraction)} {fraction:4.0%}  {done}/{len(estimates)} parts, "
                    f"{read:,} links read ({read / max(elapsed, 1e-9):,.0f}/s), {matched:,} matched, "
                    f"{progress.eta(elapsed, fraction)}")
        deduped = sum(k.startswith("d") for k in notes)
        balanced = sum(k.startswith("b") for k in notes)
        return (f"crawl: {read:,} links read, {matched:,} matched; partitions deduplicated {deduped}/{n_parts}, "
                f"balanced {balanced}/{n_parts}")
    return describe


def _fmt(n):
    return f"{n:,}"


def publish(out, tmp):
    """Replace the previous run's outputs with this run's, file by file."""
    new = [m.path for m in FileSystems.match([FileSystems.join(tmp, "*.parquet")])[0].metadata_list]
    old = [m.path for m in FileSystems.match([FileSystems.join(out, "pairs-*.parquet")])[0].metadata_list]
    if old:
        FileSystems.delete(old)
    names = {p.rsplit("/", 1)[-1] for p in new}
    if not any(n.startswith("pairs-") for n in names):  # nothing kept: still a readable, empty file
        _empty(FileSystems.join(out, "pairs-00000.parquet"), CURATED_PAIR)
    if "query_counts.parquet" not in names:
        _empty(FileSystems.join(out, "query_counts.parquet"), QUERY_COUNTS)
    for path in new:
        FileSystems.rename([path], [FileSystems.join(out, path.rsplit("/", 1)[-1])])
    FileSystems.delete([tmp])


def _empty(path, schema):
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([], schema=schema), buf)
    with FileSystems.create(path) as f:
        f.write(buf.getvalue())


def crawl_limits(cfg):
    """The caps this crawl ran with (clipforge.limits; --max-page-bytes)."""
    from clipforge.pipeline.captions import RAW_FACTOR

    return {"max_page_bytes": cfg.max_page_bytes, "max_warc_member_bytes": limits.MAX_WARC_MEMBER_BYTES,
            "max_wat_record_bytes": limits.MAX_WAT_RECORD_BYTES, "max_html_elements": limits.MAX_HTML_ELEMENTS,
            "max_html_depth": limits.MAX_HTML_DEPTH, "max_decompression_ratio": limits.MAX_DECOMPRESSION_RATIO,
            "decompression_floor_bytes": limits.DECOMPRESSION_FLOOR_BYTES,
            "max_raw_text_chars": min(limits.MAX_RAW_TEXT_CHARS, RAW_FACTOR * cfg.max_text_chars),
            "max_url_chars": limits.MAX_URL_CHARS, "max_host_chars": limits.MAX_HOST_CHARS,
            "max_csv_field_chars": limits.MAX_CSV_FIELD_CHARS}


def funnel_from_counters(c, cfg, wall):
    f = Funnel("crawl", unit="image link")
    f.add_input(c.get("input", 0))
    f.keep(c.get("kept", 0))
    others = sorted(k[len("drop_"):] for k in c if k.startswith("drop_") and k[len("drop_"):] not in DROP_REASONS)
    for reason in DROP_REASONS + tuple(others):  # a reason a reader adds is counted too, never lost
        if c.get(f"drop_{reason}"):
            f.drop(reason, c[f"drop_{reason}"])
    langs = {k[len("lang_"):]: v for k, v in c.items() if k.startswith("lang_")}
    f.extra = {
        "inputs": {fmt: c.get(f"input_{fmt}", 0) for fmt in ("warc", "wat", "urllist")},
        "pages": {k[len("pages_"):]: v for k, v in sorted(c.items()) if k.startswith("pages_")},
        "languages_kept": dict(sorted(langs.items(), key=lambda kv: -kv[1])),
        "settings": {"max_per_query": cfg.max_per_query, "langs": list(cfg.langs) or "all",
                     "worldwide": cfg.lang_queries is not None,
                     "min_lang_score": cfg.min_lang_score, "seed": cfg.seed,
                     "queries": len(cfg.queries) if cfg.lang_queries is None else
                     sum(len(set(v)) for v in cfg.lang_queries.values()),
                     "min_text_chars": cfg.min_text_chars, "max_text_chars": cfg.max_text_chars},
        "limits": crawl_limits(cfg),
        "seconds": round(wall, 2),
    }
    if cfg.lang_queries is not None:
        f.extra["languages"] = language_funnels(c, cfg)
        share = c.get("tail_share_en_micro")
        f.extra["balancing"] = {
            "t_en": cfg.max_per_query, "tail_share_en": share / 1e6 if share is not None else None,
            "rule": "t_lang: the t whose tail share (matches of queries matched fewer than t times / all "
                    "matches, in that language) is nearest English's at t_en; ties to the larger t"
                    if share is not None else "no English match: every language balanced at t_en"}
    return f.to_dict()


def language_funnels(c, cfg):
    """Per metadata language: its list's size, and links identified as it, dropped by reason,
    matched, left after deduplication and kept, with its balancing t; most kept first."""
    out = {}
    for k, v in c.items():
        if k.startswith("wl:"):   # crawl.lang_counter's names
            _, lang, step = k.split(":")
            out.setdefault(lang, {})[step] = v
    for lang, qs in cfg.lang_queries.items():
        out.setdefault(lang, {})["entries"] = len(set(qs))
    rows = {}
    for lang, d in out.items():
        row = {"entries": d.get("entries", 0), **{s: d.get(s, 0) for s in LANG_STEPS}, "t": d.get("t")}
        row["balanced_out"] = row["deduplicated"] - row["kept"]
        rows[lang] = row
    return dict(sorted(rows.items(), key=lambda kv: (-kv[1]["kept"], -kv[1]["identified"], kv[0])))
