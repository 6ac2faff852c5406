"""The shard stage: pairs -> fetched, resized images packed as WebDataset tars (Apache Beam).

    pairs ─ ReadPairs ─ AssignShard (hash of seed and uid) ─ GroupByShard ─ FetchShard
                                                                  (threads: fetch, check, resize, encode;
                                                                   NNNNNN.tar and NNNNNN.parquet written
                                                                   aside, then renamed)

A shard is the unit of work and of resume: a shard whose index parquet exists is finished
and is skipped by a rerun. The stage's launcher then drops images that appear in more than
one sample (same JPEG hash: the sample with the smallest uid stays), writes sizes.json and
the funnel. Images never pass through Beam's shuffle: only the pairs do.
"""

import functools
import hashlib
import io
import json
import logging
import math
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from clipforge.pipeline import balance, readers
from clipforge.pipeline.fetch import DEFAULT_USER_AGENT, Fetcher, system_resolver
from clipforge.pipeline.images import ImageConfig, process
from clipforge.schemas.records import SHARD_INDEX
from clipforge.schemas.validate import validate_table

NS = "clipforge.shard"
log = logging.getLogger("clipforge.shard")


@dataclass
class ShardConfig:
    inputs: list = field(default_factory=list)  # (parquet path, row group) work items
    out: str = "data/shards"
    samples_per_shard: int = 10_000
    seed: int = 0
    image: ImageConfig = field(default_factory=ImageConfig)
    threads: int = 32
    per_host: int = 16
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    deadline: float = 20.0
    max_bytes: int = 20 << 20
    max_redirects: int = 5
    retries: int = 2
    user_agent: str = DEFAULT_USER_AGENT
    allow_private: bool = False
    respect_noai: bool = True
    url_col: str = None
    text_col: str = None


@functools.lru_cache(maxsize=None)
def _counter(name):
    return Metrics.counter(NS, name)


def order_key(seed, uid):
    return hashlib.blake2b(f"{seed}:{uid}".encode(), digest_size=8).digest()


class ReadPairs(beam.DoFn):
    """(parquet path, row group) -> pair dicts with uid, url, text and what else the file has."""

    def __init__(self, url_col, text_col):
        self.url_col, self.text_col = url_col, text_col

    def process(self, item):
        path, group = item
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            pf = pq.ParquetFile(io.BytesIO(f.read()) if "://" in path else path)
        names = pf.schema_arrow.names
        url_c = readers.pick_column(names, self.url_col, readers.URL_COLUMNS, "url", path)
        text_c = readers.pick_column(names, self.text_col, readers.TEXT_COLUMNS, "text", path)
        cols = [c for c in dict.fromkeys([url_c, text_c, "uid", "page_url", "lang", "queries"]) if c in names]
        for row in pf.read_row_group(group, columns=cols).to_pylist():
            _counter("input").inc()
            url, text = row.get(url_c) or "", row.get(text_c) or ""
            yield {"uid": row.get("uid") or balance.uid(url, text), "url": url, "text": text,
                   "page_url": row.get("page_url"), "lang": row.get("lang"), "queries": row.get("queries")}


def _assign(pair, n_shards, seed):
    return int.from_bytes(order_key(seed, pair["uid"])[:4], "big") % n_shards, pair


class FetchShard(beam.DoFn):
    def __init__(self, cfg, resolver=system_resolver):
        self.cfg, self.resolver = cfg, resolver

    def setup(self):
        c = self.cfg
        self.fetcher = Fetcher(connect_timeout=c.connect_timeout, read_timeout=c.read_timeout, deadline=c.deadline,
                               max_bytes=c.max_bytes, max_redirects=c.max_redirects, retries=c.retries,
                               per_host=c.per_host, user_agent=c.user_agent, allow_private=c.allow_private,
                               respect_noai=c.respect_noai, resolver=self.resolver, pool_size=max(64, c.threads))
        self.pool = ThreadPoolExecutor(max_workers=c.threads, thread_name_prefix="fetch")

    def teardown(self):
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _one(self, pair):
        got = self.fetcher.fetch(pair["url"])
        if got.reason:
            return got.reason, got.error, None
        out = process(got.body, self.cfg.image)
        if isinstance(out, str):
            return out, None, None
        return "success", None, out

    def process(self, item):
        index, pairs = item
        name = f"{index:06d}"
        index_path = FileSystems.join(self.cfg.out, name + ".parquet")
        if FileSystems.exists(index_path):  # finished by an earlier run
            _counter("shards_reused").inc()
            yield name
            return
        t0 = time.monotonic()
        pairs = sorted(pairs, key=lambda p: order_key(self.cfg.seed, p["uid"]))
        rows = []
        local = "://" not in self.cfg.out
        fd, tmp_tar = tempfile.mkstemp(suffix=".tmp", prefix=f"{name}.tar.", dir=self.cfg.out if local else None)
        os.close(fd)
        try:
            with wds.TarWriter(tmp_tar) as sink:
                for pos, (pair, (status, error, img)) in enumerate(zip(pairs, self.pool.map(self._one, pairs))):
                    key = f"{index:06d}{pos:06d}"
                    row = {"key": key, "uid": pair["uid"], "url": pair["url"], "text": pair["text"],
                           "page_url": pair["page_url"], "lang": pair["lang"], "queries": pair["queries"],
                           "status": status, "error": error, "original_width": None, "original_height": None,
                           "width": None, "height": None, "sha256": None, "jpg_bytes": None, "shard": name + ".tar"}
                    if img is not None:
                        row.update(original_width=img.original_width, original_height=img.original_height,
                                   width=img.width, height=img.height, sha256=img.sha256, jpg_bytes=len(img.jpg))
                        meta = {k: row[k] for k in ("key", "uid", "url", "text", "page_url", "lang", "queries",
                                                    "original_width", "original_height", "width", "height",
                                                    "sha256")}
                        sink.write({"__key__": key, "jpg": img.jpg, "txt": pair["text"],
                                    "json": json.dumps(meta, ensure_ascii=False).encode("utf-8")})
                    rows.append(row)
            publish_shard(self.cfg.out, name, tmp_tar, rows)
        finally:
            if os.path.exists(tmp_tar):
                os.unlink(tmp_tar)
        ok = sum(r["status"] == "success" for r in rows)
        dt = time.monotonic() - t0
        log.info("shard %s: %d/%d images in %.1f s (%.0f pairs/s)", name, ok, len(rows), dt, len(rows) / max(dt, 1e-9))
        _counter("shards_written").inc()
        yield name


def publish_shard(out, name, local_tar, rows):
    """Tar first, then its index: a shard whose parquet exists is complete."""
    table = validate_table(pa.Table.from_pylist(rows, schema=SHARD_INDEX), SHARD_INDEX, name + ".parquet")
    tar_path = FileSystems.join(out, name + ".tar")
    if "://" not in out:
        os.replace(local_tar, tar_path)  # written beside it: an atomic rename
    else:
        with open(local_tar, "rb") as src, FileSystems.create(tar_path) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    tmp = FileSystems.join(out, name + ".parquet.tmp")
    with FileSystems.create(tmp) as f:
        f.write(buf.getvalue())
    FileSystems.rename([tmp], [FileSystems.join(out, name + ".parquet")])


def build(p, cfg, n_pairs):
    n_shards = max(1, math.ceil(n_pairs / cfg.samples_per_shard))
    return (p | "WorkItems" >> beam.Create(cfg.inputs)
            | "SpreadInputs" >> beam.Reshuffle()
            | "ReadPairs" >> beam.ParDo(ReadPairs(cfg.url_col, cfg.text_col))
            | "AssignShard" >> beam.Map(_assign, n_shards, cfg.seed)
            | "GroupByShard" >> beam.GroupByKey()
            | "FetchShard" >> beam.ParDo(FetchShard(cfg)))
