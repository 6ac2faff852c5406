"""Scale benchmarks: the crawl and shard commands on millions of links, whole command timed,
peak memory of the whole process tree recorded.

1. crawl, 1M and 10M image links (URL-list parquet, 10 parts, real captions; see
   bench/scale_inputs.py) with the query list of the real `clipforge queries` stage:
   `clipforge crawl --lang all` against bench/peer_metaclip_script.py, the one-process
   MetaCLIP-style curation script a user would otherwise write (pyarrow, lid.176 per batch,
   MetaCLIP's substring matching, md5 dedup in a set, count-then-balance with t = 20,000).
2. shard, 100k and 1M pairs whose URLs fail at once (127.0.0.1:9, connection refused): the
   per-pair cost of the stage without any image work, `clipforge shard` against img2dataset
   with the same concurrency.

Inputs are generated once and cached under data/bench-scale/ (CLIPFORGE_SCALE_DATA moves it).
Knobs (environment):
  CLIPFORGE_SCALE_SIZES        crawl sizes in links, comma-separated (default 1000000,10000000)
  CLIPFORGE_SCALE_SHARD_SIZES  shard sizes in pairs (default 100000,1000000); empty: no shard rows
  CLIPFORGE_SCALE_REPEATS      repeats of every row (default: 2 below 5M items, 1 from 5M)
  CLIPFORGE_SCALE_QUERIES      another queries directory (with metadata.json) for the crawl
e.g. CLIPFORGE_SCALE_SIZES=100000 CLIPFORGE_SCALE_SHARD_SIZES=100000 make bench ARGS=scale
"""

import json
import os
import shutil
import sys
from pathlib import Path

from bench import scale_inputs
from bench.harness import Comparison

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("clipforge"))
IMG2DATASET = str(Path(sys.executable).with_name("img2dataset"))
T = 20_000


def _sizes(name, default):
    raw = os.environ.get(name)
    raw = default if raw is None else raw
    return [int(float(x)) for x in raw.replace("_", "").split(",") if x.strip()]


def _repeats(n):
    if os.environ.get("CLIPFORGE_SCALE_REPEATS"):
        return int(os.environ["CLIPFORGE_SCALE_REPEATS"])
    return 2 if n < 5_000_000 else 1


def _label(n):
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else f"{n:,}"


def benchmarks(workdir):
    workdir.mkdir(parents=True, exist_ok=True)
    out = []
    crawl_sizes = _sizes("CLIPFORGE_SCALE_SIZES", "1000000,10000000")
    if crawl_sizes:
        if os.environ.get("CLIPFORGE_SCALE_QUERIES"):
            queries = Path(os.environ["CLIPFORGE_SCALE_QUERIES"])
            n_queries = len(json.loads((queries / "metadata.json").read_text()))
            source = f"{queries}"
        else:
            queries, n_queries = scale_inputs.query_list(log=_log)
            source = "`clipforge queries` on the shared enwiki excerpt + 2 OEWN files, default thresholds"
        _log(f"  query list: {n_queries:,} entries ({source})")
        for n in crawl_sizes:
            out.append(_crawl(workdir, n, queries, n_queries))
    shard_sizes = _sizes("CLIPFORGE_SCALE_SHARD_SIZES", "100000,1000000")
    if shard_sizes and not Path(IMG2DATASET).exists():
        _log("  shard rows skipped: img2dataset is not installed")
        return out
    for n in shard_sizes:
        out.append(_shard(workdir, n))
    return out


def _log(msg):
    print(msg, flush=True)


def _crawl(workdir, n, queries, n_queries):
    parts, manifest = scale_inputs.generate_links(n, log=_log)
    ours_out, peer_out = workdir / f"crawl-{n}-ours", workdir / f"crawl-{n}-peer"
    ours = [CLI, "crawl", "--input", *map(str, parts), "--queries", str(queries), "--out", str(ours_out),
            "--lang", "all", "--max-per-query", str(T)]
    # run as a module from the project root, as `python -m bench` is
    peer = [sys.executable, "-m", "bench.peer_metaclip_script", "--input", *map(str, parts),
            "--metadata", str(queries / "metadata.json"), "--out", str(peer_out), "--lang", "all", "--t", str(T)]

    def clean():
        shutil.rmtree(ours_out, ignore_errors=True)
        shutil.rmtree(peer_out, ignore_errors=True)

    def verify(side):  # every link accounted for, and pairs written
        if side == "ours":
            stats = json.loads((ours_out / "crawl_stats.json").read_text())
            got, kept = stats["input"], stats["kept"]
        else:
            stats = json.loads((peer_out / "peer_stats.json").read_text())
            got, kept = stats["input"], stats["kept"]
        if got != n or not kept:
            raise RuntimeError(f"crawl {side}: read {got:,} of {n:,} links, kept {kept:,}")
        _log(f"    {side}: {kept:,} of {n:,} links kept")

    return Comparison(
        name=f"crawl {_label(n)} links: read + lid.176 + match + dedup + balance", ours=ours, peer=peer,
        peer_name="MetaCLIP-style curation script (1 process)", items=n, unit="links",
        input=(f"{n:,} links in {len(parts)} URL-list parquet parts ({manifest['bytes'] / 2**20:,.0f} MiB; ~20% real "
               f"web captions verbatim, ~80% Wikipedia word windows, 1% junk URLs), {n_queries:,} queries"),
        repeats=_repeats(n), setup=clean, verify=verify, show_wall=True,
        notes=(f"whole command timed, start-up included; `--lang all`, t = {T:,}. clipforge: Beam on the "
               f"FnApiRunner, one worker process per core, its three passes spilling to disk; the peer "
               f"(bench/peer_metaclip_script.py): one process, pyarrow batches, lid.176 per batch, the matcher "
               f"of the crawl section, md5(url + text) in a set, matched pairs spilled per part, then "
               f"MetaCLIP's balance_sampling. The peer runs lid.176 on every text; clipforge, with every "
               f"language wanted, only on the distinct texts of the pairs it keeps, after balancing (the same "
               f"languages in the output), and also cleans captions (entities, mojibake, junk rules) and "
               f"normalises URLs. Texts: about "
               f"{manifest['distinct_texts_expected'] / n:.0%} distinct (the excerpt holds "
               f"{manifest['distinct_windows_possible'] / 1e6:.1f}M distinct windows; the verbatim 20% repeat "
               f"{manifest['real_captions']:,} real captions). Peak memory is the whole process tree."))


def _shard(workdir, n):
    pairs, _ = scale_inputs.generate_dead_pairs(n, log=_log)
    ours_out, peer_out = workdir / f"shard-{n}-ours", workdir / f"shard-{n}-peer"
    per_shard = 10_000
    ours = [CLI, "shard", "--pairs", str(pairs), "--out", str(ours_out), "--allow-private-hosts", "--retries", "0",
            "--image-size", "256", "--resize-mode", "keep_ratio", "--threads", "32", "--per-host", "64",
            "--samples-per-shard", str(per_shard), "--direct_num_workers=2"]
    peer = [IMG2DATASET, "--url_list", str(pairs), "--input_format", "parquet", "--url_col", "url",
            "--caption_col", "text", "--output_format", "webdataset", "--output_folder", str(peer_out),
            "--processes_count", "2", "--thread_count", "32", "--image_size", "256", "--resize_mode", "keep_ratio",
            "--encode_quality", "95", "--number_sample_per_shard", str(per_shard), "--enable_wandb", "False",
            "--distributor", "multiprocessing", "--timeout", "10", "--retries", "0"]

    def clean():
        shutil.rmtree(ours_out, ignore_errors=True)
        shutil.rmtree(peer_out, ignore_errors=True)

    def verify(side):  # every pair tried, none fetched
        if side == "ours":
            stats = json.loads((ours_out / "shard_stats.json").read_text())
            got, ok = stats["input"], stats["kept"]
        else:
            shards = [json.loads(p.read_text()) for p in peer_out.glob("*_stats.json")]
            got, ok = sum(s["count"] for s in shards), sum(s["successes"] for s in shards)
        if got != n or ok:
            raise RuntimeError(f"shard {side}: {got:,} of {n:,} pairs tried, {ok:,} fetched")

    return Comparison(
        name=f"shard {_label(n)} pairs, every fetch refused", ours=ours, peer=peer, peer_name="img2dataset 1.47",
        items=n, unit="pairs",
        input=f"{n:,} pairs in {scale_inputs.PARTS} parquet files, every URL on 127.0.0.1:9 (connection refused)",
        repeats=_repeats(n), setup=clean, verify=verify, show_wall=True,
        notes=("the stage's cost per pair without any image work: read the pairs, spread them over shards, "
               "try each URL once (`--retries 0` on both; clipforge's default retries back off on "
               "connection errors), write the shard index and the funnel. Both: 2 processes x 32 threads, "
               f"{per_shard:,} pairs per shard, whole command timed including start-up; peak memory is the "
               "whole process tree"))
