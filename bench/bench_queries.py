"""Query-list throughput (MB of wikitext per second) and peak memory, at 1x and 4x the input:
clipforge's Beam pipeline (local FnApiRunner, one worker per core) against a MetaCLIP-style
single process with in-memory Counters, both from the same dump files and extraction code."""

import bz2
import shutil
import sys
from pathlib import Path

from bench.harness import Comparison

ROOT = Path(__file__).resolve().parents[1]
DUMP = ROOT.parent / "shared" / "data" / "wiki" / "enwiki-pages-articles-excerpt.xml.bz2"
CLI = str(Path(sys.executable).with_name("clipforge"))


def _wikitext_mb(path):
    from clipforge.queries.wikidump import iter_pages

    with bz2.open(path) as f:
        return sum(len(p.text.encode()) for p in iter_pages(f) if p.ns == 0 and not p.redirect) / 1e6


def benchmarks(workdir):
    if not DUMP.exists():
        print(f"  skipped: {DUMP} not present")
        return []
    workdir.mkdir(parents=True, exist_ok=True)
    mb = _wikitext_mb(DUMP)
    out = []
    for copies in (1, 4):
        files = []
        for i in range(copies):
            dst = workdir / f"enwiki-part{i}-{copies}x.xml.bz2"
            shutil.copyfile(DUMP, dst)
            files.append(str(dst))
        ours = [CLI, "queries", "--wiki", *files, "--out", str(workdir / f"ours-{copies}x"),
                "--min-count", "40", "--min-bigram-count", "20", "--min-pmi", "5", "--max-entries", "0"]
        peer = [sys.executable, "-m", "bench.peer_counter_queries", str(workdir / f"peer-{copies}x.json"), *files]
        out.append(Comparison(
            name=f"query list, {copies}x corpus", ours=ours, peer=peer, peer_name="MetaCLIP-style Counter",
            items=mb * copies, unit="MB wikitext", input=f"{copies} x enwiki excerpt ({mb * copies:.1f} MB wikitext)",
            repeats=2, notes=(
                "same dump reader, wikitext-to-prose (mwparserfromhell) and tokenizer on both sides, so the "
                "ratio is the engine: Beam on FnApiRunner with 2 worker processes against one process; times "
                "include start-up (about 4 s for Beam's workers). Memory is the whole process tree: Beam's "
                "runner and workers against one process; FnApiRunner keeps its shuffle in memory, a "
                "distributed runner spills it."
                if copies == 1 else "as above; one dump file per worker at a time")))
    return out
