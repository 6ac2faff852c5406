"""Crawl benchmarks.

1. Text stage (language identification + query matching, 500,000 queries) on real captions:
   clipforge's TextFilter against a MetaCLIP-style matcher with per-text fastText, one core
   each, same texts; their matches are checked identical first.
2. End to end: the Beam pipeline (FnApiRunner, 2 workers) against a plain Python loop over the
   same functions, on the demo web's WARC, WAT and URL list: the cost (or gain) of Beam.
"""

import bz2
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from bench.harness import Comparison
from bench.peer_metaclip import MetaCLIPStyle

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CLI = str(Path(sys.executable).with_name("clipforge"))
BATCH = 8192  # links per batch, as the crawl's workers take them


def query_list(n=500_000):
    """Real words and bigrams of the Wikipedia excerpt, topped up with word pairs to n entries."""
    from clipforge.queries import tokens
    from clipforge.queries.wikidump import iter_pages, wikitext_to_prose

    uni, bi = Counter(), Counter()
    dump = SHARED / "wiki" / "enwiki-pages-articles-excerpt.xml.bz2"
    if dump.exists():
        with bz2.open(dump) as f:
            for p in iter_pages(f):
                if p.ns == 0 and not p.redirect:
                    prose = wikitext_to_prose(p.text)
                    uni.update(tokens.unigrams(prose))
                    bi.update(tokens.bigrams(prose))
    from clipforge.demo import concepts

    words = [w for w, _ in uni.most_common()] + list(concepts.SHAPES) + list(concepts.COLOURS)
    queries = list(dict.fromkeys(words + [b for b, _ in bi.most_common()]))
    rng = random.Random(0)
    seen = set(queries)
    while len(queries) < n:
        q = f"{rng.choice(words)} {rng.choice(words)}"
        if q not in seen:
            seen.add(q)
            queries.append(q)
    return queries[:n]


def real_texts(world):
    from clipforge.pipeline import readers

    texts = [t["text"] for t in pq.read_table(world / "truth.parquet").to_pylist() if t["text"]]
    laion = SHARED / "pairs" / "laion-style-1000.parquet"
    if laion.exists():
        texts += [t for t in pq.read_table(laion).column("TEXT").to_pylist() if t]
    for name in ("dolma-sample-0000.warc.gz", "cc-main-2020-34-slice.warc.gz"):
        if (SHARED / "web" / name).exists():
            with open(SHARED / "web" / name, "rb") as f:
                texts += [c["text"] for c in readers.read_warc(f, name) if isinstance(c, dict) and c["text"]]
    return texts


def benchmarks(workdir):
    from clipforge.demo.world import WorldConfig, generate
    from clipforge.pipeline.textfilter import TextFilter
    from clipforge.pipeline.matching import Matcher

    workdir.mkdir(parents=True, exist_ok=True)
    world = workdir / "world"
    generate(WorldConfig(out=world, seed=0, size=4000, port=18999))
    queries = query_list()
    texts = real_texts(world)
    print(f"  {len(queries):,} queries, {len(texts):,} real captions")

    ours, peer = TextFilter(queries, langs=("en",)), MetaCLIPStyle(queries)
    matcher = Matcher(queries)
    for t in texts:  # identical matches before any timing
        assert sorted(peer.queries[i] for i in peer.match(t)) == matcher.match(t), t
    cands = [{"url": "http://127.0.0.1/i.jpg", "text": t, "page_url": None, "input_format": "urllist",
              "source_file": "bench"} for t in texts]

    urls = [c["url"] for c in cands]

    def run_ours():
        ours.cache.clear()
        for i in range(0, len(texts), BATCH):
            ours.filter_batch(urls[i:i + BATCH], texts[i:i + BATCH])

    def run_peer():
        for i in range(0, len(texts), BATCH):
            peer.batch(texts[i:i + BATCH])

    def match_ours():
        for t in texts:
            matcher.match(t)

    def match_peer():
        for t in texts:
            peer.match(t)

    qfile = workdir / "queries.json"
    qfile.write_text(json.dumps(queries))
    inputs = [str(world / "crawl" / "demo-00000.warc.gz"), str(world / "crawl" / "demo-00000.warc.wat.gz"),
              str(world / "crawl" / "urls.parquet")]
    probe = subprocess.run([sys.executable, "-m", "bench.peer_crawl_loop", str(workdir / "probe.parquet"),
                            str(qfile), *inputs], capture_output=True, text=True, check=True, cwd=ROOT)
    n_candidates = int(probe.stdout.strip().strip("()").split(",")[0])
    return [
        Comparison(name="matching only, 500k queries", ours=match_ours, peer=match_peer,
                   peer_name="MetaCLIP-style matcher", items=len(texts), unit="texts",
                   input=f"{len(texts):,} real captions", repeats=5,
                   notes="identical matches; both walk a pyahocorasick automaton, so this is the spacing and "
                         "collection code against each other"),
        Comparison(name="text stage: lid.176 + matching, 500k queries", ours=run_ours, peer=run_peer,
                   peer_name="MetaCLIP-style matcher + fastText", items=len(texts), unit="texts",
                   input=f"{len(texts):,} real captions (demo web, LAION-style list, 2 real WARCs)", repeats=5,
                   notes=("one core each, batches of 8,192 texts with one lid.176 call each on both sides; "
                          "matches checked identical on every text first. The peer only runs lid.176 and the "
                          "matcher; clipforge's text stage also validates the URL, cleans the caption (entities, "
                          "ftfy where mojibake is suspected, junk rules) and computes the pair's uid, judges each "
                          "distinct raw text once, and matches only texts in the wanted language")),
        Comparison(name="crawl end to end (Beam vs plain loop)",
                   ours=[CLI, "crawl", "--input", *inputs, "--queries", str(qfile), "--out", str(workdir / "beam")],
                   peer=[sys.executable, "-m", "bench.peer_crawl_loop", str(workdir / "loop.parquet"), str(qfile),
                         *inputs],
                   peer_name="plain Python loop, same functions", items=n_candidates, unit="candidates",
                   input=f"demo web WARC + WAT + URL list ({n_candidates:,} image links), 500k queries", repeats=2,
                   notes=("Beam on FnApiRunner with 2 worker processes against one process; both include start-up "
                          "(Beam's workers each build the 500k-entry automaton and load lid.176)")),
    ]
