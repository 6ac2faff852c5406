"""``clipforge shard --downloader img2dataset``: the same pairs fetched by img2dataset, for users
who already run it, brought to clipforge's shard layout and funnel.

img2dataset is given the matching settings (size, resize mode, minimum size, aspect ratio,
pixel cap, JPEG quality, samples per shard, timeout, retries, noai directives). Its shards are
then rewritten with clipforge's keys, KEY.json (sizes and SHA-256) and per-shard index, its
failure messages mapped to clipforge's reasons, and the set finished like clipforge's own
(duplicate images dropped, sizes.json, shard_stats.json).

What img2dataset does not do is not done here either: there is no overall deadline (a body
that never ends holds a worker) and redirects are followed without the address check. The
first hop of every URL is checked by clipforge's guard before img2dataset sees the list.
"""

import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import simplejpeg

from clipforge.pipeline import readers
from clipforge.pipeline.fetch import Guard, NameResolutionError, RefusedAddress
from clipforge.pipeline.shard import order_key, publish_shard
from clipforge.schemas import pairs as pair_ids
from clipforge.schemas.files import write_stats
from clipforge.schemas.phash import phash
from clipforge.schemas.tars import TarSink
from clipforge.schemas.validate import read_tar_samples


def reason_of(status, message):
    """clipforge's reason for one of img2dataset's failures."""
    message = (message or "").lower()
    if status == "failed_to_resize":
        if "too small" in message:
            return "image_too_small"
        if "aspect ratio" in message:
            return "aspect_ratio_too_large"
        if "area too large" in message:
            return "image_too_many_pixels"
        return "image_undecodable"
    m = re.search(r"http error (\d{3})", message)
    if m:
        return f"http_{m.group(1)}"
    if "timed out" in message or "timeout" in message:
        return "timeout"
    if "x-robots-tag" in message or "noai" in message:
        return "robots_noai"
    if "redirect" in message:
        return "too_many_redirects"
    return "connect_error"


def run(cfg, beam_flags=()):
    from img2dataset import download

    from clipforge.pipeline.shard_stage import finish

    pairs = []
    for path, group in cfg.inputs:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        url_c = readers.pick_column(names, cfg.url_col, readers.URL_COLUMNS, "url", path)
        text_c = readers.pick_column(names, cfg.text_col, readers.TEXT_COLUMNS, "text", path)
        cols = [c for c in dict.fromkeys([url_c, text_c, "uid", "page_url", "lang", "queries"]) if c in names]
        for row in pf.read_row_group(group, columns=cols).to_pylist():
            url, text = row.get(url_c) or "", row.get(text_c) or ""
            pairs.append({"uid": row.get("uid") or pair_ids.uid(url, text), "url": url, "text": text,
                          "page_url": row.get("page_url"), "lang": row.get("lang"), "queries": row.get("queries")})
    pairs.sort(key=lambda p: order_key(cfg.seed, p["uid"]))  # the same spread across shards as clipforge's
    guard = Guard(allow_private=cfg.allow_private)
    refused = {}
    for p in pairs:
        try:
            parts = urlsplit(p["url"])
            guard.addresses(parts.hostname or "", parts.port or 80)
        except RefusedAddress as e:
            refused[p["uid"]] = ("private_address", str(e))
        except (NameResolutionError, ValueError) as e:
            refused[p["uid"]] = ("dns_error", str(e))
    by_uid = {p["uid"]: p for p in pairs}
    os.makedirs(cfg.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="img2dataset-", dir=cfg.out)
    try:
        todo = [p for p in pairs if p["uid"] not in refused]
        pq.write_table(pa.table({"url": [p["url"] for p in todo], "text": [p["text"] for p in todo],
                                 "uid": [p["uid"] for p in todo]}), os.path.join(work, "list.parquet"))
        img = cfg.image
        download(url_list=os.path.join(work, "list.parquet"), input_format="parquet", url_col="url",
                 caption_col="text", save_additional_columns=["uid"], output_format="webdataset",
                 output_folder=os.path.join(work, "out"), processes_count=os.cpu_count() or 1,
                 thread_count=cfg.threads, image_size=img.image_size, resize_mode=img.resize_mode,
                 resize_only_if_bigger=False, encode_quality=img.quality, min_image_size=img.min_size,
                 max_aspect_ratio=img.max_aspect_ratio, max_image_area=img.max_pixels,
                 number_sample_per_shard=cfg.samples_per_shard, timeout=int(max(1, cfg.read_timeout)),
                 retries=cfg.retries, user_agent_token="clipforge",
                 disallowed_header_directives=["noai", "noimageai"] if cfg.respect_noai else [],
                 enable_wandb=False, distributor="multiprocessing")
        index = 0
        for parquet in sorted(glob.glob(os.path.join(work, "out", "*.parquet"))):
            rows = pq.read_table(parquet).to_pylist()
            samples = {s["__key__"]: s for s in read_tar_samples(parquet[: -len(".parquet")] + ".tar")}
            _convert(cfg.out, index, rows, samples, by_uid)
            index += 1
        if refused:
            _refused_shard(cfg.out, index, [by_uid[u] for u in refused], refused)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stats = finish(cfg.out)
    stats["extra"]["downloader"] = "img2dataset"
    write_stats(os.path.join(cfg.out, "shard_stats.json"), stats)
    return stats


def _phash_of(jpg):
    """schemas.phash of img2dataset's JPEG (its luma, decoded by libjpeg-turbo); None if damaged."""
    try:
        return phash(simplejpeg.decode_jpeg(jpg, "gray")[:, :, 0])
    except (ValueError, RuntimeError):
        return None


def _row(key, name, pair, status, error):
    return {"key": key, "uid": pair["uid"], "url": pair["url"], "text": pair["text"], "page_url": pair["page_url"],
            "lang": pair["lang"], "queries": pair["queries"], "status": status, "error": error,
            "original_width": None, "original_height": None, "width": None, "height": None, "sha256": None,
            "jpg_bytes": None, "shard": name + ".tar", "phash": None}


def _convert(out, index, rows, samples, by_uid):
    name = f"{index:06d}"
    fd, tmp = tempfile.mkstemp(suffix=".tmp", prefix=f"{name}.tar.", dir=out)
    os.close(fd)
    converted = []
    with TarSink(tmp) as sink:
        for pos, r in enumerate(rows):
            key = f"{index:06d}{pos:06d}"
            pair = by_uid[r["uid"]]
            sample = samples.get(r["key"])
            if r["status"] != "success" or sample is None:
                converted.append(_row(key, name, pair, reason_of(r["status"], r.get("error_message")),
                                      r.get("error_message")))
                continue
            jpg = sample["jpg"]
            row = _row(key, name, pair, "success", None)
            row.update(original_width=r["original_width"], original_height=r["original_height"], width=r["width"],
                       height=r["height"], sha256=hashlib.sha256(jpg).hexdigest(), jpg_bytes=len(jpg), phash=_phash_of(jpg))
            meta = {k: row[k] for k in ("key", "uid", "url", "text", "page_url", "lang", "queries", "original_width",
                                        "original_height", "width", "height", "sha256")}
            sink.write({"__key__": key, "jpg": jpg, "txt": pair["text"],
                        "json": json.dumps(meta, ensure_ascii=False).encode()})
            converted.append(row)
    publish_shard(out, name, tmp, converted)


def _refused_shard(out, index, pairs, refused):
    name = f"{index:06d}"
    fd, tmp = tempfile.mkstemp(suffix=".tmp", prefix=f"{name}.tar.", dir=out)
    os.close(fd)
    with TarSink(tmp):
        pass
    rows = [_row(f"{index:06d}{pos:06d}", name, p, *refused[p["uid"]]) for pos, p in enumerate(pairs)]
    publish_shard(out, name, tmp, rows)
