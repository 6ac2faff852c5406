"""The `clipforge` command: one subcommand per stage, each a thin layer over its package.

Errors a user can cause end in one line on stderr and a non-zero exit; bugs still show a
traceback.
"""

import argparse
import sys
import time
from pathlib import Path

from clipforge import __version__

DEFAULT_WORLD = Path("data/demo/world")

EXAMPLES = """\
The stages, in order (each reads the one before it):
  queries   Wikipedia dump + pageviews + WordNet -> queries/ (query list)
  crawl     WAT/WARC/URL lists + query list      -> pairs/ (matched, balanced pairs)
  shard     pairs                                -> shards/ (WebDataset tars)
  stats     stage outputs                        -> reports/ (HTML and Markdown report)
  train     shards                               -> runs/NAME/ (CLIP checkpoints)
  eval      checkpoint + labelled images         -> zero-shot accuracy, retrieval recall
  score     checkpoint + pairs                   -> CLIP score of each pair (parquet)
  demo      all of the above on an offline demo web served on 127.0.0.1

Every stage run with no arguments works on the demo web (data/demo/).
Try:  clipforge demo generate && clipforge demo serve
"""


class UserError(Exception):
    """An error the user can fix (bad flag value, missing file); printed as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, with a pointer to --help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


# --- queries --------------------------------------------------------------------------------

BEAM_HELP = ("Beam's own flags pass through: without --runner the stage runs on the local FnApiRunner\n"
             "with one process per core; e.g. --runner=FlinkRunner --flink_master=HOST:8081, or\n"
             "--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp.")


def _add_queries(sub):
    p = sub.add_parser(
        "queries", help="build CLIP's query list from Wikipedia, pageviews and WordNet (Apache Beam)",
        formatter_class=_formatter, description=(
            "Build the query list CLIP describes: words occurring at least --min-count times in\n"
            "the corpus, bigrams with PMI >= --min-pmi (PMI = log2(N*c(ab)/(c(a)*c(b))), N = word\n"
            "tokens), Wikipedia titles with at least --min-views page views, WordNet lemmas, and\n"
            "entries of an existing metadata.json. Writes queries.parquet, metadata.json (MetaCLIP's\n"
            "format) and queries_stats.json to --out.\n\n"
            "With no inputs it builds the demo web's list (generating the demo web if needed)."),
        epilog=BEAM_HELP)
    g = p.add_argument_group("inputs (any combination; files, globs or fsspec/Beam URLs)")
    g.add_argument("--wiki", nargs="+", action="extend", default=[], metavar="DUMP",
                   help="MediaWiki XML dumps (.xml, .xml.bz2, .xml.gz)")
    g.add_argument("--text", nargs="+", action="extend", default=[], metavar="FILE",
                   help="plain-text corpora, one document per line (.gz/.bz2 read transparently)")
    g.add_argument("--pageviews", nargs="+", action="extend", default=[], metavar="FILE",
                   help="Wikimedia hourly pageview files (domain title views bytes; gz or plain)")
    g.add_argument("--wordnet", nargs="+", action="extend", default=[], metavar="SRC",
                   help="Open English WordNet YAML, WN-LMF XML(.gz), or 'nltk'")
    g.add_argument("--metadata", nargs="+", action="extend", default=[], metavar="JSON",
                   help="existing MetaCLIP metadata.json lists to import and extend (kept first)")
    p.add_argument("--out", default=None, help="output directory (default: data/queries, or data/demo/queries)")
    t = p.add_argument_group("thresholds")
    t.add_argument("--min-count", type=int, default=100, help="minimum word count (default: %(default)s)")
    t.add_argument("--min-bigram-count", type=int, default=None,
                   help="minimum bigram count before PMI (default: --min-count)")
    t.add_argument("--min-pmi", type=float, default=30.0, help="minimum bigram PMI, log base 2 (default: %(default)s)")
    t.add_argument("--min-views", type=int, default=70, help="minimum summed page views of a title (default: %(default)s)")
    t.add_argument("--max-entries", type=int, default=500_000, help="cap on the list, 0 for none (default: %(default)s)")
    t.add_argument("--pageview-domains", default="en,en.m",
                   help="pageview domain codes counted, comma-separated (default: %(default)s)")
    from clipforge import limits

    t.add_argument("--max-page-chars", type=int, default=limits.MAX_WIKI_PAGE_CHARS,
                   help="skip (and count) wiki pages and --text lines longer than this (default: %(default)s)")
    t.add_argument("--max-page-markup", type=int, default=limits.MAX_WIKI_PAGE_MARKUP,
                   help="skip (and count) wiki pages with more markup characters than this (default: %(default)s)")
    p.set_defaults(func=_queries, parser=p, beam=True)


def _queries(a, beam_flags):
    from clipforge.queries.pipeline import QueriesConfig
    from clipforge.queries.stage import run

    inputs = dict(wiki=a.wiki, text=a.text, pageviews=a.pageviews, wordnet=a.wordnet, metadata=a.metadata)
    thresholds = dict(min_count=a.min_count, min_bigram_count=a.min_bigram_count, min_pmi=a.min_pmi,
                      min_views=a.min_views, max_entries=a.max_entries)
    if not any(inputs.values()):
        world = _ensure_world(DEFAULT_WORLD)
        inputs = dict(wiki=[str(world / "wiki" / "*.xml.bz2")], text=[],
                      pageviews=[str(world / "pageviews" / "*.gz")], wordnet=[str(world / "wordnet" / "*.yaml")],
                      metadata=[])
        if "--min-pmi" not in sys.argv:
            thresholds["min_pmi"] = DEMO_MIN_PMI
        out = a.out or "data/demo/queries"
        print(f"queries: building the demo web's list from {world} (min PMI {thresholds['min_pmi']})")
    else:
        out = a.out or "data/queries"
    for name in ("min_count", "min_views", "max_entries"):
        if thresholds[name] < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative")
    cfg = QueriesConfig(**inputs, out=out, **thresholds,
                        pageview_domains=tuple(d for d in a.pageview_domains.split(",") if d),
                        max_page_chars=a.max_page_chars, max_page_markup=a.max_page_markup)
    t = time.time()
    stats = run(cfg, beam_flags)
    skipped = stats["extra"].get("corpus", {}).get("wiki_pages_skipped", {})
    if sum(skipped.values()):
        print("queries: wiki pages skipped: " + ", ".join(f"{k} {v:,}" for k, v in skipped.items() if v),
              file=sys.stderr)
    src = stats["extra"]["sources"]
    print(f"queries: {stats['kept']:,} entries -> {out}/queries.parquet, metadata.json ("
          + ", ".join(f"{s} {v['kept']:,}" for s, v in src.items() if v["candidates"])
          + f"); {stats['input']:,} candidates, {time.time() - t:.1f} s")
    corpus = stats["extra"]["corpus"]
    if corpus["wiki_files_broken"]:
        print(f"queries: warning: {corpus['wiki_files_broken']} dump file(s) broke off; "
              "their pages before the break were counted", file=sys.stderr)
    return 0


# Bigram PMI in the demo corpus peaks near 9 (log2), so CLIP's threshold of 30 would keep none.
DEMO_MIN_PMI = 3.0


def _ensure_world(world):
    if not (world / "manifest.json").exists():
        _demo_generate(argparse.Namespace(out=world, seed=0, size=4000, port=0, heldout_per_class=20, force=False))
    return world


# --- crawl ------------------------------------------------------------------------------------

# The demo web is small: a cap of 200 pairs per query shows balancing at work on it.
DEMO_MAX_PER_QUERY = 200


def _add_crawl(sub):
    p = sub.add_parser(
        "crawl", help="web archives and URL lists -> cleaned, language-identified, query-matched, balanced pairs",
        formatter_class=_formatter, description=(
            "Read image links with their alt text from Common Crawl WARC and WAT files and from URL\n"
            "lists; clean the texts, identify their language (fastText lid.176), keep those that\n"
            "contain a query (MetaCLIP's matching), drop duplicates, and balance so that no query\n"
            "keeps more than about --max-per-query pairs. Writes pairs-*.parquet (also an img2dataset\n"
            "URL list), query_counts.parquet and crawl_stats.json to --out.\n\n"
            "With no --input it crawls the demo web's WAT file with the demo query list (building\n"
            "both if needed)."),
        epilog=BEAM_HELP)
    p.add_argument("--input", nargs="+", action="extend", default=[], metavar="PATH",
                   help="WARC (.warc.gz), WAT (.wat.gz) or URL lists (.parquet/.csv/.tsv/.jsonl); globs allowed")
    p.add_argument("--queries", default=None,
                   help="a queries directory, queries.parquet or metadata.json (default: the demo's)")
    p.add_argument("--out", default=None, help="output directory (default: data/pairs, or data/demo/pairs)")
    p.add_argument("--max-per-query", type=int, default=20_000,
                   help="balancing threshold t: pairs kept per query, about (default: %(default)s)")
    p.add_argument("--lang", default="en", help="languages to keep, comma-separated, or 'all' (default: %(default)s)")
    p.add_argument("--min-lang-score", type=float, default=0.0, help="minimum fastText probability (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the balancing draw (default: %(default)s)")
    _column_flags(p, "URL-list column")
    p.add_argument("--min-text-chars", type=int, default=3, help="shortest caption kept (default: %(default)s)")
    p.add_argument("--max-text-chars", type=int, default=1024, help="longest caption kept (default: %(default)s)")
    p.add_argument("--rows-per-file", type=int, default=250_000, help="pairs per output parquet (default: %(default)s)")
    p.add_argument("--max-page-bytes", type=int, default=None,
                   help="bytes of a WARC page read; a longer page is read up to this and counted as truncated "
                        "(default: 4 MiB; Common Crawl itself stores at most 1 MiB)")
    _progress_flags(p)
    p.set_defaults(func=_crawl, parser=p, beam=True)


def _column_flags(p, what):
    p.add_argument("--url-col", default=None, help=f"{what} of the image URL (default: url or URL)")
    p.add_argument("--text-col", default=None, help=f"{what} of the text (default: caption, text or TEXT)")
    p.add_argument("--page-url-col", default=None, help=f"{what} of the page URL (default: page_url if present)")
    p.add_argument("--no-header", action="store_true",
                   help="CSV/TSV lists without a header row (CC3M, CC12M): --url-col, --text-col and "
                        "--page-url-col are 1-based positions, e.g. CC3M: --no-header --url-col 2 --text-col 1")


def _columns(a):
    """The column flags, checked: with --no-header, URL and text columns are positions 1, 2, ..."""
    if a.no_header:
        from clipforge.pipeline.readers import column_position

        if a.url_col is None or a.text_col is None:
            raise UserError("--no-header needs --url-col and --text-col as column positions "
                            "(1 is the first column; CC3M: --url-col 2 --text-col 1)")
        for flag, value in (("--url-col", a.url_col), ("--text-col", a.text_col), ("--page-url-col", a.page_url_col)):
            try:
                column_position(value, flag)
            except ValueError as e:
                raise UserError(str(e)) from None
    return dict(url_col=a.url_col, text_col=a.text_col, page_col=a.page_url_col, no_header=a.no_header)


def _progress_flags(p):
    p.add_argument("--progress-every", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between two progress lines (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")


def _progress_every(a):
    if a.progress_every <= 0 and not a.quiet:
        raise UserError("--progress-every must be positive (--quiet turns progress off)")
    return 0.0 if a.quiet else a.progress_every


def _crawl(a, beam_flags):
    from clipforge.pipeline.crawl import CrawlConfig
    from clipforge.pipeline.crawl_stage import expand_inputs, load_queries, run

    inputs, queries, out, t = a.input, a.queries, a.out, a.max_per_query
    if not inputs:
        world = _ensure_world(DEFAULT_WORLD)
        inputs = [str(world / "crawl" / "*.wat.gz")]
        out = out or "data/demo/pairs"
        if "--max-per-query" not in sys.argv:
            t = DEMO_MAX_PER_QUERY
        if queries is None:
            queries = "data/demo/queries"
            if not Path(queries, "queries.parquet").exists():
                _queries(build_parser().parse_args(["queries"]), [])
        print(f"crawl: the demo web's WAT file, max {t} pairs per query")
    if queries is None:
        raise UserError("--queries is required with --input (a queries directory, queries.parquet or metadata.json)")
    if t < 1 or a.rows_per_file < 1 or a.min_text_chars < 0 or a.max_text_chars < a.min_text_chars:
        raise UserError("--max-per-query and --rows-per-file must be positive, and --min-text-chars <= --max-text-chars")
    from clipforge import limits
    from clipforge.pipeline.captions import RAW_FACTOR

    if a.max_text_chars > limits.MAX_RAW_TEXT_CHARS // RAW_FACTOR:
        raise UserError(f"--max-text-chars is at most {limits.MAX_RAW_TEXT_CHARS // RAW_FACTOR:,} "
                        f"(texts are read up to {limits.MAX_RAW_TEXT_CHARS:,} characters)")
    if a.max_page_bytes is not None and not 4096 <= a.max_page_bytes <= limits.MAX_WARC_MEMBER_BYTES // 2:
        raise UserError(f"--max-page-bytes must be between 4096 and {limits.MAX_WARC_MEMBER_BYTES // 2:,}")
    langs = () if a.lang.strip().lower() == "all" else tuple(x.strip() for x in a.lang.split(",") if x.strip())
    columns = _columns(a)
    cfg = CrawlConfig(inputs=expand_inputs(inputs), queries=load_queries(queries), out=out or "data/pairs",
                      max_per_query=t, langs=langs, min_lang_score=a.min_lang_score, seed=a.seed,
                      **columns, min_text_chars=a.min_text_chars, max_text_chars=a.max_text_chars,
                      rows_per_file=a.rows_per_file, progress_every=_progress_every(a),
                      **({"max_page_bytes": a.max_page_bytes} if a.max_page_bytes else {}))
    s = run(cfg, beam_flags)
    top = ", ".join(f"{k} {v:,}" for k, v in list(s["dropped"].items())[:5])
    print(f"crawl: {s['kept']:,} of {s['input']:,} image links kept -> {cfg.out}/pairs-*.parquet "
          f"({top}); {s['extra']['seconds']} s")
    return 0


# --- shard ------------------------------------------------------------------------------------

def _add_shard(sub):
    p = sub.add_parser(
        "shard", help="fetch the pairs' images safely and pack them as WebDataset tar shards",
        formatter_class=_formatter, description=(
            "Fetch every pair's image (many requests per worker, connection reuse, timeouts, an\n"
            "overall deadline, a byte cap, bounded redirects, retries for transient errors, a\n"
            "per-host limit, X-Robots-Tag noai respected, private addresses refused), check it\n"
            "(pixel cap before decoding, minimum size, aspect ratio), resize it, and write\n"
            "NNNNNN.tar (KEY.jpg, KEY.txt, KEY.json), NNNNNN.parquet (every pair with its status),\n"
            "sizes.json and shard_stats.json. A rerun resumes: finished shards are kept.\n\n"
            "With no --pairs it shards the demo web's pairs, serving the demo web meanwhile."),
        epilog=BEAM_HELP)
    p.add_argument("--pairs", nargs="+", action="extend", default=[], metavar="PATH",
                   help="pairs directories (pairs-*.parquet), parquet files with url and text columns, or "
                        "URL lists as crawl reads them (.csv/.tsv/.jsonl, optionally compressed); globs allowed")
    p.add_argument("--out", default=None, help="output directory (default: data/shards, or data/demo/shards)")
    i = p.add_argument_group("images")
    i.add_argument("--image-size", type=int, default=256, help="target size in pixels (default: %(default)s; demo 64)")
    i.add_argument("--resize-mode", type=_hyphenated, choices=("keep-ratio", "center-crop", "no"),
                   default="keep-ratio",
                   help="keep-ratio: shorter side to --image-size; center-crop: square; no: re-encode only "
                        "(default: keep-ratio; keep_ratio and center_crop are accepted too)")
    i.add_argument("--min-size", type=int, default=32, help="drop images whose shorter side is smaller (default: 32)")
    i.add_argument("--max-aspect-ratio", type=float, default=10.0, help="drop longer/shorter above this (default: 10)")
    i.add_argument("--max-pixels", type=int, default=50_000_000,
                   help="refuse images with more pixels, read from the header (default: 50,000,000)")
    i.add_argument("--samples-per-shard", type=int, default=10_000, help="pairs per shard, about (default: 10,000)")
    i.add_argument("--seed", type=int, default=0, help="seed of the shuffle across shards (default: 0)")
    f = p.add_argument_group("fetching")
    f.add_argument("--threads", type=int, default=32, help="concurrent requests per worker (default: 32)")
    f.add_argument("--per-host", type=int, default=16, help="concurrent requests per host and worker (default: 16)")
    f.add_argument("--timeout", type=float, default=10.0, help="connect and read timeout, seconds (default: 10)")
    f.add_argument("--deadline", type=float, default=20.0, help="overall time per image, seconds (default: 20)")
    f.add_argument("--max-bytes", type=int, default=20 << 20, help="byte cap per image (default: 20 MiB)")
    f.add_argument("--retries", type=int, default=2, help="retries of transient failures (default: 2)")
    f.add_argument("--user-agent", default=None, help="User-Agent header (default: clipforge's, with a URL)")
    f.add_argument("--allow-private-hosts", action="store_true",
                   help="allow loopback and private addresses (the demo web and tests need it)")
    f.add_argument("--ignore-noai", action="store_true", help="fetch images whose X-Robots-Tag says noai")
    _column_flags(p, "column")
    p.add_argument("--downloader", choices=("clipforge", "img2dataset"), default="clipforge",
                   help="img2dataset: hand the pairs to img2dataset with matching settings and bring its "
                        "output to this layout (no deadline, no guard after redirects) (default: clipforge)")
    _progress_flags(p)
    p.set_defaults(func=_shard, parser=p, beam=True)


def _hyphenated(value):
    """A flag value with hyphens where an older spelling had underscores (keep_ratio -> keep-ratio)."""
    return value.replace("_", "-")


def _shard(a, beam_flags):
    import contextlib

    from clipforge.pipeline.fetch import DEFAULT_USER_AGENT
    from clipforge.pipeline.images import ImageConfig
    from clipforge.pipeline.shard import ShardConfig
    from clipforge.pipeline.shard_stage import expand_pairs, run

    server = contextlib.nullcontext()
    pairs, out, allow, size, per_shard = a.pairs, a.out, a.allow_private_hosts, a.image_size, a.samples_per_shard
    if not pairs:
        from clipforge.demo.server import DemoServer

        world = _ensure_world(DEFAULT_WORLD)
        if not Path("data/demo/pairs/crawl_stats.json").exists():
            _crawl(build_parser().parse_args(["crawl"]), [])
        pairs, out, allow = ["data/demo/pairs"], out or "data/demo/shards", True
        if "--image-size" not in sys.argv:
            size = 64
        if "--samples-per-shard" not in sys.argv:
            per_shard = 1000
        server = DemoServer(world)
        print(f"shard: the demo web's pairs, served at {server.base_url}/ meanwhile, {size}px images")
    for name in ("image_size", "threads", "per_host", "max_bytes"):
        if getattr(a, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if a.min_size < 0:
        raise UserError("--min-size must not be negative")
    if per_shard < 1 or a.deadline <= 0 or a.timeout <= 0 or a.max_aspect_ratio < 1:
        raise UserError("--samples-per-shard, --deadline and --timeout must be positive, --max-aspect-ratio >= 1")
    columns = _columns(a)
    items, n = expand_pairs(pairs, columns["url_col"], columns["text_col"], columns["page_col"], a.no_header)
    if a.downloader == "img2dataset" and any(not path.endswith(".parquet") for path, _ in items):
        raise UserError("--downloader img2dataset takes parquet pairs; give it the crawl's pairs or a parquet URL "
                        "list (or shard CSV/TSV/JSONL lists with the default downloader)")
    cfg = ShardConfig(inputs=items, out=out or "data/shards", samples_per_shard=per_shard, seed=a.seed,
                      image=ImageConfig(image_size=size, resize_mode=a.resize_mode.replace("-", "_"),
                                        min_size=a.min_size, max_aspect_ratio=a.max_aspect_ratio,
                                        max_pixels=a.max_pixels),
                      threads=a.threads, per_host=a.per_host, connect_timeout=a.timeout, read_timeout=a.timeout,
                      deadline=a.deadline, max_bytes=a.max_bytes, retries=a.retries,
                      user_agent=a.user_agent or DEFAULT_USER_AGENT, allow_private=allow,
                      respect_noai=not a.ignore_noai, **columns, progress_every=_progress_every(a))
    print(f"shard: {n:,} pairs -> about {max(1, -(-n // per_shard))} shard(s) in {cfg.out}", flush=True)
    with server:
        if a.downloader == "img2dataset":
            from clipforge.pipeline import img2dataset_downloader

            s = img2dataset_downloader.run(cfg, beam_flags)
        else:
            s = run(cfg, n, beam_flags)
    top = ", ".join(f"{k} {v:,}" for k, v in list(s["dropped"].items())[:6])
    reused = f" ({s['extra']['shards_reused']} reused)" if "shards_reused" in s["extra"] else ""
    print(f"shard: {s['kept']:,} of {s['input']:,} pairs have an image in {s['extra']['shards']} shard(s)"
          f"{reused} ({top}); {s['extra'].get('seconds', '')} s")
    return 0


# --- train ----------------------------------------------------------------------------------

DEMO_SHARDS = Path("data/demo/shards")
DEMO_RUN = Path("data/demo/runs/tiny")
# The demo's tiny run: small enough for two CPU cores in a few minutes.
DEMO_TRAIN = {"model": "tiny", "batch_size": 128, "epochs": 16, "lr": 1e-3, "weight_decay": 0.1,
              "save_every": 100, "log_every": 20}


def _add_train(sub):
    p = sub.add_parser(
        "train", help="contrastive CLIP pretraining on WebDataset shards (CPU, one GPU, or torchrun)",
        formatter_class=_formatter,
        description=(
            "Stream WebDataset shards (ours, img2dataset's, any with KEY.jpg + KEY.txt) and train CLIP:\n"
            "symmetric InfoNCE, AdamW, cosine schedule with warm-up, features gathered across ranks.\n"
            "The run directory gets bpe.txt.gz (the tokenizer, learned from the captions unless --bpe),\n"
            "checkpoints/step_*.pt (atomic, last --keep kept), metrics.jsonl, tensorboard/ and\n"
            "train_stats.json. --resume continues at the exact step and sample.\n\n"
            "With no --train-data it trains the tiny model on the demo web's shards.\n"
            "Several GPUs or nodes: torchrun --nproc-per-node N -m clipforge train ... (make train NPROC=N)."))
    p.add_argument("--train-data", default=None, metavar="SHARDS",
                   help="shards: a directory, a file, a brace pattern (a/{000..009}.tar), a glob, pipe: or "
                        "fsspec URLs; several joined with ::")
    p.add_argument("--model", default=None,
                   help="RN50, ViT-B-32, ViT-B-16, ViT-L-14, tiny or tiny-vit (default: ViT-B-32; demo: tiny)")
    p.add_argument("--out", default=None, help="run directory (default: runs/MODEL; demo: data/demo/runs/tiny)")
    d = p.add_argument_group("schedule")
    d.add_argument("--batch-size", type=int, default=None, help="samples per process per step (default: 256; demo 128)")
    d.add_argument("--accum-steps", type=int, default=1,
                   help="split each step's batch into this many micro-batches, keeping all negatives (default: 1)")
    d.add_argument("--epochs", type=int, default=None, help="passes over the data (default: 1; demo 16)")
    d.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    d.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 5e-4; demo 1e-3)")
    d.add_argument("--wd", type=float, default=None, help="weight decay of matrices (default: 0.2; demo 0.1)")
    d.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 5%% of the steps, at most 2000)")
    d.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm to this")
    d.add_argument("--seed", type=int, default=0, help="seed of the model, shuffles and crops (default: 0)")
    l = p.add_argument_group("data")
    l.add_argument("--workers", type=int, default=2, help="loader processes per GPU/process (default: 2)")
    l.add_argument("--resampled", action="store_true",
                   help="draw shards with replacement; an epoch is --samples-per-epoch (default: sizes.json)")
    l.add_argument("--samples-per-epoch", type=int, default=None, help="samples per epoch (default: from sizes.json)")
    l.add_argument("--shuffle-buffer", type=int, default=1000, help="samples in the shuffle buffer (default: 1000)")
    l.add_argument("--no-augment", action="store_true", help="centre crops instead of random resized crops")
    l.add_argument("--bpe", default=None, help="BPE merges file, e.g. CLIP's bpe_simple_vocab_16e6.txt.gz "
                                              "(default: learn one from the captions)")
    l.add_argument("--vocab-size", type=int, default=None, help="ids in a learned vocabulary (default: 49408)")
    m = p.add_argument_group("model and precision")
    m.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 autocast on GPU, fp32 on CPU (default: auto)")
    m.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward (less memory)")
    m.add_argument("--compile", action="store_true", help="torch.compile the model")
    m.add_argument("--gelu", action="store_true", help="GELU instead of QuickGELU")
    m.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start from these weights (clipforge checkpoint or OpenAI-format state dict)")
    r = p.add_argument_group("runs")
    r.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CKPT",
                   help="continue a run: a checkpoint, a run directory, or nothing for --out's latest")
    r.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps (default: 500; demo 100)")
    r.add_argument("--keep", type=int, default=3, help="checkpoints kept (default: 3)")
    r.add_argument("--log-every", type=int, default=None, help="progress line every N steps (default: 10)")
    r.add_argument("--eval-every", type=int, default=0, help="zero-shot eval on --eval-data every N steps")
    r.add_argument("--eval-data", default=None, help="ImageFolder tree for --eval-every (demo: the held-out shapes)")
    r.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files")
    p.set_defaults(func=_train, parser=p)


def _train(a):
    from clipforge.trainer.train import TrainConfig, train

    demo = a.train_data is None
    if demo:
        if not (DEMO_SHARDS / "sizes.json").exists():
            _shard(build_parser().parse_args(["shard"]), [])
        defaults = dict(DEMO_TRAIN, train_data=str(DEMO_SHARDS), out=str(DEMO_RUN))
        if a.eval_every and a.eval_data is None:
            a.eval_data = str(DEFAULT_WORLD / "heldout" / "shape")
    else:
        defaults = {"model": "ViT-B-32", "batch_size": 256, "epochs": 1, "lr": 5e-4, "weight_decay": 0.2,
                    "save_every": 500, "log_every": 10}
    pick = lambda v, k: defaults[k] if v is None else v   # noqa: E731
    for name in ("batch_size", "accum_steps", "workers", "keep"):
        v = getattr(a, name)
        if v is not None and v < (0 if name == "workers" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    for name in ("steps", "epochs", "save_every", "log_every", "samples_per_epoch"):
        v = getattr(a, name)
        if v is not None and v < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    model = pick(a.model, "model")
    cfg = TrainConfig(
        train_data=a.train_data or defaults["train_data"], out=a.out or defaults.get("out") or f"runs/{model}",
        model=model, batch_size=pick(a.batch_size, "batch_size"), accum_steps=a.accum_steps,
        epochs=pick(a.epochs, "epochs"), steps=a.steps, lr=pick(a.lr, "lr"), weight_decay=pick(a.wd, "weight_decay"),
        warmup=a.warmup, grad_clip=a.grad_clip, seed=a.seed, workers=a.workers, resampled=a.resampled,
        samples_per_epoch=a.samples_per_epoch, shuffle_buffer=a.shuffle_buffer, augment=not a.no_augment,
        precision=a.precision, grad_checkpointing=a.grad_checkpointing, compile=a.compile, quick_gelu=not a.gelu,
        resume=a.resume, init_from=a.init_from, bpe=a.bpe, vocab_size=a.vocab_size,
        save_every=pick(a.save_every, "save_every"), keep=a.keep, log_every=pick(a.log_every, "log_every"),
        eval_every=a.eval_every, eval_data=a.eval_data, tensorboard=not a.no_tensorboard)
    if cfg.batch_size % cfg.accum_steps:
        raise UserError(f"--batch-size {cfg.batch_size} does not split into --accum-steps {cfg.accum_steps} micro-batches")
    if a.eval_every and not cfg.eval_data:
        raise UserError("--eval-every needs --eval-data")
    train(cfg)
    return 0


# --- eval and score ---------------------------------------------------------------------------

def _add_eval(sub):
    p = sub.add_parser(
        "eval", help="zero-shot classification and retrieval of a CLIP checkpoint", formatter_class=_formatter,
        description=(
            "Zero-shot classification (top-1, top-5, mean per-class recall, confusion matrix plot) on\n"
            "ImageFolder trees or labelled WebDataset shards (.cls, or label in .json), with class\n"
            "embeddings from an ensemble of prompt templates; image<->text recall@1/5/10 on paired\n"
            "shards. Writes eval.json (every metric) and confusion_*.png; prints a short table.\n\n"
            "With no arguments: the demo run's latest checkpoint on the demo world's held-out sets."))
    p.add_argument("--checkpoint", default=None, metavar="CKPT",
                   help="a clipforge checkpoint or run directory, or OpenAI-format weights (with --bpe) "
                        "(default: data/demo/runs/tiny)")
    p.add_argument("--imagefolder", action="append", default=[], metavar="DIR",
                   help="ImageFolder tree ROOT/CLASS/IMAGE (repeatable)")
    p.add_argument("--wds", action="append", default=[], metavar="SHARDS", help="labelled test shards (repeatable)")
    p.add_argument("--retrieval", action="append", default=[], metavar="SHARDS", help="image-text shards (repeatable)")
    p.add_argument("--classnames", default=None, help="class names, one per line in label order "
                                                     "(needed for --wds; for ImageFolder default: folder names)")
    p.add_argument("--templates", default=None, help="prompt templates, one per line with {} (default: built-in set)")
    p.add_argument("--bpe", default=None, help="BPE merges file for OpenAI-format weights (CLIP's bpe_simple_vocab_16e6.txt.gz)")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/eval, or ./eval)")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (default: 256)")
    p.add_argument("--workers", type=int, default=2, help="image loading processes (default: 2)")
    p.set_defaults(func=_eval, parser=p)


def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _eval(a):
    from clipforge.schemas.files import write_json_atomic
    from clipforge.trainer.checkpoint import resolve_checkpoint
    from clipforge.trainer.zeroshot import (TEMPLATES, evaluate_imagefolder, evaluate_retrieval, evaluate_wds,
                                            load_model, plot_confusion, read_templates, table)

    demo = a.checkpoint is None
    if demo and not (DEMO_RUN / "checkpoints").is_dir():
        raise UserError(f"no demo run in {DEMO_RUN} yet: `make train` (or `make demo`) trains one; "
                        "or pass --checkpoint")
    ckpt = resolve_checkpoint(DEMO_RUN if demo else a.checkpoint)
    folders = a.imagefolder
    if demo and not (folders or a.wds or a.retrieval):
        folders = [str(DEFAULT_WORLD / "heldout" / "shape"), str(DEFAULT_WORLD / "heldout" / "colour")]
    if not (folders or a.wds or a.retrieval):
        raise UserError("nothing to evaluate: pass --imagefolder, --wds or --retrieval")
    if a.batch_size < 1 or a.workers < 0:
        raise UserError("--batch-size must be positive and --workers not negative")
    templates = read_templates(a.templates) if a.templates else TEMPLATES
    device = _device()
    model, tokenizer = load_model(ckpt, a.bpe, device)
    out = _eval_dir(a.out, ckpt, "eval.json")
    results, names = {}, set()

    def name_of(spec):
        base = Path(str(spec).split("::")[0].split("{")[0]).name or Path(str(spec)).parent.name
        base = base.removesuffix(".tar") or "set"
        n, i = base, 2
        while n in names:
            n, i = f"{base}-{i}", i + 1
        names.add(n)
        return n

    kw = dict(device=device, batch_size=a.batch_size, workers=a.workers)
    for folder in folders:
        results[name_of(folder)] = evaluate_imagefolder(model, tokenizer, folder, a.classnames, templates, **kw)
    for shards in a.wds:
        results[name_of(shards)] = evaluate_wds(model, tokenizer, shards, a.classnames, templates, **kw)
    for shards in a.retrieval:
        results[name_of(shards)] = evaluate_retrieval(model, tokenizer, shards, **kw)
    for name, r in results.items():
        if "confusion_matrix" in r:
            plot_confusion(r["confusion_matrix"], r["classnames"],
                           out / f"confusion_{name}.png", f"{name}: top-1 {100 * r['top1']:.1f}% "
                           f"(chance {100 * r['chance_top1']:.1f}%), {ckpt.name}")
    write_json_atomic(out / "eval.json", {"checkpoint": str(ckpt), "templates": len(templates), "results": results})
    print(table(results))
    print(f"eval: {ckpt} -> {out / 'eval.json'}" + (", confusion_*.png" if any("top1" in r for r in results.values()) else ""))
    return 0


def _eval_dir(out, ckpt, name):
    """The output directory of eval and score: --out, else RUN_DIR/eval for a run's checkpoint,
    else ./eval. A path that exists as a file is refused in one line."""
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    d = Path(out) if out else (run_dir / "eval" if run_dir else Path("eval"))
    if d.exists() and not d.is_dir():
        older = " (or a path ending in .parquet for one file, the older form)" if name == "scores.parquet" else ""
        raise UserError(f"--out {d} is a file: --out is a directory, which gets {name}; "
                        f"give another path{older}")
    return d


def _add_score(sub):
    p = sub.add_parser(
        "score", help="CLIP score (image-text cosine similarity) of every pair in shards or parquet",
        formatter_class=_formatter,
        description=("The cosine similarity of each pair's image and text embeddings, the CLIP-score\n"
                     "filter LAION and DataComp used; writes scores.parquet (key, caption, similarity)\n"
                     "to --out, a directory as for eval."))
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="clipforge checkpoint or run directory, or OpenAI-format weights (with --bpe)")
    p.add_argument("--pairs", required=True, help="shards (directory, brace pattern, pipe:) or parquet with image bytes")
    p.add_argument("--out", default=None,
                   help="output directory, which gets scores.parquet, as eval's gets eval.json (default: "
                        "RUN_DIR/eval, or ./eval); a path ending in .parquet is written as that file (older form)")
    p.add_argument("--bpe", default=None, help="BPE merges file for OpenAI-format weights")
    p.add_argument("--batch-size", type=int, default=256, help="pairs per batch (default: 256)")
    p.add_argument("--workers", type=int, default=2, help="image loading processes (default: 2)")
    p.set_defaults(func=_score, parser=p)


def _score(a):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipforge.trainer.checkpoint import resolve_checkpoint
    from clipforge.trainer.evalsets import parquet_pairs, shard_samples
    from clipforge.trainer.zeroshot import load_model, score_pairs

    ckpt = resolve_checkpoint(a.checkpoint)
    if a.out and a.out.endswith(".parquet"):
        out = Path(a.out)
        print(f"score: note: --out {a.out} ends in .parquet, so it is written as that file; --out is now a "
              "directory, as for eval (it gets scores.parquet)", file=sys.stderr)
    else:
        out = _eval_dir(a.out, ckpt, "scores.parquet") / "scores.parquet"
    model, tokenizer = load_model(ckpt, a.bpe, _device())
    src = Path(a.pairs)
    t0 = time.time()
    if src.suffix == ".parquet" or (src.is_dir() and not list(src.glob("*.tar")) and list(src.glob("*.parquet"))):
        batches, skipped = parquet_pairs(src, model.image_size, a.batch_size)
    else:
        batches, skipped = shard_samples(a.pairs, model.image_size, "text", a.batch_size, a.workers)
    keys, captions, sims = score_pairs(model, tokenizer, batches, _device())
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"key": pa.array(keys, pa.string()), "caption": pa.array(captions, pa.string()),
                      "similarity": pa.array(sims, pa.float32())})
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    dt = time.time() - t0
    import numpy as np

    q = np.quantile(sims, [0.1, 0.5, 0.9]) if len(sims) else [float("nan")] * 3
    skip = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "none"
    print(f"score: {len(sims):,} pairs in {dt:.1f} s ({len(sims) / max(dt, 1e-9):,.0f}/s); similarity p10 {q[0]:.3f} "
          f"median {q[1]:.3f} p90 {q[2]:.3f}; skipped: {skip} -> {out}")
    return 0


# --- stats ----------------------------------------------------------------------------------

def _add_stats(sub):
    p = sub.add_parser(
        "stats", help="dataset report (HTML, Markdown, PNG plots, stats.json) from the stages' outputs",
        formatter_class=_formatter,
        description=(
            "Read what the stages wrote (queries_stats.json, crawl_stats.json, pairs-*.parquet,\n"
            "query_counts.parquet, shard index parquets, sizes.json, the tars) and write report.html\n"
            "(self-contained), report.md, the plots as PNG and stats.json: funnels, per-query counts\n"
            "before and after balancing, sources, languages, sizes, failures, shards, a contact sheet.\n\n"
            "With no --data it reports on the demo run (data/demo/) into data/demo/reports/."))
    p.add_argument("--data", nargs="+", default=None, metavar="DIR",
                   help="stage output directories (queries/, pairs/, shards/) or a directory holding them")
    p.add_argument("--out", default=None, help="report directory (default: reports, or data/demo/reports)")
    p.add_argument("--samples", type=int, default=36, help="samples on the contact sheet (default: 36)")
    p.add_argument("--seed", type=int, default=0, help="seed of the contact sheet's sample (default: 0)")
    p.set_defaults(func=_stats, parser=p)


def _stats(a):
    from clipforge.stats.stage import StatsConfig, run

    data, out = a.data, a.out
    if data is None:
        if not (DEMO_SHARDS / "shard_stats.json").exists():
            _shard(build_parser().parse_args(["shard"]), [])
        data, out = ["data/demo"], out or "data/demo/reports"
    if a.samples < 0:
        raise UserError("--samples must not be negative")
    s = run(StatsConfig(data=data, out=out or "reports", samples=a.samples, seed=a.seed))
    print(f"stats: report of {', '.join(s['inputs'])} in {s['seconds']} s -> {Path(out or 'reports') / 'report.html'} "
          f"(also report.md, stats.json, {len(s['plots'])} PNGs)")
    return 0


# --- demo -----------------------------------------------------------------------------------

def _demo_generate(a):
    from clipforge.demo.world import GENERATOR_VERSION, WorldConfig, generate, load_manifest

    if a.size < 20:
        raise UserError(f"--size must be at least 20, got {a.size}")
    if not 0 <= a.port < 65536:
        raise UserError(f"--port must be between 0 and 65535, got {a.port}")
    if (a.out / "manifest.json").exists() and not a.force:
        m = load_manifest(a.out)
        same = (m.get("generator_version"), m["seed"], m["size"]) == (GENERATOR_VERSION, a.seed, a.size)
        if same and (a.port in (0, m["port"])):
            print(f"demo world already at {a.out} (seed {a.seed}, size {a.size}, {m['base_url']}); "
                  f"--force to rebuild")
            return 0
    t = time.time()
    print(f"generating the demo world: seed {a.seed}, {a.size} images -> {a.out}", flush=True)
    m = generate(WorldConfig(out=a.out, seed=a.seed, size=a.size, port=a.port,
                             heldout_per_class=a.heldout_per_class))
    c = m["counts"]
    print(f"  {c['images']} images on {c['pages']} pages ({c['img_tags']} <img> tags), "
          f"{len(m['messy'])} messy cases, {c['wiki_articles']} wiki articles, "
          f"{c['heldout_shape']}+{c['heldout_colour']} held-out images")
    print(f"  base URL {m['base_url']}; done in {time.time() - t:.1f} s")
    return 0


def _demo_serve(a):
    from clipforge.demo.server import DemoServer

    DemoServer(a.world, host=a.host, port=a.port).serve_until_signal()
    return 0


def _demo_chain(a):
    """Every stage on the demo web, reusing finished ones: the README's first command."""
    import json
    import shutil

    from clipforge.demo.server import DemoServer
    from clipforge.demo.world import load_manifest

    if a.world != DEFAULT_WORLD:
        raise UserError(f"the chain runs on {DEFAULT_WORLD}; for another world use `clipforge demo generate --out`")
    if a.epochs is not None and a.epochs < 1:
        raise UserError("--epochs must be positive")
    t0 = time.time()
    if a.fresh:
        for d in ("data/demo/queries", "data/demo/pairs", "data/demo/shards", "data/demo/reports", DEMO_RUN):
            shutil.rmtree(d, ignore_errors=True)
    banner = lambda n, what: print(f"\n== [{n}/7] {what} ({_elapsed(t0)}) ==", flush=True)   # noqa: E731
    banner(1, "demo web")
    gen = argparse.Namespace(out=a.world, seed=a.seed, size=a.size, port=0, heldout_per_class=20, force=a.fresh)
    _demo_generate(gen)
    m = load_manifest(a.world)
    import requests

    with DemoServer(a.world) as srv, requests.Session() as s:
        ok = sum(s.get(srv.url(f"pages/p{p:05d}.html"), timeout=5).status_code == 200
                 for p in range(m["counts"]["pages"]))
        print(f"demo web up at {srv.base_url}/: {ok}/{m['counts']['pages']} pages answer")
    # Each stage is reused when its outputs exist (--fresh starts over); shard and train resume by themselves.
    banner(2, "query list")
    if not Path("data/demo/queries/queries_stats.json").exists():
        _queries(build_parser().parse_args(["queries"]), [])
    else:
        print("queries: reusing data/demo/queries")
    banner(3, "crawl")
    if not Path("data/demo/pairs/crawl_stats.json").exists():
        _crawl(build_parser().parse_args(["crawl"]), [])
    else:
        print("crawl: reusing data/demo/pairs")
    banner(4, "shard")
    _shard(build_parser().parse_args(["shard"]), [])
    banner(5, "stats")
    _stats(build_parser().parse_args(["stats"]))
    banner(6, "train")
    train_args = ["train"] + (["--epochs", str(a.epochs)] if a.epochs else [])
    if (DEMO_RUN / "train_stats.json").exists():
        print(f"train: reusing {DEMO_RUN} (finished)")
    else:
        from clipforge.trainer.checkpoint import latest_checkpoint

        if latest_checkpoint(DEMO_RUN) is not None:
            print(f"train: resuming {DEMO_RUN}")
            train_args.append("--resume")
        _train(build_parser().parse_args(train_args))
    banner(7, "zero-shot eval")
    _eval(build_parser().parse_args(["eval"]))
    results = json.loads((DEMO_RUN / "eval" / "eval.json").read_text())["results"]
    print(f"\nclipforge demo: done in {_elapsed(t0)}. Outputs:")
    for what, where in (("demo web", a.world), ("query list", "data/demo/queries"), ("pairs", "data/demo/pairs"),
                        ("shards", "data/demo/shards"), ("report", "data/demo/reports/report.html"),
                        ("run", DEMO_RUN), ("eval", DEMO_RUN / "eval" / "eval.json")):
        print(f"  {what:<11} {where}")
    for name, r in results.items():
        print(f"zero-shot {name}: top-1 {100 * r['top1']:.1f}% on {r['samples']} held-out images "
              f"({r['classes']} classes, chance {100 * r['chance_top1']:.1f}%, {r['top1'] / r['chance_top1']:.1f}x chance)")
    return 0


def _elapsed(t0):
    s = int(time.time() - t0)
    return f"{s // 60}m{s % 60:02d}s"


def _add_demo(sub):
    p = sub.add_parser("demo", help="run every stage on an offline demo web (generate, serve, ...)",
                       formatter_class=_formatter, description=(
                           "The demo web: a generated, deterministic world of pages, images, WARC/WAT\n"
                           "files, a URL list, a Wikipedia-format dump, pageviews and a WordNet lexicon,\n"
                           "served on 127.0.0.1. With no action, run the whole chain on it: world, query\n"
                           "list, crawl, shard, stats, train (tiny model), zero-shot eval; about 6 minutes on\n"
                           "two cores the first time, finished stages are reused afterwards."))
    p.add_argument("--world", type=Path, default=DEFAULT_WORLD, help="world directory (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default: %(default)s)")
    p.add_argument("--size", type=int, default=4000, help="distinct images in the world (default: %(default)s)")
    p.add_argument("--fresh", action="store_true", help="rebuild everything instead of reusing finished stages")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs of the tiny model (default: 16; a finished run is reused unless --fresh)")
    p.set_defaults(func=_demo_chain, parser=p)
    acts = p.add_subparsers(title="actions", metavar="ACTION", parser_class=_Parser)

    g = acts.add_parser("generate", help="write a demo world to a directory", formatter_class=_formatter,
                        description="Write a demo world. The same seed, size and port give the same bytes.")
    g.add_argument("--out", type=Path, default=DEFAULT_WORLD, help="output directory (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    g.add_argument("--size", type=int, default=4000, help="number of distinct images (default: %(default)s)")
    g.add_argument("--port", type=int, default=0,
                   help="loopback port every URL in the world points at; 0 picks a free one (default)")
    g.add_argument("--heldout-per-class", type=int, default=20,
                   help="held-out images per class for zero-shot eval (default: %(default)s)")
    g.add_argument("--force", action="store_true", help="rebuild even if an identical world exists")
    g.set_defaults(func=_demo_generate, parser=g)

    s = acts.add_parser("serve", help="serve a demo world on loopback until Ctrl-C", formatter_class=_formatter,
                        description="Serve a generated world's pages, images and messy cases on loopback.")
    s.add_argument("--world", type=Path, default=DEFAULT_WORLD, help="world directory (default: %(default)s)")
    s.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default: %(default)s)")
    s.add_argument("--port", type=int, default=None, help="port (default: the one the world was generated for)")
    s.set_defaults(func=_demo_serve, parser=s)


def _quiet_logging():
    """Our progress lines on stderr; Beam's own chatter only when it warns of something real."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("clipforge").setLevel(logging.INFO)
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    logging.getLogger().addFilter(lambda r: "apitools not found" not in r.getMessage())


def build_parser():
    p = _Parser(prog="clipforge", formatter_class=_formatter,
                description="clipforge: build CLIP-style image-text datasets from the web and train CLIP on them.",
                epilog=EXAMPLES)
    p.add_argument("--version", action="version", version=f"clipforge {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    _add_queries(sub)
    _add_crawl(sub)
    _add_shard(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_score(sub)
    _add_stats(sub)
    _add_demo(sub)
    return p


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "beam", False):
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    _quiet_logging()
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    from clipforge.schemas.validate import SchemaError

    try:
        if getattr(args, "beam", False):
            from clipforge.pipeline.runner import unknown_beam_flags

            unknown = unknown_beam_flags(extra)
            if unknown:
                args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
            return args.func(args, extra)
        return args.func(args)
    except (UserError, SchemaError, FileNotFoundError, OSError, ValueError) as e:
        print(f"clipforge: error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        # Training stops (divergence, no usable sample, a bad resume) and loader errors, which
        # DataLoader re-raises with the worker's traceback: the last line is the message.
        if type(e).__name__ not in ("TrainingError", "NoUsableSamples"):
            raise
        line = [x for x in str(e).splitlines() if x.strip()][-1]
        print(f"clipforge: error: {line.split('NoUsableSamples: ')[-1]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clipforge: interrupted", file=sys.stderr)
        return 130
