"""The `clipforge` command: the argument parsers, and a dispatch to the stage functions
(clipforge.stages, clipforge.demo.chain), which turn the flags into each stage's config and run it.

Errors a user can cause end in one line on stderr and a non-zero exit; bugs still show a
traceback.
"""

import argparse
import sys
from pathlib import Path

from clipforge import __version__, stages
from clipforge.demo import chain
from clipforge.demo.chain import DEFAULT_WORLD, default_help
from clipforge.errors import UserError
from clipforge.help_text import BEAM_HELP, EXAMPLES, HELP


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, with a pointer to --help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


# --- queries --------------------------------------------------------------------------------



def _add_queries(sub):
    p = sub.add_parser(
        "queries", help="build CLIP's query list from Wikipedia, pageviews and WordNet (Apache Beam)",
        formatter_class=_formatter, description=HELP['queries'],
        epilog=BEAM_HELP)
    g = p.add_argument_group("inputs (any combination; files, globs or fsspec/Beam URLs)")
    g.add_argument("--wiki", nargs="+", action="extend", default=[], metavar="[LANG=]DUMP",
                   help="MediaWiki XML dumps (.xml, .xml.bz2, .xml.gz); language from the dump's <dbname> "
                        "(dewiki: de), else its xml:lang")
    g.add_argument("--text", nargs="+", action="extend", default=[], metavar="[LANG=]FILE",
                   help="plain-text corpora, one document per line (.gz/.bz2 read transparently); "
                        "de=FILE for German, a plain FILE is --default-lang")
    g.add_argument("--pageviews", nargs="+", action="extend", default=[], metavar="FILE",
                   help="Wikimedia hourly pageview files (domain title views bytes; gz or plain); "
                        "each line's language from its project code (de, de.m: German Wikipedia)")
    g.add_argument("--wordnet", nargs="+", action="extend", default=[], metavar="SRC",
                   help="Open English WordNet YAML (en), WN-LMF XML(.gz) (each lexicon's language), or 'nltk' (en)")
    g.add_argument("--metadata", nargs="+", action="extend", default=[], metavar="[LANG=]JSON",
                   help="existing MetaCLIP metadata.json lists to import and extend (kept first); a folder "
                        "of {lang}.json lists (MetaCLIP 2's layout), LANG=FILE, or a plain FILE (--default-lang)")
    p.add_argument("--out", default=None, help="output directory (default: data/queries, or data/demo/queries)")
    lg = p.add_argument_group("languages")
    lg.add_argument("--langs", default="en",
                    help="languages to build, comma-separated Wikipedia codes (de,fr,ja), or 'all': every "
                         "language of a --wiki/--text/--wordnet/--metadata input; inputs and pageview lines "
                         "of other languages are skipped and counted (default: %(default)s)")
    lg.add_argument("--default-lang", default=None,
                    help="the language of inputs that name none (default: the one --langs language, else en)")
    t = p.add_argument_group("thresholds")
    t.add_argument("--rules", choices=("clip", "metaclip1", "metaclip2"), default="clip",
                   help="clip: the thresholds below; metaclip1: the same, bigrams with no minimum count; "
                        "metaclip2: per language, unigrams top 10%% by count (at most 251,465), bigrams with "
                        "PMI above --min-pmi top by PMI (40%% of the kept unigrams, at most 100,646), titles "
                        "top 76%% by views (at most 61,235), WordNet all (default: %(default)s)")
    t.add_argument("--min-count", type=int, default=100, help="minimum word count, clip and metaclip1 "
                   "(default: %(default)s)")
    t.add_argument("--min-bigram-count", type=int, default=None,
                   help="minimum bigram count before PMI (default: clip: --min-count, which on a Wikipedia-"
                        "sized corpus leaves no bigram with PMI >= 30; metaclip1/2: none)")
    t.add_argument("--min-pmi", type=float, default=None, help=f"minimum bigram PMI, log base 2 {default_help('min_pmi')}")
    t.add_argument("--min-views", type=int, default=70, help="minimum summed page views of a title, clip and "
                   "metaclip1 (default: %(default)s)")
    t.add_argument("--max-entries", type=int, default=None,
                   help="cap on each language's list, 0 for none (default: 500,000; metaclip2: none)")
    t.add_argument("--pageview-domains", default="",
                   help="count only these pageview domain codes, comma-separated (default: every "
                        "Wikipedia project code of the languages built, desktop and mobile)")
    from clipforge import limits

    t.add_argument("--max-page-chars", type=int, default=limits.MAX_WIKI_PAGE_CHARS,
                   help="skip (and count) wiki pages and --text lines longer than this (default: %(default)s)")
    t.add_argument("--max-page-markup", type=int, default=limits.MAX_WIKI_PAGE_MARKUP,
                   help="skip (and count) wiki pages with more markup characters than this (default: %(default)s)")
    p.set_defaults(func=stages.queries, parser=p, beam=True)


def _add_crawl(sub):
    p = sub.add_parser(
        "crawl", help="web archives and URL lists -> cleaned, language-identified, query-matched, balanced pairs",
        formatter_class=_formatter, description=HELP['crawl'],
        epilog=BEAM_HELP)
    p.add_argument("--input", nargs="+", action="extend", default=[], metavar="PATH",
                   help="WARC (.warc.gz), WAT (.wat.gz) or URL lists (.parquet/.csv/.tsv/.jsonl); globs allowed")
    p.add_argument("--queries", default=None,
                   help="a queries directory, queries.parquet or metadata.json; with --worldwide also a folder "
                        "of {lang}.json lists (default: the demo's)")
    p.add_argument("--out", default=None, help="output directory (default: data/pairs, or data/demo/pairs)")
    p.add_argument("--max-per-query", type=int, default=None,
                   help=f"balancing threshold t: pairs kept per query, about {default_help('max_per_query')}")
    p.add_argument("--lang", default=None,
                   help="languages to keep, comma-separated, or 'all' (default: en; with --worldwide: all)")
    p.add_argument("--worldwide", action="store_true",
                   help="MetaCLIP 2's worldwide curation: each text is matched against the list of its own "
                        "language (lid.176, mapped to Wikipedia codes) and each language is balanced with its own "
                        "t, the one that keeps English's tail share at --max-per-query; --queries is a queries "
                        "directory with a lang column or a folder of {lang}.json lists")
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
    p.set_defaults(func=stages.crawl, parser=p, beam=True)


def _column_flags(p, what):
    p.add_argument("--url-col", default=None, help=f"{what} of the image URL (default: url or URL)")
    p.add_argument("--text-col", default=None, help=f"{what} of the text (default: caption, text or TEXT)")
    p.add_argument("--page-url-col", default=None, help=f"{what} of the page URL (default: page_url if present)")
    p.add_argument("--no-header", action="store_true",
                   help="CSV/TSV lists without a header row (CC3M, CC12M): --url-col, --text-col and "
                        "--page-url-col are 1-based positions, e.g. CC3M: --no-header --url-col 2 --text-col 1")


def _progress_flags(p):
    p.add_argument("--progress-every", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between two progress lines (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")


def _add_shard(sub):
    p = sub.add_parser(
        "shard", help="fetch the pairs' images safely and pack them as WebDataset tar shards",
        formatter_class=_formatter, description=HELP['shard'],
        epilog=BEAM_HELP)
    p.add_argument("--pairs", nargs="+", action="extend", default=[], metavar="PATH",
                   help="pairs directories (pairs-*.parquet), parquet files with url and text columns, or "
                        "URL lists as crawl reads them (.csv/.tsv/.jsonl, optionally compressed); globs allowed")
    p.add_argument("--out", default=None, help="output directory (default: data/shards, or data/demo/shards)")
    i = p.add_argument_group("images")
    i.add_argument("--image-size", type=int, default=None, help=f"target size in pixels {default_help('image_size')}")
    i.add_argument("--resize-mode", type=_hyphenated, choices=("keep-ratio", "center-crop", "no"), default="keep-ratio",
                   help="keep-ratio: shorter side to --image-size; center-crop: square; no: re-encode only "
                        "(default: keep-ratio; keep_ratio and center_crop are accepted too)")
    i.add_argument("--min-size", type=int, default=32, help="drop images whose shorter side is smaller (default: 32)")
    i.add_argument("--max-aspect-ratio", type=float, default=10.0, help="drop longer/shorter above this (default: 10)")
    i.add_argument("--max-pixels", type=int, default=50_000_000,
                   help="refuse images with more pixels, read from the header (default: 50,000,000)")
    i.add_argument("--samples-per-shard", type=int, default=None,
                   help=f"pairs per shard, about {default_help('samples_per_shard')}")
    i.add_argument("--seed", type=int, default=0, help="seed of the shuffle across shards (default: 0)")
    f = p.add_argument_group("fetching")
    f.add_argument("--threads", type=int, default=32,
                   help="transfers in flight per worker, all driven by libcurl from one thread (default: 32)")
    f.add_argument("--per-host", type=int, default=16, help="transfers in flight per host and worker (default: 16)")
    f.add_argument("--image-threads", type=int, default=0,
                   help="threads per worker that decode, resize and encode (default: the CPU count, at most 8)")
    f.add_argument("--near-dup-distance", type=int, nargs="?", const=8, default=None, metavar="BITS",
                   help="also drop images whose 64-bit perceptual hash is within BITS of one kept (the smallest "
                        "uid stays), as near_duplicate_image; the flag alone: 8 (no two of 2,000 distinct photos "
                        "were within 8, resized and re-encoded copies within 4); without it only exact duplicates "
                        "are dropped")
    f.add_argument("--timeout", type=float, default=10.0, help="connect and read timeout, seconds (default: 10)")
    f.add_argument("--deadline", type=float, default=20.0, help="overall time per image from its first transfer, seconds (default: 20)")
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
    p.set_defaults(func=stages.shard, parser=p, beam=True)


def _hyphenated(value):
    """A flag value with hyphens where an older spelling had underscores (keep_ratio -> keep-ratio)."""
    return value.replace("_", "-")


def _add_train(sub):
    p = sub.add_parser(
        "train", help="CLIP pretraining on WebDataset shards (CPU, one GPU, or torchrun); contrastive, "
                      "bag-of-words or captioning objective",
        formatter_class=_formatter,
        description=HELP['train'])
    p.add_argument("--train-data", default=None, metavar="SHARDS",
                   help="shards: a directory, a file, a brace pattern (a/{000..009}.tar), a glob, pipe: or "
                        "fsspec URLs; several joined with ::")
    p.add_argument("--model", default=None,
                   help="RN50, ViT-B-32, ViT-B-16, ViT-L-14, tiny or tiny-vit (default: ViT-B-32; demo: tiny)")
    p.add_argument("--out", default=None, help="run directory (default: runs/MODEL; demo: data/demo/runs/tiny; "
                                               "-bow or -caption appended for those objectives)")
    p.add_argument("--objective", choices=("contrastive", "bow", "caption"), default="contrastive",
                   help="what the image tower learns from the captions: contrastive (CLIP), bow (predict the "
                        "caption's bag of words) or caption (an image-conditioned language model), as in the "
                        "paper's Figure 2; eval scores bow and caption by the prompts' likelihood (default: contrastive)")
    d = p.add_argument_group("schedule")
    d.add_argument("--batch-size", type=int, default=None, help="samples per process per step (default: 256; demo 128)")
    d.add_argument("--accum-steps", type=int, default=1,
                   help="split each step's batch into this many micro-batches, keeping all negatives (default: 1)")
    d.add_argument("--epochs", type=int, default=None, help=f"passes over the data (default: 1; demo {chain.DEMO_TRAIN['epochs']})")
    d.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    d.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 5e-4; demo 1e-3)")
    d.add_argument("--wd", type=float, default=None, help="weight decay of matrices (default: 0.2; demo 0.1)")
    d.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 5%% of the steps, at most 2000)")
    d.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm to this")
    d.add_argument("--seed", type=int, default=0, help="seed of the model, shuffles and crops (default: 0)")
    l = p.add_argument_group("data")
    l.add_argument("--workers", type=int, default=None,
                   help="loader processes per GPU/process (default: the CPUs this process may use, divided by "
                        "LOCAL_WORLD_SIZE, less one for the training loop; on resume, the checkpoint's)")
    l.add_argument("--resampled", action="store_true",
                   help="draw shards with replacement; an epoch is --samples-per-epoch (default: sizes.json)")
    l.add_argument("--samples-per-epoch", type=int, default=None, help="samples per epoch (default: from sizes.json)")
    l.add_argument("--shuffle-buffer", type=int, default=1000, help="samples in the shuffle buffer (default: 1000)")
    l.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random resized crops (90-100%% of the area, aspect 3/4 to 4/3); --no-augment: centre crops, "
                        "as eval takes (default: on; demo off: its held-out drawings are centre-cropped, and its "
                        "shapes learn faster without the squashing)")
    l.add_argument("--bpe", default=None, help="BPE merges file, e.g. CLIP's bpe_simple_vocab_16e6.txt.gz "
                                              "(default: learn one from the captions)")
    l.add_argument("--vocab-size", type=int, default=None, help="ids in a learned vocabulary (default: 49408)")
    l.add_argument("--exclude", default=None, metavar="FILE",
                   help="shard sample keys not to train on, one per line (`clipforge overlap`'s exclude.txt; "
                        "counted as excluded; demo: data/demo/overlap/exclude.txt when it exists)")
    l.add_argument("--learn-bpe-only", action="store_true",
                   help="learn the vocabulary from the shards' captions, write OUT/bpe.txt.gz and exit (one process; "
                        "run it before a multi-node run, which then reads the file)")
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
    r.add_argument("--dist-timeout", type=float, default=60.0, metavar="MIN", help="minutes a rank waits for the others")
    p.set_defaults(func=stages.train, parser=p)


def _add_eval(sub):
    p = sub.add_parser(
        "eval", help="zero-shot classification and retrieval of a CLIP checkpoint", formatter_class=_formatter,
        description=HELP['eval'])
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
    p.add_argument("--overlap", default=None, metavar="DIR",
                   help="a `clipforge overlap` directory: also report each ImageFolder set without its images "
                        "that have a copy in the training data (the clean split; demo: data/demo/overlap)")
    p.set_defaults(func=stages.evaluate, parser=p)


def _add_score(sub):
    p = sub.add_parser(
        "score", help="CLIP score (image-text cosine similarity) of every pair in shards or parquet",
        formatter_class=_formatter,
        description=HELP['score'])
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="clipforge checkpoint or run directory, or OpenAI-format weights (with --bpe)")
    p.add_argument("--pairs", required=True, help="shards (directory, brace pattern, pipe:) or parquet with image bytes")
    p.add_argument("--out", default=None,
                   help="output directory, which gets scores.parquet, as eval's gets eval.json (default: "
                        "RUN_DIR/eval, or ./eval); a path ending in .parquet is written as that file (older form)")
    p.add_argument("--bpe", default=None, help="BPE merges file for OpenAI-format weights")
    p.add_argument("--batch-size", type=int, default=256, help="pairs per batch (default: 256)")
    p.add_argument("--workers", type=int, default=2, help="image loading processes (default: 2)")
    p.set_defaults(func=stages.score, parser=p)


def _add_overlap(sub):
    p = sub.add_parser(
        "overlap", help="evaluation images the shards also hold (near-duplicates): report, exclude list, picture",
        formatter_class=_formatter, description=HELP['overlap'])
    p.add_argument("--shards", default=None, metavar="DIR", help="a shard set (default: the demo's, data/demo/shards)")
    p.add_argument("--eval", nargs="+", default=None, metavar="DIR",
                   help="evaluation sets: ImageFolder trees or directories of labelled shards "
                        "(default: the demo world's held-out sets)")
    p.add_argument("--out", default=None, metavar="DIR", help="where overlap.json, exclude.txt and overlap.png go "
                                                             "(default: overlap, or data/demo/overlap)")
    p.add_argument("--max-distance", type=int, default=None, metavar="BITS",
                   help="perceptual-hash bits (of 64) within which a shard image is a candidate copy (default: 7)")
    p.add_argument("--min-similarity", type=float, default=None, metavar="R",
                   help="how alike a candidate's pixels must be (correlation of 16x16 colour thumbnails, "
                        "-1 to 1) to count as a copy (default: 0.95)")
    p.set_defaults(func=stages.overlap, parser=p)


def _add_stats(sub):
    p = sub.add_parser(
        "stats", help="dataset report (HTML, Markdown, PNG plots, stats.json) from the stages' outputs",
        formatter_class=_formatter,
        description=HELP['stats'])
    p.add_argument("--data", nargs="+", default=None, metavar="DIR",
                   help="stage output directories (queries/, pairs/, shards/, an overlap directory) or a "
                        "directory holding them")
    p.add_argument("--out", default=None, help="report directory (default: reports, or data/demo/reports)")
    p.add_argument("--samples", type=int, default=36, help="samples on the contact sheet (default: 36)")
    p.add_argument("--seed", type=int, default=0, help="seed of the contact sheet's sample (default: 0)")
    p.set_defaults(func=stages.stats, parser=p)


def _add_demo(sub):
    p = sub.add_parser("demo", help="run every stage on an offline demo web (generate, serve, ...)",
                       formatter_class=_formatter, description=HELP['demo'])
    p.add_argument("--world", type=Path, default=DEFAULT_WORLD, help="world directory (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default: %(default)s)")
    p.add_argument("--size", type=int, default=chain.DEMO_WORLD_SIZE, help="distinct images in the world (default: %(default)s)")
    p.add_argument("--fresh", action="store_true", help="rebuild everything instead of reusing finished stages")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"training epochs of the tiny model (default: {chain.DEMO_TRAIN['epochs']}; a finished run is reused unless --fresh)")
    p.set_defaults(func=lambda a: chain.run_chain(a.world, a.seed, a.size, a.fresh, a.epochs), parser=p)
    acts = p.add_subparsers(title="actions", metavar="ACTION", parser_class=_Parser)

    g = acts.add_parser("generate", help="write a demo world to a directory", formatter_class=_formatter,
                        description=HELP['demo generate'])
    g.add_argument("--out", type=Path, default=DEFAULT_WORLD, help="output directory (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    g.add_argument("--size", type=int, default=chain.DEMO_WORLD_SIZE, help="number of distinct images (default: %(default)s)")
    g.add_argument("--port", type=int, default=0,
                   help="loopback port every URL in the world points at; 0 picks a free one (default)")
    g.add_argument("--heldout-per-class", type=int, default=20,
                   help="held-out images per class for zero-shot eval (default: %(default)s)")
    g.add_argument("--force", action="store_true", help="rebuild even if an identical world exists")
    g.set_defaults(func=lambda a: chain.generate(a.out, a.seed, a.size, a.port, a.heldout_per_class, a.force) and 0,
                   parser=g)

    ww = acts.add_parser("worldwide", help="worldwide curation on the demo web: a list per language, crawl "
                         "--worldwide, the per-language report (data/demo/worldwide/)", formatter_class=_formatter)
    ww.add_argument("--world", type=Path, default=DEFAULT_WORLD, help="world directory (default: %(default)s)")
    ww.add_argument("--fresh", action="store_true", help="rebuild the worldwide outputs")
    ww.set_defaults(func=lambda a: chain.run_worldwide(a.world, a.fresh), parser=ww)

    s = acts.add_parser("serve", help="serve a demo world on loopback until Ctrl-C", formatter_class=_formatter,
                        description=HELP['demo serve'])
    s.add_argument("--world", type=Path, default=DEFAULT_WORLD, help="world directory (default: %(default)s)")
    s.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default: %(default)s)")
    s.add_argument("--port", type=int, default=None, help="port (default: the one the world was generated for)")
    s.set_defaults(func=lambda a: chain.serve(a.world, a.host, a.port), parser=s)


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
    _add_overlap(sub)
    _add_demo(sub)
    return p


def flag_defaults(command):
    """The flag values of ``command`` given no arguments: what the stage does in the demo mode."""
    return build_parser().parse_args([command])


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "beam", False):
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    _quiet_logging()
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        if getattr(args, "beam", False):
            from clipforge.beam import unknown_beam_flags

            unknown = unknown_beam_flags(extra)
            if unknown:
                args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
            return args.func(args, extra)
        return args.func(args)
    except UserError as e:
        # One line: a message that spans lines (DataLoader re-raising a worker's error with its traceback)
        # ends in the worker's "module.Class: message".
        lines = [x for x in str(e).splitlines() if x.strip()] or [type(e).__name__]
        print(f"clipforge: error: {lines[-1].split(f'{type(e).__name__}: ')[-1]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clipforge: interrupted", file=sys.stderr)
        return 130
