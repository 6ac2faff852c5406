"""The peer of the worldwide benchmark: the curation script a user would otherwise write in the
shape of MetaCLIP 2's worldwide curation (as its docs/metaclip2.md describes it), one process.

    1. match: read the URL-list parts with pyarrow batch by batch; keep http(s) links with a
       non-empty caption; fastText lid.176 on the batch (one call); the label picks the
       language's automaton (pyahocorasick over the entries of its {lang}.json, built when the
       language first comes; an end of an entry gets a space unless its character is of a
       script written without spaces); MetaCLIP's spacing of the caption; drop a pair whose
       md5(url + text) was seen; count matches per (language, entry) and spill the matched
       pairs of each part to a parquet file;
    2. thresholds: English's tail share p at t, then each language's t from p as MetaCLIP 2's
       p_to_t does it (the sorted counts, the count whose inclusive cumulative share is nearest
       p); entry probability t / max(count, t);
    3. balance: a pair is kept with probability 1 - prod(1 - entry probability) over its entries,
       a seeded draw; kept pairs to pairs-NNNNN.parquet, a summary to peer_stats.json.

Usage: python -m bench.peer_metaclip2_script --input PART... --metadata-dir DIR --out DIR [--t 20000] [--seed 0]
"""

import argparse
import hashlib
import json
import random
import shutil
import time
from collections import Counter
from pathlib import Path

import ahocorasick
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipforge.pipeline.langid import LanguageID

BATCH = 65_536
SPILL = pa.schema([pa.field("url", pa.string()), pa.field("text", pa.string()), pa.field("lang", pa.string()),
                   pa.field("entry_ids", pa.list_(pa.int32()))])
LID_TO_WIKI = {"yue": "zh", "cbk": "cbk_zam"}
_SPACED_OUT = ((0x2E80, 0x303F), (0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF),
               (0xFF00, 0xFFEF), (0x20000, 0x3134F), (0x0E00, 0x0EFF), (0x0F00, 0x0FFF), (0x1000, 0x109F),
               (0x1780, 0x17FF))


def no_space(ch):
    o = ord(ch)
    return any(a <= o <= b for a, b in _SPACED_OUT)


def spacing(text):
    text = f" {text} "
    for c in ",.;:?!`":
        text = text.replace(c, f" {c} ")
    for c in "\t\n\r":
        text = text.replace(c, " ")
    return text


class Automata:
    def __init__(self, folder):
        self.entries = {p.stem: json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))}
        self.built = {}

    def get(self, lang):
        a = self.built.get(lang)
        if a is None and lang in self.entries:
            a = ahocorasick.Automaton()
            for i, e in enumerate(self.entries[lang]):
                a.add_word(("" if no_space(e[0]) else " ") + e + ("" if no_space(e[-1]) else " "), i)
            a.make_automaton()
            self.built[lang] = a
        return a


def column(names, *candidates):
    for c in candidates:
        if c in names:
            return c
    raise SystemExit(f"none of the columns {candidates} in {names}")


def match_part(path, spill_path, automata, lid, seen, counts, stats):
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    url_col, text_col = column(names, "url", "URL"), column(names, "caption", "text", "TEXT")
    with pq.ParquetWriter(spill_path, SPILL) as writer:
        for batch in pf.iter_batches(batch_size=BATCH, columns=[url_col, text_col]):
            urls, texts = [], []
            for url, text in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                stats["input"] += 1
                text = (text or "").strip()
                if not url or not url.startswith(("http://", "https://")) or not text:
                    stats["dropped_link_or_text"] += 1
                    continue
                urls.append(url)
                texts.append(text)
            rows = {name: [] for name in SPILL.names}
            for url, text, (code, _) in zip(urls, texts, lid.predict_many(texts)):
                lang = LID_TO_WIKI.get(code, code)
                automaton = automata.get(lang)
                if automaton is None:
                    stats["no_metadata_for_lang"] += 1
                    continue
                ids = sorted({i for _, i in automaton.iter(spacing(text))})
                if not ids:
                    stats["no_match"] += 1
                    continue
                digest = hashlib.md5((url + text).encode("utf-8")).hexdigest()
                if digest in seen:
                    stats["duplicate"] += 1
                    continue
                seen.add(digest)
                for name, v in (("url", url), ("text", text), ("lang", lang), ("entry_ids", ids)):
                    rows[name].append(v)
                c = counts.setdefault(lang, np.zeros(len(automata.entries[lang]), np.int64))
                c[ids] += 1
            if rows["url"]:
                writer.write_table(pa.table(rows, schema=SPILL))
                stats["matched"] += len(rows["url"])


def tail_share(counts, t):
    return float(counts[counts < t].sum() / max(1, counts.sum()))


def p_to_t(counts, p):
    c = np.sort(counts)
    portion = np.cumsum(c) / max(1, c.sum())
    return int(c[int(np.abs(portion - p).argmin())])


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.peer_metaclip2_script", description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", nargs="+", required=True)
    ap.add_argument("--metadata-dir", required=True, help="a folder of {lang}.json entry lists")
    ap.add_argument("--out", required=True)
    ap.add_argument("--t", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    automata, lid = Automata(args.metadata_dir), LanguageID()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    (out / "matched").mkdir(parents=True)
    stats, seen, counts, spills = Counter(), set(), {}, []
    for k, path in enumerate(args.input):
        spills.append(out / "matched" / f"{k:05d}.parquet")
        match_part(path, spills[-1], automata, lid, seen, counts, stats)
    del seen
    p = tail_share(counts["en"], args.t) if "en" in counts else None
    thresholds = {lang: args.t if lang == "en" or p is None else p_to_t(c, p) for lang, c in counts.items()}
    probs = {lang: thresholds[lang] / np.maximum(c, thresholds[lang]) for lang, c in counts.items()}
    rng = random.Random(args.seed)
    for k, spill in enumerate(spills):
        kept = []
        for batch in pq.ParquetFile(spill).iter_batches(batch_size=BATCH):
            for url, text, lang, ids in zip(*(batch.column(n).to_pylist() for n in SPILL.names)):
                prob = 1.0 - float(np.prod(1.0 - probs[lang][ids]))
                if rng.random() < prob:
                    kept.append((url, text, lang, [automata.entries[lang][i] for i in ids]))
        if kept:
            pq.write_table(pa.table({"url": [r[0] for r in kept], "text": [r[1] for r in kept],
                                     "lang": [r[2] for r in kept], "queries": [r[3] for r in kept]}),
                           out / f"pairs-{k:05d}.parquet")
            stats["kept"] += len(kept)
    shutil.rmtree(out / "matched")
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    (out / "peer_stats.json").write_text(json.dumps({**stats, "tail_share_en": p, "t": thresholds}, indent=1))
    print(f"peer: kept {stats['kept']:,} of {stats['input']:,} links in {stats['seconds']} s")


if __name__ == "__main__":
    main()
