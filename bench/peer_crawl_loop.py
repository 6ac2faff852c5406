"""The peer for the end-to-end crawl benchmark: the same readers, text filter, dedup and
balancing as clipforge's Beam pipeline, in one plain Python loop in one process.
Usage: python -m bench.peer_crawl_loop OUT QUERIES.json INPUT..."""

import json
import sys
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from clipforge.pipeline import balance, readers
from clipforge.pipeline.textfilter import TextFilter
from clipforge.pipeline.crawl_stage import expand_inputs
from clipforge.schemas.records import CURATED_PAIR


def candidates(items):
    for path, fmt, part in items:
        if fmt in ("warc", "wat"):
            with open(path, "rb") as f:
                yield from (readers.read_warc if fmt == "warc" else readers.read_wat)(f, path)
        elif fmt == "parquet":
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            cols = (readers.pick_column(names, None, readers.URL_COLUMNS, "url", path),
                    readers.pick_column(names, None, readers.TEXT_COLUMNS, "text", path),
                    readers.pick_column(names, None, readers.PAGE_COLUMNS, "page", path))
            for row in pf.read_row_group(part).to_pylist():
                yield readers._row({"u": row[cols[0]], "t": row[cols[1]], "p": row[cols[2]] if cols[2] else None},
                                   ("u", "t", "p"), path, "row")


def main(out, queries_path, inputs, t=20_000, seed=0):
    queries = json.load(open(queries_path))
    text_filter = TextFilter(queries)
    pairs, dropped, n = {}, Counter(), 0
    for c in candidates(expand_inputs(inputs)):
        n += 1
        if isinstance(c, readers.Unreadable):
            dropped["unreadable_record"] += 1
            continue
        got = text_filter(c)
        if isinstance(got, str):
            dropped[got] += 1
        elif got["uid"] in pairs:
            dropped["duplicate"] += 1
        else:
            pairs[got["uid"]] = got
    counts = Counter(q for p in pairs.values() for q in p["queries"])
    kept = []
    for p in pairs.values():
        prob = balance.keep_probability(p["queries"], counts, t)
        if balance.draw(seed, p["uid"]) < prob:
            kept.append(dict(p, keep_prob=prob))
    pq.write_table(pa.Table.from_pylist(sorted(kept, key=lambda p: p["uid"]), schema=CURATED_PAIR), out)
    return n, len(kept), dropped


if __name__ == "__main__":
    print(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
