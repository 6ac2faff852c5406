"""The demo: every stage on the demo web, and the defaults a stage takes when run with no inputs.

A stage run with no inputs works on the demo web (data/demo/): it builds what it reads if that is
missing (the world, then the query list, the pairs, the shards), and some of its flags default to
values sized for the small demo web. Those flags default to None on the command line;
``pick_defaults`` picks the regular or the demo value only where the user gave none.
"""

import argparse
import json
import shutil
import time
from pathlib import Path

from clipforge.errors import UserError

DEFAULT_WORLD = Path("data/demo/world")
DEMO_QUERIES = Path("data/demo/queries")
DEMO_PAIRS = Path("data/demo/pairs")
DEMO_SHARDS = Path("data/demo/shards")
DEMO_REPORTS = Path("data/demo/reports")
DEMO_OVERLAP = Path("data/demo/overlap")
DEMO_RUN = Path("data/demo/runs/tiny")
# Distinct images on the demo web. The tiny model memorises a small web (shape top-1 stalls near
# 67% on 4,000 images however long it trains); twice the images gave 73% at the same steps.
DEMO_WORLD_SIZE = 16000

# Bigram PMI in the demo corpus peaks near 9 (log2), so CLIP's threshold of 30 would keep none.
DEMO_MIN_PMI = 3.0
# The demo web is small: a cap of 400 pairs per query still balances its head queries (the stop
# words, the colours and the shapes) but drops only about 1,900 of the 13,300 matched links, since a
# link goes only when each query it names passes it over. At 200 it dropped 5,000, and the tiny model
# learned shapes from 8,100 samples instead of 11,000 (78% held-out shape top-1 against 80-82% at
# the same steps; README, "The demo's recipe").
DEMO_MAX_PER_QUERY = 400
DEMO_IMAGE_SIZE = 64
DEMO_SAMPLES_PER_SHARD = 1000

# Flags whose default depends on the mode: (regular, demo).
MODE_DEFAULTS = {
    "min_pmi": (30.0, DEMO_MIN_PMI),
    "max_per_query": (20_000, DEMO_MAX_PER_QUERY),
    "image_size": (256, DEMO_IMAGE_SIZE),
    "samples_per_shard": (10_000, DEMO_SAMPLES_PER_SHARD),
}
# train's, keyed by TrainConfig's field names. The demo's tiny run: seven to ten minutes on two CPU cores.
# Its recipe was measured on the demo world (README, Training, "The demo's recipe"): width 16 and 12
# epochs (about 1,000 steps) of centre crops on the 16,000-image web's 11,000 samples reach 80-82%
# held-out shape top-1 (three runs).
TRAIN_DEFAULTS = {"model": "ViT-B-32", "batch_size": 256, "epochs": 1, "lr": 5e-4, "weight_decay": 0.2, "augment": True,
                  "save_every": 500, "log_every": 10}
DEMO_TRAIN = {"model": "tiny", "batch_size": 128, "epochs": 12, "lr": 1e-3, "weight_decay": 0.1, "augment": False,
              "save_every": 100, "log_every": 20}


def pick_defaults(a, demo):
    """A copy of the flag values ``a`` with every mode-dependent flag left None (not given) set to
    its regular or, with ``demo``, its demo default. A value the user gave is kept, however written."""
    a = argparse.Namespace(**vars(a))
    for name, (regular, demo_value) in MODE_DEFAULTS.items():
        if getattr(a, name, 0) is None:
            setattr(a, name, demo_value if demo else regular)
    return a


def default_help(name, unit=""):
    regular, demo = MODE_DEFAULTS[name]
    return f"(default: {regular:,}{unit}; demo {demo:,}{unit})"


# --- what a stage run on the demo web reads, built when missing -----------------------------------

def ensure_world(world=DEFAULT_WORLD):
    if not (Path(world) / "manifest.json").exists():
        generate(Path(world))
    return Path(world)


def _flags(command):
    """The flag values of ``command`` run with no arguments (the demo mode), as the parser defines them."""
    from clipforge.cli import flag_defaults

    return flag_defaults(command)


def ensure_queries():
    from clipforge import stages

    if not (DEMO_QUERIES / "queries.parquet").exists():
        stages.queries(_flags("queries"), [])


def ensure_pairs():
    from clipforge import stages

    if not (DEMO_PAIRS / "crawl_stats.json").exists():
        stages.crawl(_flags("crawl"), [])


def ensure_shards(marker="sizes.json"):
    from clipforge import stages

    if not (DEMO_SHARDS / marker).exists():
        stages.shard(_flags("shard"), [])


# --- demo generate, demo serve, demo (the chain) --------------------------------------------------

def generate(out=DEFAULT_WORLD, seed=0, size=DEMO_WORLD_SIZE, port=0, heldout_per_class=20, force=False):
    from clipforge.demo.world import GENERATOR_VERSION, WorldConfig, load_manifest
    from clipforge.demo.world import generate as write_world

    if size < 20:
        raise UserError(f"--size must be at least 20, got {size}")
    if not 0 <= port < 65536:
        raise UserError(f"--port must be between 0 and 65535, got {port}")
    if (out / "manifest.json").exists() and not force:
        m = load_manifest(out)
        same = (m.get("generator_version"), m["seed"], m["size"]) == (GENERATOR_VERSION, seed, size)
        if same and (port in (0, m["port"])):
            print(f"demo world already at {out} (seed {seed}, size {size}, {m['base_url']}); --force to rebuild")
            return False
    t = time.time()
    print(f"generating the demo world: seed {seed}, {size} images -> {out}", flush=True)
    m = write_world(WorldConfig(out=out, seed=seed, size=size, port=port, heldout_per_class=heldout_per_class))
    c = m["counts"]
    print(f"  {c['images']} images on {c['pages']} pages ({c['img_tags']} <img> tags), "
          f"{len(m['messy'])} messy cases, {c['wiki_articles']} wiki articles, "
          f"{c['heldout_shape']}+{c['heldout_colour']} held-out images")
    print(f"  base URL {m['base_url']}; done in {time.time() - t:.1f} s")
    return True


def serve(world=DEFAULT_WORLD, host="127.0.0.1", port=None):
    from clipforge.demo.server import DemoServer

    DemoServer(world, host=host, port=port).serve_until_signal()
    return 0


def run_chain(world=DEFAULT_WORLD, seed=0, size=DEMO_WORLD_SIZE, fresh=False, epochs=None):
    """Every stage on the demo web, reusing finished ones: the README's first command."""
    from clipforge import stages
    from clipforge.demo.server import DemoServer
    from clipforge.demo.world import load_manifest

    if Path(world) != DEFAULT_WORLD:
        raise UserError(f"the chain runs on {DEFAULT_WORLD}; for another world use `clipforge demo generate --out`")
    if epochs is not None and epochs < 1:
        raise UserError("--epochs must be positive")
    t0 = time.time()
    downstream = (DEMO_QUERIES, DEMO_PAIRS, DEMO_SHARDS, DEMO_OVERLAP, DEMO_REPORTS, DEMO_RUN)
    if fresh:
        for d in downstream:
            shutil.rmtree(d, ignore_errors=True)
    banner = lambda n, what: print(f"\n== [{n}/8] {what} ({_elapsed(t0)}) ==", flush=True)   # noqa: E731
    banner(1, "demo web")
    if generate(Path(world), seed=seed, size=size, force=fresh):  # a new world: nothing made from the old one stays
        for d in downstream:
            shutil.rmtree(d, ignore_errors=True)
    m = load_manifest(world)
    import requests

    with DemoServer(world) as srv, requests.Session() as s:
        ok = sum(s.get(srv.url(f"pages/p{p:05d}.html"), timeout=5).status_code == 200
                 for p in range(m["counts"]["pages"]))
        print(f"demo web up at {srv.base_url}/: {ok}/{m['counts']['pages']} pages answer")
    # Each stage is reused when its outputs exist (--fresh starts over); shard and train resume by themselves.
    banner(2, "query list")
    if not (DEMO_QUERIES / "queries_stats.json").exists():
        stages.queries(_flags("queries"), [])
    else:
        print(f"queries: reusing {DEMO_QUERIES}")
    banner(3, "crawl")
    if not (DEMO_PAIRS / "crawl_stats.json").exists():
        stages.crawl(_flags("crawl"), [])
    else:
        print(f"crawl: reusing {DEMO_PAIRS}")
    banner(4, "shard")
    stages.shard(_flags("shard"), [])
    banner(5, "overlap with the held-out sets")
    stages.overlap(_flags("overlap"))
    planted_report(m)
    banner(6, "stats")
    stages.stats(_flags("stats"))
    banner(7, "train")
    train = _flags("train")
    train.epochs = epochs
    if (DEMO_RUN / "train_stats.json").exists():
        print(f"train: reusing {DEMO_RUN} (finished)")
    else:
        from clipforge.trainer.checkpoint import latest_checkpoint

        if latest_checkpoint(DEMO_RUN) is not None:
            print(f"train: resuming {DEMO_RUN}")
            train.resume = "latest"
        stages.train(train)
    banner(8, "zero-shot eval")
    stages.evaluate(_flags("eval"))
    results = json.loads((DEMO_RUN / "eval" / "eval.json").read_text())["results"]
    print(f"\nclipforge demo: done in {_elapsed(t0)}. Outputs:")
    for what, where in (("demo web", world), ("query list", DEMO_QUERIES), ("pairs", DEMO_PAIRS),
                        ("shards", DEMO_SHARDS), ("overlap", DEMO_OVERLAP / "overlap.json"),
                        ("report", DEMO_REPORTS / "report.html"),
                        ("run", DEMO_RUN), ("eval", DEMO_RUN / "eval" / "eval.json")):
        print(f"  {what:<11} {where}")
    for name, r in results.items():
        print(f"zero-shot {name}: top-1 {100 * r['top1']:.1f}% on {r['samples']} held-out images "
              f"({r['classes']} classes, chance {100 * r['chance_top1']:.1f}%, {r['top1'] / r['chance_top1']:.1f}x chance)")
        if r.get("clean", {}).get("samples"):
            c = r["clean"]
            print(f"zero-shot {name}, clean: top-1 {100 * c['top1']:.1f}% on the {c['samples']} held-out images "
                  f"without a copy in the shards ({c['overlapping']} had one; the run trained without those copies)")
    return 0


DEMO_WORLDWIDE = Path("data/demo/worldwide")


def run_worldwide(world=DEFAULT_WORLD, fresh=False):
    """Worldwide curation on the demo web (MetaCLIP 2): a list per language from the English and
    the de, fr, es, ja sources, the crawl matching each alt against its own language's list and
    balancing each language at its own t, and the report with the per-language table."""
    from clipforge import stages

    t0 = time.time()
    queries, pairs, reports = (DEMO_WORLDWIDE / d for d in ("queries", "pairs", "reports"))
    world = Path(world)
    if fresh or not (world / "manifest.json").exists():
        shutil.rmtree(DEMO_WORLDWIDE, ignore_errors=True)
    ensure_world(world)
    banner = lambda n, what: print(f"\n== [{n}/3] {what} ({_elapsed(t0)}) ==", flush=True)   # noqa: E731
    banner(1, "query lists, one per language")
    q = _flags("queries")
    q.wiki = [str(world / "wiki" / "*.bz2"), str(world / "worldwide" / "wiki" / "*.bz2")]
    q.pageviews = [str(world / "pageviews" / "*.gz"), str(world / "worldwide" / "pageviews" / "*.gz")]
    q.wordnet = [str(world / "wordnet" / "noun.demo.yaml"), str(world / "worldwide" / "wordnet" / "omw-demo.xml")]
    q.langs, q.out, q.min_pmi = "all", str(queries), DEMO_MIN_PMI
    stages.queries(q, [])
    banner(2, "crawl, worldwide")
    c = _flags("crawl")
    c.input = [str(world / "crawl" / "*.wat.gz")]
    c.queries, c.out, c.worldwide, c.max_per_query = str(queries), str(pairs), True, DEMO_MAX_PER_QUERY
    stages.crawl(c, [])
    banner(3, "stats")
    s = _flags("stats")
    s.data, s.out = [str(queries), str(pairs)], str(reports)
    stages.stats(s)
    print(f"\nclipforge demo worldwide: done in {_elapsed(t0)}; report {reports / 'report.html'}")
    return 0


def planted_report(manifest, shards=DEMO_SHARDS, overlap=DEMO_OVERLAP):
    """How the world's planted overlap fared: published, reached the shards, found by the overlap
    search. Returns (planted, in shards, found); a planted image in the shards that the search
    missed is an error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    urls = {p["url"] for p in manifest.get("planted", [])}
    index = pa.concat_tables(pq.read_table(p, columns=["url", "key", "status"]) for p in sorted(shards.glob("0*.parquet")))
    in_shards = {r["key"] for r in index.to_pylist() if r["url"] in urls and r["status"] == "success"}
    found = set((overlap / "exclude.txt").read_text().split())
    missed = in_shards - found
    print(f"overlap: the world planted {len(urls)} held-out images on its pages; {len(in_shards)} reached the shards "
          f"(the others were balanced out or failed like any pair), {len(in_shards & found)} of them found")
    if missed:
        raise RuntimeError(f"the overlap search missed planted held-out images in the shards: {sorted(missed)}")
    return len(urls), len(in_shards), len(in_shards & found)


def _elapsed(t0):
    s = int(time.time() - t0)
    return f"{s // 60}m{s % 60:02d}s"
