"""The peer of the scale benchmark: the curation script a user would otherwise write, in the shape
of MetaCLIP's curation (substring matching, then a global count per entry, then balancing with
probability t / count per matched entry), one process.

    1. match: read the URL-list parts with pyarrow batch by batch; keep http(s) links with a
       non-empty caption; fastText lid.176 on the batch (one call); match the caption with a
       pyahocorasick automaton of " entry " strings as bench/peer_metaclip.py does (MetaCLIP's
       spacing); drop a pair whose md5(url + text) was seen; count matches per entry (numpy)
       and spill the matched pairs of each part to a parquet file, as MetaCLIP's curation
       writes a per-shard index between its stages;
    2. balance: entry probability t / max(count, t); a pair is kept when any of its entries
       wins a seeded draw (MetaCLIP's balance_sampling); kept pairs go to pairs-NNNNN.parquet,
       the counts to entry_count.npy, a summary to peer_stats.json.

Usage: python -m bench.peer_metaclip_script --input PART... --metadata metadata.json --out DIR
       [--lang all|en] [--t 20000] [--seed 0]
"""

import argparse
import hashlib
import json
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.peer_metaclip import MetaCLIPStyle

BATCH = 65_536
SPILL = pa.schema([pa.field("url", pa.string()), pa.field("text", pa.string()), pa.field("lang", pa.string()),
                   pa.field("uid", pa.string()), pa.field("entry_ids", pa.list_(pa.int32()))])
PAIRS = pa.schema([pa.field("uid", pa.string()), pa.field("url", pa.string()), pa.field("text", pa.string()),
                   pa.field("lang", pa.string()), pa.field("queries", pa.list_(pa.string()))])


def column(names, *candidates):
    for c in candidates:
        if c in names:
            return c
    raise SystemExit(f"none of the columns {candidates} in {names}")


def match_part(path, spill_path, curator, lang, seen, entry_count, stats):
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    url_col, text_col = column(names, "url", "URL"), column(names, "caption", "text", "TEXT")
    with pq.ParquetWriter(spill_path, SPILL) as writer:
        for batch in pf.iter_batches(batch_size=BATCH, columns=[url_col, text_col]):
            urls, texts = [], []
            for url, text in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                stats["input"] += 1
                if not url or not url.startswith(("http://", "https://")):
                    stats["bad_url"] += 1
                    continue
                text = (text or "").strip()
                if not text:
                    stats["no_text"] += 1
                    continue
                urls.append(url)
                texts.append(text)
            rows = {name: [] for name in SPILL.names}
            matched_ids = []
            for url, text, (code, _prob) in zip(urls, texts, curator.lid.predict_many(texts)):
                if lang != "all" and code != lang:
                    stats["lang_not_wanted"] += 1
                    continue
                ids = curator.match(text)
                if not ids:
                    stats["no_match"] += 1
                    continue
                digest = hashlib.md5((url + text).encode("utf-8")).hexdigest()
                if digest in seen:
                    stats["duplicate"] += 1
                    continue
                seen.add(digest)
                ids = sorted(ids)
                rows["url"].append(url)
                rows["text"].append(text)
                rows["lang"].append(code)
                rows["uid"].append(digest)
                rows["entry_ids"].append(ids)
                matched_ids.extend(ids)
            if matched_ids:
                entry_count += np.bincount(matched_ids, minlength=len(entry_count))
            if rows["uid"]:
                writer.write_table(pa.table(rows, schema=SPILL))
                stats["matched"] += len(rows["uid"])


def balance_part(spill_path, out_path, entry_prob, queries, rng, stats):
    pf = pq.ParquetFile(spill_path)
    with pq.ParquetWriter(out_path, PAIRS) as writer:
        for batch in pf.iter_batches(batch_size=BATCH):
            kept = {name: [] for name in PAIRS.names}
            cols = [batch.column(name).to_pylist() for name in ("uid", "url", "text", "lang", "entry_ids")]
            for uid, url, text, code, ids in zip(*cols):
                if any(rng.random() < entry_prob[i] for i in ids):
                    kept["uid"].append(uid)
                    kept["url"].append(url)
                    kept["text"].append(text)
                    kept["lang"].append(code)
                    kept["queries"].append([queries[i] for i in ids])
            if kept["uid"]:
                writer.write_table(pa.table(kept, schema=PAIRS))
                stats["kept"] += len(kept["uid"])


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.peer_metaclip_script", description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", nargs="+", required=True, help="URL-list parquet files (url/URL, caption/text/TEXT)")
    ap.add_argument("--metadata", required=True, help="MetaCLIP metadata.json: a JSON list of entries")
    ap.add_argument("--out", required=True)
    ap.add_argument("--lang", default="all", help="'all', or the one lid.176 code kept (e.g. en)")
    ap.add_argument("--t", type=int, default=20_000, help="balancing threshold (CLIP: 20,000)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    queries = json.loads(Path(args.metadata).read_text())
    curator = MetaCLIPStyle(queries)  # the automaton and lid.176
    out = Path(args.out)
    spill = out / "matched"
    shutil.rmtree(out, ignore_errors=True)
    spill.mkdir(parents=True)
    stats, seen = Counter(), set()
    entry_count = np.zeros(len(queries), dtype=np.int64)
    spills = []
    for k, path in enumerate(args.input):  # stage 1: match, dedup, count
        spills.append(spill / f"{k:05d}.parquet")
        match_part(path, spills[-1], curator, args.lang, seen, entry_count, stats)
    del seen

    np.save(out / "entry_count.npy", entry_count)  # stage 2: the global count -> entry probabilities
    entry_prob = (args.t / np.maximum(entry_count, args.t)).tolist()

    rng = random.Random(args.seed)  # stage 3: balance
    for k, path in enumerate(spills):
        balance_part(path, out / f"pairs-{k:05d}.parquet", entry_prob, queries, rng, stats)
        path.unlink()
    spill.rmdir()
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    (out / "peer_stats.json").write_text(json.dumps(dict(stats), indent=1) + "\n")
    print(json.dumps(dict(stats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
