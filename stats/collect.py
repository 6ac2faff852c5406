"""Numbers of a dataset, read only from what the stages wrote.

Each function takes a stage's output directory and returns plain dicts and lists (the content
of `stats.json`). Parquet inputs are streamed by record batch with pyarrow compute, so memory
stays flat however many pairs there are.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipforge.errors import InputError

BATCH = 262_144


def _unreadable(path, e):
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return InputError(f"{path}: not a readable parquet file ({first})")


def _read_table(path, columns):
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(path, e) from None


def _batches(files, columns):
    for f in files:
        try:
            pf = pq.ParquetFile(f)
            cols = [c for c in columns if c in pf.schema_arrow.names]
            yield from pf.iter_batches(batch_size=BATCH, columns=cols)
        except (pa.ArrowException, OSError) as e:
            raise _unreadable(f, e) from None


def _value_counts(counter: Counter, array):
    for item in pc.value_counts(array).to_pylist():
        counter[item["values"]] += item["counts"]


class Histogram:
    """Counts on fixed bin edges, filled batch by batch; keeps min, max, mean and a few quantiles (from bins)."""

    def __init__(self, edges):
        self.edges = np.asarray(edges, dtype=float)
        self.counts = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.n, self.total, self.lo, self.hi = 0, 0.0, float("inf"), float("-inf")

    def add(self, values):
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        if not len(v):
            return
        clipped = np.clip(v, self.edges[0], np.nextafter(self.edges[-1], -np.inf))
        self.counts += np.histogram(clipped, self.edges)[0]
        self.n += len(v)
        self.total += float(v.sum())
        self.lo, self.hi = min(self.lo, float(v.min())), max(self.hi, float(v.max()))

    def quantile(self, q):
        if not self.n:
            return None
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, q * self.n))
        return float(self.edges[min(i + 1, len(self.edges) - 1)])

    def to_dict(self):
        return {"edges": self.edges.tolist(), "counts": self.counts.tolist(), "n": self.n,
                "min": self.lo if self.n else None, "max": self.hi if self.n else None,
                "mean": self.total / self.n if self.n else None, "median_bin": self.quantile(0.5)}


# --- funnel -----------------------------------------------------------------------------------

def funnel(stats: dict) -> dict:
    """A stage's funnel as the stage wrote it, with each drop reason's share of the input."""
    n = stats["input"]
    return {"stage": stats["stage"], "unit": stats["unit"], "input": n, "kept": stats["kept"],
            "kept_share": stats["kept"] / n if n else 0.0,
            "dropped": [{"reason": r, "count": c, "share": c / n if n else 0.0}
                        for r, c in sorted(stats["dropped"].items(), key=lambda kv: -kv[1])],
            **({"pages": page_funnel(stats["extra"]["pages"])} if stats.get("extra", {}).get("pages") else {})}


PAGE_BUCKETS = ("html", "not_html", "status_not_200", "unreadable")


def page_funnel(pages: dict) -> dict:
    """The crawl's web-archive records: each response in one bucket (read as HTML, not HTML, not 200,
    unreadable), and apart from them how many pages were cut at a cap and still read."""
    total = sum(v for k, v in pages.items() if k in PAGE_BUCKETS)
    return {"responses": total, "truncated": pages.get("truncated", 0),
            "buckets": [{"bucket": b, "count": pages.get(b, 0), "share": pages.get(b, 0) / total if total else 0.0}
                        for b in PAGE_BUCKETS]}


# --- queries and balancing --------------------------------------------------------------------

def balancing(pairs_dir: Path, queries_dir: Path | None, crawl_stats: dict, top: int = 25) -> dict:
    """Per-query matches before and kept after balancing; head (matches > t) and tail."""
    t = crawl_stats.get("extra", {}).get("settings", {}).get("max_per_query")
    languages = crawl_stats.get("extra", {}).get("languages")  # a worldwide crawl: a funnel and t per language
    table = _read_table(pairs_dir / "query_counts.parquet", ["query", "matches", "kept"] + (["lang"] if languages else []))
    matches = np.asarray(table.column("matches").to_numpy(), dtype=np.int64)
    kept = np.asarray(table.column("kept").to_numpy(), dtype=np.int64)
    queries = table.column("query").to_pylist()
    order = np.argsort(-matches, kind="stable")
    if languages:  # each query against its own language's t
        t_of = np.array([(languages.get(lang) or {}).get("t") or t or 0 for lang in table.column("lang").to_pylist()])
        head = matches > t_of
    else:
        head = matches > t if t else np.zeros(len(matches), bool)
    out = {
        "t": t,
        "queries_matched": int(len(matches)),
        "head_queries": int(head.sum()),
        "tail_queries": int((~head).sum()),
        "matches_total": int(matches.sum()),
        "kept_total": int(kept.sum()),
        "head_share_before": float(matches[head].sum() / max(1, matches.sum())),
        "head_share_after": float(kept[head].sum() / max(1, kept.sum())),
        "matches_sorted": matches[order].tolist(),
        "kept_sorted": np.sort(kept)[::-1].tolist(),
        "top": [{"query": queries[i], "matches": int(matches[i]), "kept": int(kept[i])} for i in order[:top]],
    }
    if languages:
        out["languages"] = languages
        out["tail_share_en"] = crawl_stats["extra"].get("balancing", {}).get("tail_share_en")
    if queries_dir is not None and (queries_dir / "queries.parquet").exists():
        q = _read_table(queries_dir / "queries.parquet", ["query", "source"])
        source = dict(zip(q.column("query").to_pylist(), q.column("source").to_pylist()))
        by = {}
        for s in source.values():
            by.setdefault(s, {"queries": 0, "matched_queries": 0, "matches": 0, "kept": 0})["queries"] += 1
        for name, m, k in zip(queries, matches.tolist(), kept.tolist()):
            s = by.setdefault(source.get(name, "unknown"), {"queries": 0, "matched_queries": 0, "matches": 0, "kept": 0})
            s["matched_queries"] += 1
            s["matches"] += m
            s["kept"] += k
        out["sources"] = by
        out["queries_total"] = len(source)
        out["queries_unmatched"] = len(source) - sum(1 for x in queries if x in source)
    return out


# --- pairs ------------------------------------------------------------------------------------

CAPTION_EDGES = [0, 10, 20, 30, 40, 50, 60, 80, 100, 125, 150, 200, 300, 500, 1000, 1e9]


def pairs(pairs_dir: Path) -> dict:
    files = sorted(pairs_dir.glob("pairs-*.parquet"))
    langs, formats, sources = Counter(), Counter(), Counter()
    caption = Histogram(CAPTION_EDGES)
    n = 0
    for rb in _batches(files, ["text", "lang", "input_format", "source_file"]):
        n += rb.num_rows
        _value_counts(langs, rb.column("lang"))
        _value_counts(formats, rb.column("input_format"))
        _value_counts(sources, rb.column("source_file"))
        caption.add(pc.utf8_length(rb.column("text")).to_numpy(zero_copy_only=False))
    return {"files": len(files), "pairs": n, "languages": dict(langs.most_common()),
            "input_formats": dict(formats.most_common()),
            "source_files": dict(sources.most_common(20)), "source_files_total": len(sources),
            "caption_chars": caption.to_dict()}


# --- shards -----------------------------------------------------------------------------------

SIZE_EDGES = [0, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096, 1e9]
ASPECT_EDGES = [0, 0.25, 0.5, 0.67, 0.8, 0.95, 1.05, 1.25, 1.5, 2.0, 4.0, 1e9]


def shards(shards_dir: Path, top_hosts: int = 15) -> dict:
    index_files = sorted(shards_dir.glob("[0-9]*.parquet"))
    status, fail_hosts = Counter(), Counter()
    host_reasons: dict = {}
    orig_side, final_side, aspect = Histogram(SIZE_EDGES), Histogram(SIZE_EDGES), Histogram(ASPECT_EDGES)
    per_shard: dict = {}
    cols = ["status", "url", "original_width", "original_height", "width", "height", "jpg_bytes", "shard"]
    for rb in _batches(index_files, cols):
        _value_counts(status, rb.column("status"))
        ok = pc.equal(rb.column("status"), "success")
        good = rb.filter(ok)
        ow = good.column("original_width").to_numpy(zero_copy_only=False).astype(float)
        oh = good.column("original_height").to_numpy(zero_copy_only=False).astype(float)
        orig_side.add(np.maximum(ow, oh))
        final_side.add(np.maximum(good.column("width").to_numpy(zero_copy_only=False).astype(float),
                                  good.column("height").to_numpy(zero_copy_only=False).astype(float)))
        aspect.add(ow / np.where(oh > 0, oh, np.nan))
        for item in pc.value_counts(good.column("shard")).to_pylist():
            per_shard.setdefault(item["values"], {"samples": 0, "jpg_bytes": 0})["samples"] += item["counts"]
        sums = pa.table({"shard": good.column("shard"), "b": good.column("jpg_bytes")}).group_by("shard").aggregate(
            [("b", "sum")])
        for s, b in zip(sums.column("shard").to_pylist(), sums.column("b_sum").to_pylist()):
            per_shard.setdefault(s, {"samples": 0, "jpg_bytes": 0})["jpg_bytes"] += int(b or 0)
        bad = rb.filter(pc.invert(ok))
        for url, reason in zip(bad.column("url").to_pylist(), bad.column("status").to_pylist()):
            host = urlsplit(url or "").hostname or "(no host)"
            port = urlsplit(url or "").port
            host = f"{host}:{port}" if port else host
            fail_hosts[host] += 1
            host_reasons.setdefault(host, Counter())[reason] += 1
    sizes_file = shards_dir / "sizes.json"
    sizes = json.loads(sizes_file.read_text()) if sizes_file.exists() else {}
    tars = []
    for name in sorted(set(sizes) | set(per_shard)):
        tar = shards_dir / name
        tars.append({"shard": name, "samples": int(sizes.get(name, per_shard.get(name, {}).get("samples", 0))),
                     "tar_bytes": tar.stat().st_size if tar.exists() else None,
                     "jpg_bytes": per_shard.get(name, {}).get("jpg_bytes", 0)})
    attempted = sum(status.values())
    return {
        "index_files": len(index_files), "attempted": attempted, "samples": status.get("success", 0),
        "status": dict(status.most_common()),
        "failures_by_reason": [{"reason": r, "count": c, "share": c / attempted}
                               for r, c in status.most_common() if r != "success"],
        "failures_by_host": [{"host": h, "count": c, "top_reason": host_reasons[h].most_common(1)[0][0]}
                             for h, c in fail_hosts.most_common(top_hosts)],
        "failure_hosts_total": len(fail_hosts),
        "original_longer_side": orig_side.to_dict(), "final_longer_side": final_side.to_dict(),
        "original_aspect_ratio": aspect.to_dict(),
        "shards": tars, "shard_count": len(tars),
        "samples_in_sizes_json": sum(int(v) for v in sizes.values()),
    }


def sample_keys(shards_dir: Path, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(shard, key) of n random successful samples: reservoir sampling over the index files."""
    rng = random.Random(seed)
    chosen: list = []
    seen = 0
    for rb in _batches(sorted(shards_dir.glob("[0-9]*.parquet")), ["status", "key", "shard"]):
        good = rb.filter(pc.equal(rb.column("status"), "success"))
        for shard, key in zip(good.column("shard").to_pylist(), good.column("key").to_pylist()):
            seen += 1
            if len(chosen) < n:
                chosen.append((shard, key))
            else:
                j = rng.randrange(seen)
                if j < n:
                    chosen[j] = (shard, key)
    return sorted(chosen)


def read_samples(shards_dir: Path, wanted: list[tuple[str, str]]) -> list[dict]:
    """The image bytes and caption of the wanted (shard, key) samples, one pass over each tar."""
    import tarfile

    by_shard: dict = {}
    for shard, key in wanted:
        by_shard.setdefault(shard, set()).add(key)
    found = {}
    for shard, keys in by_shard.items():
        path = shards_dir / shard
        if not path.exists():
            continue
        with tarfile.open(path) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if key in keys and ext in ("jpg", "txt"):
                    found.setdefault(key, {"key": key, "shard": shard})[ext] = tar.extractfile(member).read()
    out = []
    for shard, key in wanted:
        s = found.get(key)
        if s and "jpg" in s:
            out.append({"key": key, "shard": shard, "jpg": s["jpg"],
                        "caption": s.get("txt", b"").decode("utf-8", "replace")})
    return out
