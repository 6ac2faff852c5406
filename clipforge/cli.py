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


# --- stages not built yet ---------------------------------------------------------------------

_PENDING = {
    "queries": ("build CLIP's query list from Wikipedia, pageviews and WordNet (Apache Beam)",
                "Reads MediaWiki XML dumps, plain-text corpora, Wikimedia pageview files, WordNet and\n"
                "an existing MetaCLIP metadata.json; writes queries.parquet, metadata.json and\n"
                "queries_stats.json.", 3),
    "crawl": ("web archives and URL lists -> cleaned, language-identified, query-matched, balanced pairs",
              "Reads Common Crawl WAT/WARC files and parquet/CSV/TSV/JSONL URL lists; writes\n"
              "pairs-*.parquet (an img2dataset-compatible URL list) and crawl_stats.json.", 4),
    "shard": ("fetch images safely and pack them as WebDataset tar shards",
              "Fetches every pair's image over HTTP with byte caps, deadlines and an SSRF guard,\n"
              "resizes it and writes NNNNNN.tar, NNNNNN.parquet, sizes.json and shard_stats.json.", 5),
    "train": ("contrastive CLIP pretraining on WebDataset shards (CPU, one GPU, or torchrun)",
              "Streams shards, trains a CLIP model (ViT or ResNet image tower, Transformer text\n"
              "tower) and writes checkpoints and metrics.jsonl to a run directory.", 6),
    "eval": ("zero-shot classification and retrieval of a CLIP checkpoint",
             "Zero-shot top-1/top-5 accuracy on an ImageFolder or WebDataset test set and\n"
             "image<->text recall@k on held-out shards.", 7),
    "stats": ("dataset report (HTML, Markdown, PNG plots, stats.json) from the stages' outputs",
              "Funnels, per-query counts before and after balancing, languages, sizes, failures\n"
              "and a contact sheet of samples.", 8),
}


def _add_pending(sub, name):
    summary, detail, issue = _PENDING[name]
    p = sub.add_parser(name, help=summary, description=f"{summary}.\n\n{detail}\n\n"
                       f"Not built yet: this stage arrives with issue {issue}.", formatter_class=_formatter)
    p.set_defaults(func=lambda a, n=name, i=issue: _pending(n, i), pending=True)


def _pending(name, issue):
    print(f"clipforge {name}: this stage is not built yet (issue {issue}); see README.md for what works today",
          file=sys.stderr)
    return 3


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
    from clipforge.demo.server import DemoServer
    from clipforge.demo.world import load_manifest

    gen = argparse.Namespace(out=a.world, seed=a.seed, size=a.size, port=0, heldout_per_class=20, force=a.fresh)
    _demo_generate(gen)
    m = load_manifest(a.world)
    import requests

    with DemoServer(a.world) as srv, requests.Session() as s:
        ok = sum(s.get(srv.url(f"pages/p{p:05d}.html"), timeout=5).status_code == 200
                 for p in range(m["counts"]["pages"]))
        print(f"demo web up at {srv.base_url}/: {ok}/{m['counts']['pages']} pages answer")
    pending = ["queries", "crawl", "shard", "stats", "train", "eval"]
    print(f"clipforge demo: the stages after the demo web are not built yet ({', '.join(pending)})",
          file=sys.stderr)
    return 3


def _add_demo(sub):
    p = sub.add_parser("demo", help="run every stage on an offline demo web (generate, serve, ...)",
                       formatter_class=_formatter, description=(
                           "The demo web: a generated, deterministic world of pages, images, WARC/WAT\n"
                           "files, a URL list, a Wikipedia-format dump, pageviews and a WordNet lexicon,\n"
                           "served on 127.0.0.1. With no action, run the whole chain on it."))
    p.add_argument("--world", type=Path, default=DEFAULT_WORLD, help="world directory (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default: %(default)s)")
    p.add_argument("--size", type=int, default=4000, help="distinct images in the world (default: %(default)s)")
    p.add_argument("--fresh", action="store_true", help="rebuild everything instead of reusing finished stages")
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


def build_parser():
    p = _Parser(prog="clipforge", formatter_class=_formatter,
                description="clipforge: build CLIP-style image-text datasets from the web and train CLIP on them.",
                epilog=EXAMPLES)
    p.add_argument("--version", action="version", version=f"clipforge {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    for name in ("queries", "crawl", "shard", "stats", "train", "eval"):
        _add_pending(sub, name)
    _add_demo(sub)
    return p


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "pending", False):
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    from clipforge.schemas.validate import SchemaError

    try:
        return args.func(args)
    except (UserError, SchemaError, FileNotFoundError, OSError, ValueError) as e:
        print(f"clipforge: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clipforge: interrupted", file=sys.stderr)
        return 130
