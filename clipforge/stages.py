"""The stages as functions: flag values -> the stage's config (``*_config``), config -> a run with its
summary line (``run_*``). The command line (clipforge.cli) and the demo chain (clipforge.demo.chain)
both call them; ``queries(a, beam_flags)`` and the others do both steps, and with no inputs first
build what the demo mode reads.

``a`` is an argparse.Namespace of the stage's flags (clipforge.cli.flag_defaults gives the defaults).
A bad value raises clipforge.errors.UserError.
"""

import os
import sys
import time
from pathlib import Path

from clipforge.demo import chain
from clipforge.errors import UserError

# --- queries --------------------------------------------------------------------------------------


def queries_config(a):
    """The QueriesConfig of flag values ``a``; with no inputs, the demo web's (its demo defaults)."""
    from clipforge.queries.pipeline import QueriesConfig

    inputs = dict(wiki=a.wiki, text=a.text, pageviews=a.pageviews, wordnet=a.wordnet, metadata=a.metadata)
    demo = not any(inputs.values())
    a = chain.pick_defaults(a, demo)
    if demo:
        world = chain.DEFAULT_WORLD
        inputs = dict(wiki=[str(world / "wiki" / "*.xml.bz2")], text=[],
                      pageviews=[str(world / "pageviews" / "*.gz")], wordnet=[str(world / "wordnet" / "*.yaml")],
                      metadata=[])
    thresholds = dict(min_count=a.min_count, min_bigram_count=a.min_bigram_count, min_pmi=a.min_pmi,
                      min_views=a.min_views, max_entries=a.max_entries)
    for name in ("min_count", "min_views", "max_entries", "min_bigram_count"):
        if thresholds[name] is not None and thresholds[name] < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative")
    langs = getattr(a, "langs", "en") or "en"
    langs = "all" if langs.strip() == "all" else tuple(x.strip() for x in langs.split(",") if x.strip())
    default_lang = getattr(a, "default_lang", None) or (langs[0] if langs != "all" and len(langs) == 1 else "en")
    return QueriesConfig(**inputs, out=a.out or str(chain.DEMO_QUERIES if demo else "data/queries"), **thresholds,
                         pageview_domains=tuple(d for d in (a.pageview_domains or "").split(",") if d),
                         max_page_chars=a.max_page_chars, max_page_markup=a.max_page_markup,
                         rules=getattr(a, "rules", "clip"), langs=langs, default_lang=default_lang)


def queries(a, beam_flags):
    cfg = queries_config(a)
    if not any((a.wiki, a.text, a.pageviews, a.wordnet, a.metadata)):
        world = chain.ensure_world()
        print(f"queries: building the demo web's list from {world} (min PMI {cfg.min_pmi})")
    return run_queries(cfg, beam_flags)


def run_queries(cfg, beam_flags=()):
    from clipforge.queries.stage import run

    t = time.time()
    stats = run(cfg, list(beam_flags))
    skipped = stats["extra"].get("corpus", {}).get("wiki_pages_skipped", {})
    if sum(skipped.values()):
        print("queries: wiki pages skipped: " + ", ".join(f"{k} {v:,}" for k, v in skipped.items() if v),
              file=sys.stderr)
    src = stats["extra"]["sources"]
    langs = stats["extra"].get("languages", {})
    files = "metadata.json, metadata/" if len(stats["extra"].get("langs", [])) == 1 else "metadata/"
    print(f"queries: {stats['kept']:,} entries -> {cfg.out}/queries.parquet, {files}{{lang}}.json ("
          + ", ".join(f"{s} {v['kept']:,}" for s, v in src.items() if v["candidates"])
          + f"); {stats['input']:,} candidates, {time.time() - t:.1f} s; rules {cfg.rules}")
    if len(langs) > 1:
        print("queries: per language: " + ", ".join(f"{k} {v['kept']:,}" for k, v in langs.items()))
    corpus = stats["extra"]["corpus"]
    if corpus["wiki_files_broken"]:
        print(f"queries: warning: {corpus['wiki_files_broken']} dump file(s) broke off; "
              "their pages before the break were counted", file=sys.stderr)
    return 0


# --- crawl ----------------------------------------------------------------------------------------

def columns(a):
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


def progress_every(a):
    if a.progress_every <= 0 and not a.quiet:
        raise UserError("--progress-every must be positive (--quiet turns progress off)")
    return 0.0 if a.quiet else a.progress_every


def crawl_config(a):
    """The CrawlConfig of flag values ``a`` (its inputs expanded, its query list read); with no
    --input, the demo web's WAT file and query list (which must exist: see ``crawl``)."""
    from clipforge import limits
    from clipforge.pipeline.captions import RAW_FACTOR
    from clipforge.pipeline.crawl import CrawlConfig
    from clipforge.pipeline.crawl_stage import expand_inputs, load_queries, load_query_lists

    demo = not a.input
    a = chain.pick_defaults(a, demo)
    inputs, queries_path = a.input, a.queries
    if demo:
        inputs = [str(chain.DEFAULT_WORLD / "crawl" / "*.wat.gz")]
        queries_path = queries_path or str(chain.DEMO_QUERIES)
    if queries_path is None:
        raise UserError("--queries is required with --input (a queries directory, queries.parquet or metadata.json)")
    if a.max_per_query < 1 or a.rows_per_file < 1 or a.min_text_chars < 0 or a.max_text_chars < a.min_text_chars:
        raise UserError("--max-per-query and --rows-per-file must be positive, and --min-text-chars <= --max-text-chars")
    if a.max_text_chars > limits.MAX_RAW_TEXT_CHARS // RAW_FACTOR:
        raise UserError(f"--max-text-chars is at most {limits.MAX_RAW_TEXT_CHARS // RAW_FACTOR:,} "
                        f"(texts are read up to {limits.MAX_RAW_TEXT_CHARS:,} characters)")
    if a.max_page_bytes is not None and not 4096 <= a.max_page_bytes <= limits.MAX_WARC_MEMBER_BYTES // 2:
        raise UserError(f"--max-page-bytes must be between 4096 and {limits.MAX_WARC_MEMBER_BYTES // 2:,}")
    worldwide = getattr(a, "worldwide", False)
    lang = a.lang if a.lang is not None else ("all" if worldwide else "en")
    langs = () if lang.strip().lower() == "all" else tuple(x.strip() for x in lang.split(",") if x.strip())
    if worldwide:
        from clipforge.schemas.languages import metadata_lang

        bad = [x for x in langs if metadata_lang(x, "wiki") is None]
        if bad:
            raise UserError(f"--lang {','.join(bad)}: not a language code")
        langs = tuple(metadata_lang(x, "wiki") for x in langs)
    cols = columns(a)
    lists = {"lang_queries": load_query_lists(queries_path)} if worldwide else {"queries": load_queries(queries_path)}
    return CrawlConfig(inputs=expand_inputs(inputs), **lists,
                       out=a.out or str(chain.DEMO_PAIRS if demo else "data/pairs"),
                       max_per_query=a.max_per_query, langs=langs, min_lang_score=a.min_lang_score, seed=a.seed,
                       **cols, min_text_chars=a.min_text_chars, max_text_chars=a.max_text_chars,
                       rows_per_file=a.rows_per_file, progress_every=progress_every(a),
                       **({"max_page_bytes": a.max_page_bytes} if a.max_page_bytes else {}))


def crawl(a, beam_flags):
    if not a.input:
        chain.ensure_world()
        if a.queries is None:
            chain.ensure_queries()
    cfg = crawl_config(a)
    if not a.input:
        print(f"crawl: the demo web's WAT file, max {cfg.max_per_query} pairs per query")
    return run_crawl(cfg, beam_flags)


def run_crawl(cfg, beam_flags=()):
    from clipforge.pipeline.crawl_stage import run

    s = run(cfg, list(beam_flags))
    top = ", ".join(f"{k} {v:,}" for k, v in list(s["dropped"].items())[:5])
    print(f"crawl: {s['kept']:,} of {s['input']:,} image links kept -> {cfg.out}/pairs-*.parquet "
          f"({top}); {s['extra']['seconds']} s")
    return 0


# --- shard ----------------------------------------------------------------------------------------

def shard_config(a):
    """(ShardConfig, number of pairs) of flag values ``a``; with no --pairs, the demo web's pairs
    (which must exist: see ``shard``), fetched from the demo server."""
    from clipforge.pipeline.fetch import DEFAULT_USER_AGENT
    from clipforge.pipeline.images import ImageConfig
    from clipforge.pipeline.shard import ShardConfig
    from clipforge.pipeline.shard_stage import expand_pairs

    demo = not a.pairs
    a = chain.pick_defaults(a, demo)
    pairs, allow = (a.pairs, a.allow_private_hosts) if not demo else ([str(chain.DEMO_PAIRS)], True)
    for name in ("image_size", "threads", "per_host", "max_bytes"):
        if getattr(a, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if a.min_size < 0 or a.image_threads < 0:
        raise UserError("--min-size and --image-threads must not be negative")
    if a.near_dup_distance is not None and not 0 <= a.near_dup_distance <= 32:
        raise UserError("--near-dup-distance must be 0 to 32 bits (of 64)")
    if a.samples_per_shard < 1 or a.deadline <= 0 or a.timeout <= 0 or a.max_aspect_ratio < 1:
        raise UserError("--samples-per-shard, --deadline and --timeout must be positive, --max-aspect-ratio >= 1")
    cols = columns(a)
    items, n = expand_pairs(pairs, cols["url_col"], cols["text_col"], cols["page_col"], a.no_header)
    if a.downloader == "img2dataset" and any(not path.endswith(".parquet") for path, _ in items):
        raise UserError("--downloader img2dataset takes parquet pairs; give it the crawl's pairs or a parquet URL "
                        "list (or shard CSV/TSV/JSONL lists with the default downloader)")
    cfg = ShardConfig(inputs=items, out=a.out or str(chain.DEMO_SHARDS if demo else "data/shards"),
                      samples_per_shard=a.samples_per_shard, seed=a.seed,
                      image=ImageConfig(image_size=a.image_size, resize_mode=a.resize_mode.replace("-", "_"),
                                        min_size=a.min_size, max_aspect_ratio=a.max_aspect_ratio,
                                        max_pixels=a.max_pixels),
                      threads=a.threads, image_threads=a.image_threads, near_dup_distance=a.near_dup_distance,
                      per_host=a.per_host,
                      connect_timeout=a.timeout, read_timeout=a.timeout,
                      deadline=a.deadline, max_bytes=a.max_bytes, retries=a.retries,
                      user_agent=a.user_agent or DEFAULT_USER_AGENT, allow_private=allow,
                      respect_noai=not a.ignore_noai, **cols, progress_every=progress_every(a))
    return cfg, n


def shard(a, beam_flags):
    import contextlib

    server = contextlib.nullcontext()
    if not a.pairs:
        from clipforge.demo.server import DemoServer

        world = chain.ensure_world()
        chain.ensure_pairs()
        server = DemoServer(world)
    cfg, n = shard_config(a)
    if not a.pairs:
        print(f"shard: the demo web's pairs, served at {server.base_url}/ meanwhile, {cfg.image.image_size}px images")
    with server:
        return run_shard(cfg, n, beam_flags, downloader=a.downloader)


def run_shard(cfg, n, beam_flags=(), downloader="clipforge"):
    from clipforge.pipeline.shard_stage import run

    print(f"shard: {n:,} pairs -> about {max(1, -(-n // cfg.samples_per_shard))} shard(s) in {cfg.out}", flush=True)
    if downloader == "img2dataset":
        from clipforge.pipeline import img2dataset_downloader

        s = img2dataset_downloader.run(cfg, list(beam_flags))
    else:
        s = run(cfg, n, list(beam_flags))
    top = ", ".join(f"{k} {v:,}" for k, v in list(s["dropped"].items())[:6])
    reused = f" ({s['extra']['shards_reused']} reused)" if "shards_reused" in s["extra"] else ""
    print(f"shard: {s['kept']:,} of {s['input']:,} pairs have an image in {s['extra']['shards']} shard(s)"
          f"{reused} ({top}); {s['extra'].get('seconds', '')} s")
    return 0


# --- train ----------------------------------------------------------------------------------------

def train_config(a):
    """The TrainConfig of flag values ``a``; with no --train-data, the demo's tiny run on the demo shards."""
    from clipforge.trainer.train import TrainConfig

    demo = a.train_data is None
    defaults = dict(chain.DEMO_TRAIN, train_data=str(chain.DEMO_SHARDS), out=str(chain.DEMO_RUN)) if demo \
        else chain.TRAIN_DEFAULTS
    eval_data = a.eval_data
    if demo and a.eval_every and eval_data is None:
        eval_data = str(chain.DEFAULT_WORLD / "heldout" / "shape")
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
    objective = getattr(a, "objective", None) or "contrastive"
    out = a.out or defaults.get("out") or f"runs/{model}"
    if not a.out and objective != "contrastive":    # beside the contrastive run, not into it
        out = f"{out}-{objective}"
    cfg = TrainConfig(
        train_data=a.train_data or defaults["train_data"], out=out,
        model=model, objective=objective, batch_size=pick(a.batch_size, "batch_size"), accum_steps=a.accum_steps,
        epochs=pick(a.epochs, "epochs"), steps=a.steps, lr=pick(a.lr, "lr"), weight_decay=pick(a.wd, "weight_decay"),
        warmup=a.warmup, grad_clip=a.grad_clip, seed=a.seed, workers=a.workers, resampled=a.resampled,
        samples_per_epoch=a.samples_per_epoch, shuffle_buffer=a.shuffle_buffer, augment=pick(a.augment, "augment"),
        precision=a.precision, grad_checkpointing=a.grad_checkpointing, compile=a.compile, quick_gelu=not a.gelu,
        resume=a.resume, init_from=a.init_from, bpe=a.bpe, vocab_size=a.vocab_size,
        save_every=pick(a.save_every, "save_every"), keep=a.keep, log_every=pick(a.log_every, "log_every"),
        eval_every=a.eval_every, eval_data=eval_data, tensorboard=not a.no_tensorboard, dist_timeout=a.dist_timeout,
        exclude=a.exclude or (str(chain.DEMO_OVERLAP / "exclude.txt")
                              if demo and (chain.DEMO_OVERLAP / "exclude.txt").exists() else None))
    if cfg.batch_size % cfg.accum_steps:
        raise UserError(f"--batch-size {cfg.batch_size} does not split into --accum-steps {cfg.accum_steps} micro-batches")
    if a.eval_every and not cfg.eval_data:
        raise UserError("--eval-every needs --eval-data")
    return cfg


def train(a):
    if a.train_data is None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (chain.DEMO_SHARDS / "sizes.json").exists():
            raise UserError(f"the demo's shards ({chain.DEMO_SHARDS}) are not made yet, and {os.environ['WORLD_SIZE']} "
                            f"ranks would all make them at once: run `make train` (one process) or `clipforge "
                            f"demo` first, then torchrun")
        chain.ensure_shards("sizes.json")
    if getattr(a, "learn_bpe_only", False):
        from clipforge.trainer.train import learn_bpe

        learn_bpe(train_config(a))
        return 0
    return run_train(train_config(a))


def run_train(cfg):
    from clipforge.trainer.train import train as run

    run(cfg)
    return 0


# --- eval and score -------------------------------------------------------------------------------

def eval_config(a):
    """The EvalConfig of flag values ``a``; with no --checkpoint, the demo run on the demo's held-out sets."""
    from clipforge.trainer.evaluate import EvalConfig

    demo = a.checkpoint is None
    if demo and not (chain.DEMO_RUN / "checkpoints").is_dir():
        raise UserError(f"no demo run in {chain.DEMO_RUN} yet: `make train` (or `make demo`) trains one; "
                        "or pass --checkpoint")
    folders = a.imagefolder
    if demo and not (folders or a.wds or a.retrieval):
        folders = [str(chain.DEFAULT_WORLD / "heldout" / "shape"), str(chain.DEFAULT_WORLD / "heldout" / "colour")]
    if not (folders or a.wds or a.retrieval):
        raise UserError("nothing to evaluate: pass --imagefolder, --wds or --retrieval")
    if a.batch_size < 1 or a.workers < 0:
        raise UserError("--batch-size must be positive and --workers not negative")
    return EvalConfig(checkpoint=str(chain.DEMO_RUN) if demo else a.checkpoint, imagefolder=list(folders),
                      wds=list(a.wds), retrieval=list(a.retrieval), classnames=a.classnames, templates=a.templates,
                      bpe=a.bpe, out=a.out, batch_size=a.batch_size, workers=a.workers,
                      overlap=a.overlap or (str(chain.DEMO_OVERLAP)
                                            if demo and (chain.DEMO_OVERLAP / "overlap.json").exists() else None))


def evaluate(a):
    from clipforge.trainer.evaluate import evaluate as run
    from clipforge.trainer.zeroshot import table

    s = run(eval_config(a))
    print(table(s["results"]))
    print(f"eval: {s['checkpoint']} -> {s['out'] / 'eval.json'}"
          + (", confusion_*.png" if any("top1" in r for r in s["results"].values()) else ""))
    return 0


def score(a):
    from clipforge.trainer.score import ScoreConfig, score as run

    s = run(ScoreConfig(checkpoint=a.checkpoint, pairs=a.pairs, out=a.out, bpe=a.bpe, batch_size=a.batch_size,
                        workers=a.workers))
    q = s["quantiles"]
    skip = ", ".join(f"{k} {v}" for k, v in sorted(s["skipped"].items())) or "none"
    print(f"score: {s['pairs']:,} pairs in {s['seconds']:.1f} s ({s['pairs'] / max(s['seconds'], 1e-9):,.0f}/s); "
          f"similarity p10 {q[0]:.3f} median {q[1]:.3f} p90 {q[2]:.3f}; skipped: {skip} -> {s['out']}")
    return 0


# --- overlap --------------------------------------------------------------------------------------

def overlap(a):
    from clipforge.trainer.overlap import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_SIMILARITY, find_overlap

    demo = a.shards is None and a.eval is None
    shards = a.shards or str(chain.DEMO_SHARDS)
    evals = a.eval or [str(chain.DEFAULT_WORLD / "heldout" / "shape"), str(chain.DEFAULT_WORLD / "heldout" / "colour")]
    if a.eval is None and not demo:
        raise UserError("--eval: give the evaluation sets to compare with the shards")
    distance = DEFAULT_MAX_DISTANCE if a.max_distance is None else a.max_distance
    if not 0 <= distance <= 16:
        raise UserError("--max-distance must be 0 to 16 bits (of 64)")
    similar = DEFAULT_MIN_SIMILARITY if a.min_similarity is None else a.min_similarity
    if not -1 <= similar <= 1:
        raise UserError("--min-similarity must be between -1 and 1")
    out = a.out or str(chain.DEMO_OVERLAP if demo else "overlap")
    r = find_overlap(shards, evals, out, distance, similar, log=lambda m: print(m, file=sys.stderr))
    for name, v in r["sets"].items():
        print(f"overlap: {name}: {v['with_overlap']:,} of {v['images']:,} images have a near-duplicate in the shards "
              f"({v['overlap_fraction']:.1%})")
    print(f"overlap: {r['excluded_keys']:,} shard samples to exclude -> {out}/exclude.txt, overlap.json, overlap.png")
    return 0


# --- stats ----------------------------------------------------------------------------------------

def stats(a):
    from clipforge.stats.stage import StatsConfig, run

    data, out = a.data, a.out
    if data is None:
        chain.ensure_shards("shard_stats.json")
        data, out = ["data/demo"], out or str(chain.DEMO_REPORTS)
    if a.samples < 0:
        raise UserError("--samples must not be negative")
    s = run(StatsConfig(data=data, out=out or "reports", samples=a.samples, seed=a.seed))
    print(f"stats: report of {', '.join(s['inputs'])} in {s['seconds']} s -> {Path(out or 'reports') / 'report.html'} "
          f"(also report.md, stats.json, {len(s['plots'])} PNGs)")
    return 0
