"""The shard stage as a command: find the pairs (the crawl's, or URL lists as the crawl reads
them), run the pipeline, then finish the shard set: drop duplicate images across shards, write
sizes.json and shard_stats.json."""

import dataclasses
import io
import json
import logging
import os
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from clipforge import limits
from clipforge.beam import absolute, make_pipeline, read_stats, run_pipeline
from clipforge.errors import InputError
from clipforge.pipeline import progress, readers, spill
from clipforge.pipeline.shard import ShardConfig, build, spill_dir
from clipforge.schemas.files import Funnel, write_sizes, write_stats
from clipforge.schemas.phash import HashIndex, distance
from clipforge.schemas.records import SHARD_INDEX
from clipforge.schemas.validate import read_tar_samples
from clipforge.schemas.tars import TarSink

log = logging.getLogger("clipforge.shard")


def expand_pairs(patterns, url_col=None, text_col=None, page_col=None, no_header=False):
    """(path, row group) work items and the number of pairs, from directories of the crawl's
    pairs, parquet files, or CSV/TSV/JSONL URL lists (read as the crawl reads them; a text list
    is one work item, its rows estimated by counting its lines)."""
    items, total = [], 0
    for pattern in patterns:
        local = "://" not in pattern
        if os.path.isdir(pattern) if local else FileSystems.exists(pattern) and not readers.url_list_format(pattern):
            pattern = FileSystems.join(pattern, "pairs-*.parquet")
        try:
            found = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
        except Exception as e:
            raise InputError(f"--pairs {pattern}: {e}") from None
        if not found:
            raise InputError(f"--pairs {pattern}: no such file (a pairs directory, parquet files or URL lists)")
        for path in found:
            fmt = readers.url_list_format(path)
            if fmt is None:
                raise InputError(f"--pairs {path}: unknown format (expected a pairs directory, .parquet, "
                                 ".csv, .tsv or .jsonl, optionally compressed)")
            if fmt == "parquet":
                try:
                    pf = readers.open_parquet(path)
                except Exception as e:
                    raise InputError(f"--pairs {path}: not a readable parquet file ({e})") from None
            try:
                readers.url_list_columns(path, fmt, url_col, text_col, page_col, no_header)
            except ValueError as e:
                raise InputError(f"--pairs {e}") from None
            if fmt == "parquet":
                items.extend((path, g) for g in range(pf.metadata.num_row_groups))
                total += pf.metadata.num_rows
            else:
                items.append((path, 0))
                total += max(0, readers.count_lines(path) - (0 if no_header or fmt == "jsonl" else 1))
    return items, total


def run(cfg: ShardConfig, n_pairs, beam_flags=()):
    t0 = time.time()
    # Workers of a distributed runner do not share the launcher's working directory.
    cfg = dataclasses.replace(cfg, out=absolute(cfg.out), inputs=[(absolute(p), g) for p, g in cfg.inputs])
    if not FileSystems.exists(cfg.out):
        FileSystems.mkdirs(cfg.out)
    _remove_leftovers(cfg.out)
    stats_path = FileSystems.join(cfg.out, "_counts.json")
    p = make_pipeline(list(beam_flags))
    build(p, cfg, n_pairs, stats_path)
    n_shards = max(1, -(-n_pairs // cfg.samples_per_shard))
    with progress.ProgressLine(_describe(cfg.out, n_shards), interval=cfg.progress_every,
                               quiet=cfg.progress_every <= 0):
        run_pipeline(p)
    c = read_stats(stats_path)
    FileSystems.delete([stats_path])
    if FileSystems.exists(spill_dir(cfg.out)):
        FileSystems.delete([spill_dir(cfg.out)])
    stats = finish(cfg.out, {k[len("drop_"):]: v for k, v in c.items() if k.startswith("drop_") and v},
                   near_dup_distance=cfg.near_dup_distance)
    stats["extra"].update(shards_written=c.get("shards_written", 0), shards_reused=c.get("shards_reused", 0),
                          seconds=round(time.time() - t0, 2), settings=_settings(cfg),
                          limits={"max_csv_field_chars": limits.MAX_CSV_FIELD_CHARS})
    write_stats(FileSystems.join(cfg.out, "shard_stats.json"), stats)
    return stats


def _shard_indexes(out):
    return {m.path for m in FileSystems.match([FileSystems.join(out, "[0-9]*.parquet")])[0].metadata_list}


def _describe(out, n_shards):
    """The whole-stage progress line, from the shard indexes published so far."""
    start, before, seen = time.monotonic(), _shard_indexes(out), {}

    def describe():
        for path in _shard_indexes(out) - before - set(seen):
            try:
                t = spill.read_table(path, columns=["status"])
            except Exception:  # being replaced
                continue
            seen[path] = (t.num_rows, pc.sum(pc.equal(t["status"], "success")).as_py() or 0)
        pairs = sum(v[0] for v in seen.values())
        images = sum(v[1] for v in seen.values())
        elapsed = time.monotonic() - start
        done, todo = len(seen), max(1, n_shards - len(before))
        return (f"shard: {progress.bar((done + len(before)) / n_shards)} {done + len(before)}/{n_shards} shards"
                f"{f' ({len(before)} reused)' if before else ''}, {pairs:,} pairs tried "
                f"({pairs / max(elapsed, 1e-9):,.0f}/s), {images:,} images ({images / max(elapsed, 1e-9):,.0f}/s), "
                f"{progress.eta(elapsed, done / todo) if done else 'ETA ?'}")
    return describe


def _settings(cfg):
    i = cfg.image
    return {"image_size": i.image_size, "resize_mode": i.resize_mode, "min_size": i.min_size,
            "max_aspect_ratio": i.max_aspect_ratio, "max_pixels": i.max_pixels, "samples_per_shard": cfg.samples_per_shard,
            "seed": cfg.seed, "threads": cfg.threads, "image_threads": cfg.image_threads, "per_host": cfg.per_host,
            "deadline": cfg.deadline, "near_dup_distance": cfg.near_dup_distance,
            "max_bytes": cfg.max_bytes, "allow_private_hosts": cfg.allow_private, "respect_noai": cfg.respect_noai}


def _remove_leftovers(out):
    """Temporary files of a run that was killed: their shards are redone."""
    for path in (spill_dir(out), FileSystems.join(out, "_counts.json")):
        if FileSystems.exists(path):
            FileSystems.delete([path])
    if "://" in out:
        return
    for name in os.listdir(out):
        if ".tmp" in name:
            os.unlink(os.path.join(out, name))


def finish(out, unread=None, near_dup_distance=None):
    """Drop duplicate images across shards (the smallest uid keeps its sample), then, when
    ``near_dup_distance`` is given, near-duplicates (perceptual hashes within that Hamming
    distance: ``near_duplicate_owners``); write sizes.json, and return the funnel computed from
    the shard indexes (so a resumed run counts the same), plus ``unread``: {reason: rows of the
    input that could not be read as pairs}.

    Memory: 16 bytes per stored image (a 64-bit prefix of its hash and where it is), plus one
    shard index at a time; with near-duplicates, 24 more (the perceptual hash and its index)."""
    paths = sorted(m.path for m in FileSystems.match([FileSystems.join(out, "[0-9]*.parquet")])[0].metadata_list)
    owner = _duplicate_owners(paths)  # {sha256: owning uid}, only for images stored more than once
    near = near_duplicate_owners(paths, owner, near_dup_distance) if near_dup_distance is not None else {}
    sizes, funnel = {}, Funnel("shard", unit="pair")
    for reason, n in sorted((unread or {}).items()):
        funnel.add_input(n)
        funnel.drop(reason, n)
    for path in paths:
        t = spill.read_table(path)
        statuses, shas, uids = t["status"].to_pylist(), t["sha256"].to_pylist(), t["uid"].to_pylist()
        losers = {i for i, (s, sha, uid) in enumerate(zip(statuses, shas, uids))
                  if s == "success" and sha in owner and owner[sha] != uid}
        near_losers = {i for i in near.get(path, {}) if i not in losers}
        tar = path[: -len(".parquet")] + ".tar"
        if losers or near_losers:
            rows = t.to_pylist()
            _rewrite_without(tar, {rows[i]["key"] for i in losers | near_losers})
            for i in losers:
                rows[i].update(status="duplicate_image", error=f"same image as uid {owner[rows[i]['sha256']]}")
                statuses[i] = "duplicate_image"
            for i in near_losers:
                kept, dist = near[path][i]
                rows[i].update(status="near_duplicate_image",
                               error=f"perceptual hash {dist} bits from uid {kept}'s")
                statuses[i] = "near_duplicate_image"
            buf = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_INDEX), buf, compression="zstd")
            with FileSystems.create(path + ".tmp") as f:
                f.write(buf.getvalue())
            FileSystems.rename([path + ".tmp"], [path])
        counts = Counter(statuses)
        funnel.add_input(len(statuses))
        funnel.keep(counts.pop("success", 0))
        for reason, n in counts.items():
            funnel.drop(reason, n)
        sizes[os.path.basename(tar)] = sum(s == "success" for s in statuses)
    write_sizes(os.path.join(out, "sizes.json"), sizes) if "://" not in out else _write_remote_sizes(out, sizes)
    funnel.extra = {"shards": len(sizes), "samples": sum(sizes.values()),
                    "tar_bytes": sum(FileSystems.match([FileSystems.join(out, n)])[0].metadata_list[0].size_in_bytes
                                     for n in sizes)}
    return funnel.to_dict()


def _duplicate_owners(paths):
    """{sha256: smallest uid} for the images that more than one sample of the set holds."""
    prefixes, where = [], []
    for f, path in enumerate(paths):
        t = spill.read_table(path, columns=["status", "sha256"])
        for row, (status, sha) in enumerate(zip(t["status"].to_pylist(), t["sha256"].to_pylist())):
            if status == "success":
                prefixes.append(int(sha[:16], 16))
                where.append((f << 32) | row)
    if not prefixes:
        return {}
    prefixes = np.array(prefixes, dtype=np.uint64)
    where = np.array(where, dtype=np.int64)
    order = np.argsort(prefixes, kind="stable")
    sorted_prefixes = prefixes[order]
    same = sorted_prefixes[1:] == sorted_prefixes[:-1]
    suspect = np.zeros(len(order), dtype=bool)
    suspect[1:] |= same
    suspect[:-1] |= same
    if not suspect.any():
        return {}
    wanted = {}
    for w in where[order[suspect]]:
        wanted.setdefault(int(w) >> 32, []).append(int(w) & 0xFFFFFFFF)
    owners, seen = {}, {}
    for f, rows in wanted.items():
        t = spill.read_table(paths[f], columns=["sha256", "uid"])
        shas, uids = t["sha256"].to_pylist(), t["uid"].to_pylist()
        for row in rows:
            sha, uid = shas[row], uids[row]
            seen[sha] = seen.get(sha, 0) + 1
            if sha not in owners or uid < owners[sha]:
                owners[sha] = uid
    return {sha: uid for sha, uid in owners.items() if seen[sha] > 1}


def near_duplicate_owners(paths, exact_owner, max_distance):
    """{index path: {row: (kept uid, distance)}} for the stored images to drop as near-duplicates:
    images whose perceptual hashes are within ``max_distance`` bits. Within each group of images
    linked by such pairs, images are taken in uid order; each is kept unless it is within the
    distance of one already kept (so the smallest uid always stays, and no chain of small steps
    drops two images that are far apart). Exact duplicates (``exact_owner``) are left to the
    exact pass, and images without a hash (indexes of version 2) are never dropped."""
    hashes, where = [], []
    for f, path in enumerate(paths):
        try:
            t = spill.read_table(path, columns=["status", "sha256", "uid", "phash"])
        except (KeyError, pa.ArrowInvalid):  # an index of version 2: no perceptual hashes
            continue
        for row, (status, sha, uid, h) in enumerate(zip(t["status"].to_pylist(), t["sha256"].to_pylist(),
                                                       t["uid"].to_pylist(), t["phash"].to_pylist())):
            if status == "success" and h is not None and not (sha in exact_owner and exact_owner[sha] != uid):
                hashes.append(h)
                where.append((f << 32) | row)
    if len(hashes) < 2:
        return {}
    hashes, where = np.array(hashes, dtype=np.int64), np.array(where, dtype=np.int64)
    values, inverse = np.unique(hashes, return_inverse=True)
    qi, di, _ = HashIndex(values).search(values, max_distance)
    parent = np.arange(len(values))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(qi[qi < di].tolist(), di[qi < di].tolist()):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(i) for i in range(len(values))])[inverse]  # each image's group
    size = np.bincount(roots, minlength=len(values))
    grouped = np.nonzero(size[roots] > 1)[0]
    if not len(grouped):
        return {}
    wanted = {}
    for i in grouped.tolist():
        wanted.setdefault(int(where[i]) >> 32, []).append(i)
    uid_of = {}
    for f, members in wanted.items():
        uids = spill.read_table(paths[f], columns=["uid"])["uid"].to_pylist()
        for i in members:
            uid_of[i] = uids[int(where[i]) & 0xFFFFFFFF]
    groups = {}
    for i in grouped.tolist():
        groups.setdefault(int(roots[i]), []).append(i)
    drop = {}
    for members in groups.values():
        kept = []
        for i in sorted(members, key=lambda m: uid_of[m]):
            near = [(distance(hashes[i], hashes[k]), k) for k in kept]
            close = [(d, k) for d, k in near if d <= max_distance]
            if close:
                d, k = min(close)
                drop.setdefault(paths[int(where[i]) >> 32], {})[int(where[i]) & 0xFFFFFFFF] = (uid_of[k], d)
            else:
                kept.append(i)
    return drop


def _write_remote_sizes(out, sizes):
    with FileSystems.create(FileSystems.join(out, "sizes.json")) as f:
        f.write(json.dumps(dict(sorted(sizes.items())), indent=1).encode())


def _rewrite_without(tar, keys):
    tmp = tar + ".tmp"
    with TarSink(tmp) as sink:
        for sample in read_tar_samples(tar):
            if sample["__key__"] not in keys:
                sink.write(sample)
    os.replace(tmp, tar)
