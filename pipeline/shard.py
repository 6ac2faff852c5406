"""The shard stage: pairs -> fetched, resized images packed as WebDataset tars (Apache Beam).

    pairs ─ SpillPairs ────────► _spill/pNNNNN/*.parquet  (each pair to its shard: a hash of
     (parquet row groups,                                   seed and uid; spilled, not shuffled)
      CSV/TSV/JSONL lists)
    Fanout(shards) ─ FetchShard   (libcurl fetches, image threads check, resize, encode;
                                   NNNNNN.tar and NNNNNN.parquet written aside, then renamed)

A shard is the unit of work and of resume: a shard whose index parquet exists is finished
and is skipped by a rerun. The stage's launcher then drops images that appear in more than
one sample (same JPEG hash: the sample with the smallest uid stays), writes sizes.json and
the funnel. Neither images nor pairs pass through Beam's shuffle, so memory holds one batch
of pairs or one shard's pairs per worker, however many pairs there are.
"""

import hashlib
import io
import json
import logging
import math
import os
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from clipforge.beam import FinishWithStats
from clipforge.pipeline import readers, spill
from clipforge.pipeline.fetch import DEFAULT_USER_AGENT, Fetcher, system_resolver
from clipforge.pipeline.images import ImageConfig, process
from clipforge.schemas import pairs as pair_ids
from clipforge.schemas.records import SHARD_INDEX
from clipforge.schemas.validate import validate_table
from clipforge.schemas.tars import TarSink

log = logging.getLogger("clipforge.shard")


@dataclass
class ShardConfig:
    inputs: list = field(default_factory=list)  # (path, row group) work items: parquet row groups, whole URL lists
    out: str = "data/shards"
    samples_per_shard: int = 10_000
    seed: int = 0
    image: ImageConfig = field(default_factory=ImageConfig)
    threads: int = 32  # transfers in flight per worker
    image_threads: int = 0  # threads per worker that decode, resize and encode; 0: the CPU count, at most 8
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
    page_col: str = None
    no_header: bool = False  # CSV/TSV URL lists without a header row: the *_col are 1-based positions
    near_dup_distance: int = None  # drop near-duplicate images within this many bits of perceptual hash
    progress_every: float = 10.0  # seconds between whole-stage progress lines; 0: none


def order_key(seed, uid):
    return hashlib.blake2b(f"{seed}:{uid}".encode(), digest_size=8).digest()


def shard_of(seed, uid, n_shards):
    return int.from_bytes(order_key(seed, uid)[:4], "big") % n_shards


# The pairs between the two passes.
SPILLED = pa.schema([pa.field("uid", pa.string()), pa.field("url", pa.string()), pa.field("text", pa.string()),
                     pa.field("page_url", pa.string()), pa.field("lang", pa.string()),
                     pa.field("queries", pa.list_(pa.string()))])


def pair_batches(path, group, cols=(None, None, None), no_header=False, batch_size=8192):
    """(Arrow table with SPILLED's columns, {reason: unreadable rows}) batches of one work item:
    a row group of a pairs parquet (the crawl's, or any URL list), or a whole CSV, TSV or JSONL
    URL list read as the crawl reads it. Pairs without a uid get clipforge's (``schemas.pairs.uid``
    of URL and text); missing columns are null."""
    fmt = readers.url_list_format(path)
    if fmt != "parquet":
        for urls, texts, pages, bad, _ in readers.url_list_batches((path, fmt, group), cols, no_header, batch_size):
            urls, texts = urls.to_pylist(), texts.to_pylist()
            n = len(urls)
            yield pa.table({"uid": [pair_ids.uid(u, t) for u, t in zip(urls, texts)], "url": urls, "text": texts,
                            "page_url": pages, "lang": pa.nulls(n, pa.string()),
                            "queries": pa.nulls(n, pa.list_(pa.string()))}, schema=SPILLED), bad
        return
    pf = readers.open_parquet(path)
    names = pf.schema_arrow.names
    url_c, text_c, page_c = readers.pick_columns(names, *cols, path)
    cols = [c for c in dict.fromkeys([url_c, text_c, page_c, "uid", "lang", "queries"]) if c in names]
    for batch in pf.iter_batches(batch_size=batch_size, row_groups=[group], columns=cols):
        n = batch.num_rows
        urls = [u or "" for u in batch.column(url_c).to_pylist()]
        texts = [t or "" for t in batch.column(text_c).to_pylist()]
        given = batch.column("uid").to_pylist() if "uid" in names else [None] * n
        uids = [g or pair_ids.uid(u, t) for g, u, t in zip(given, urls, texts)]

        def col(name, type_):
            if name not in names:
                return pa.nulls(n, type_)
            return batch.column(name).cast(type_)

        yield pa.table({"uid": uids, "url": urls, "text": texts, "page_url": col(page_c, pa.string()),
                        "lang": col("lang", pa.string()), "queries": col("queries", pa.list_(pa.string()))},
                       schema=SPILLED), {}


class SpillPairs(beam.DoFn):
    """(index, (path, row group)) -> the pairs written to their shards' spill partitions;
    yields the number read and the rows that could not be read, by reason."""

    def __init__(self, cfg, n_shards):
        self.cfg, self.n_shards = cfg, n_shards

    def process(self, work):
        index, (path, group) = work
        root, n, flushes, buffer, buffered, bad = spill_dir(self.cfg.out), 0, 0, [], 0, {}
        cols = (self.cfg.url_col, self.cfg.text_col, self.cfg.page_col)
        for table, unreadable in pair_batches(path, group, cols, self.cfg.no_header):
            for reason, k in unreadable.items():
                bad[f"drop_{reason}"] = bad.get(f"drop_{reason}", 0) + k
            buffer.append(table)
            buffered += table.num_rows
            if buffered >= 100_000:
                self._spill(root, index, flushes, buffer)
                n, buffer, buffered, flushes = n + buffered, [], 0, flushes + 1
        if buffer:
            self._spill(root, index, flushes, buffer)
            n += buffered
        yield {"input": n, **bad}

    def _spill(self, root, index, flush, tables):
        table = pa.concat_tables(tables)
        seed, n_shards = self.cfg.seed, self.n_shards
        parts = [shard_of(seed, u, n_shards) for u in table.column("uid").to_pylist()]
        spill.write_partitioned(root, f"i{index:06d}-f{flush:04d}", table, parts)


def spill_dir(out):
    return FileSystems.join(out, "_spill")


class FetchShard(beam.DoFn):
    def __init__(self, cfg, resolver=system_resolver):
        self.cfg, self.resolver = cfg, resolver

    def setup(self):
        c = self.cfg
        self.fetcher = Fetcher(connect_timeout=c.connect_timeout, read_timeout=c.read_timeout, deadline=c.deadline,
                               max_bytes=c.max_bytes, max_redirects=c.max_redirects, retries=c.retries,
                               per_host=c.per_host, user_agent=c.user_agent, allow_private=c.allow_private,
                               respect_noai=c.respect_noai, resolver=self.resolver)
        self.image_threads = image_threads(c)
        self.pool = ThreadPoolExecutor(max_workers=self.image_threads, thread_name_prefix="image")

    def teardown(self):
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _image(self, body):
        out = process(body, self.cfg.image)
        if isinstance(out, str):
            return out, None, None
        return "success", None, out

    def _outcomes(self, pairs):
        """(status, error, image) of each pair, in the pairs' order. libcurl fetches (``threads``
        transfers at once); the image threads decode, check, resize and encode as bodies arrive.
        Held at once: the transfers, at most 2 x image threads bodies waiting for a thread, and
        the encoded images that finished before an earlier pair."""
        waiting = threading.BoundedSemaphore(2 * self.image_threads)
        results, next_pos = {}, 0

        def release(_):
            waiting.release()

        for pos, got in self.fetcher.fetch_many(enumerate(p["url"] for p in pairs), in_flight=self.cfg.threads):
            if got.reason:
                results[pos] = (got.reason, got.error, None)
            else:
                waiting.acquire()
                results[pos] = self.pool.submit(self._image, got.body)
                results[pos].add_done_callback(release)
            while next_pos in results and _ready(results[next_pos]):
                yield _value(results.pop(next_pos))
                next_pos += 1
        while next_pos < len(pairs):
            yield _value(results.pop(next_pos))
            next_pos += 1

    def process(self, index):
        name = f"{index:06d}"
        index_path = FileSystems.join(self.cfg.out, name + ".parquet")
        if FileSystems.exists(index_path):  # finished by an earlier run
            spill.delete_partition(spill_dir(self.cfg.out), index)
            yield {"shards_reused": 1}
            return
        t0 = time.monotonic()
        pairs = spill.read_partition(spill_dir(self.cfg.out), index, SPILLED).to_pylist()
        pairs.sort(key=lambda p: order_key(self.cfg.seed, p["uid"]))
        rows = []
        local = "://" not in self.cfg.out
        fd, tmp_tar = tempfile.mkstemp(suffix=".tmp", prefix=f"{name}.tar.", dir=self.cfg.out if local else None)
        os.close(fd)
        try:
            with TarSink(tmp_tar) as sink:
                for pos, (pair, (status, error, img)) in enumerate(zip(pairs, self._outcomes(pairs))):
                    key = f"{index:06d}{pos:06d}"
                    row = {"key": key, "uid": pair["uid"], "url": pair["url"], "text": pair["text"],
                           "page_url": pair["page_url"], "lang": pair["lang"], "queries": pair["queries"],
                           "status": status, "error": error, "original_width": None, "original_height": None,
                           "width": None, "height": None, "sha256": None, "jpg_bytes": None, "shard": name + ".tar",
                           "phash": None}
                    if img is not None:
                        row.update(original_width=img.original_width, original_height=img.original_height,
                                   width=img.width, height=img.height, sha256=img.sha256, jpg_bytes=len(img.jpg),
                                   phash=img.phash)
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
        spill.delete_partition(spill_dir(self.cfg.out), index)
        yield {"shards_written": 1}


def image_threads(cfg):
    """Threads per worker that decode, resize and encode (they release the GIL)."""
    return cfg.image_threads or max(1, min(8, os.cpu_count() or 1))


def _ready(result):
    return not isinstance(result, Future) or result.done()


def _value(result):
    return result.result() if isinstance(result, Future) else result


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


def build(p, cfg, n_pairs, stats_path):
    """Add the shard stage to ``p``; its counts go to ``stats_path``."""
    n_shards = max(1, math.ceil(n_pairs / cfg.samples_per_shard))
    read = (p | "WorkItems" >> beam.Create(list(enumerate(cfg.inputs)))
            | "SpreadInputs" >> beam.Reshuffle()
            | "SpillPairs" >> beam.ParDo(SpillPairs(cfg, n_shards)))
    fetched = (read | "AfterSpill" >> spill.Fanout(n_shards)
               | "FetchShard" >> beam.ParDo(FetchShard(cfg)))
    return (read, fetched) | "Counts" >> FinishWithStats(stats_path)
