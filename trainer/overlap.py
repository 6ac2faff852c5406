"""Overlap between a shard set and evaluation sets: CLIP's data-overlap analysis (section 5).

``clipforge overlap --shards DIR --eval DIR [DIR ...] --out DIR [--max-distance BITS]`` hashes
every evaluation image with the shard index's perceptual hash (``schemas.phash``), uncropped and
cropped by 0, 2.5 and 5% on each side (``crop_probes``: 81 hashes, so a copy another site
cropped is still close to one of them), finds the shard samples within ``--max-distance`` bits
of any of them (multi-index search, not all pairs), keeps those whose pixels agree (``similarity``
of the matching crop and the stored image, in colour: the hash sees only grey), and writes

- ``DIR/overlap.json``: per evaluation set, its images, how many have a near-duplicate in the
  shards, unreadable files by reason, and every pair (evaluation image, shard sample key,
  distance, similarity), closest first;
- ``DIR/exclude.txt``: the shard sample keys to leave out of training, one per line (what
  ``clipforge train --exclude`` reads);
- ``DIR/overlap.png``: the closest pairs side by side, since a person judges duplicates by eye.

Evaluation sets are ImageFolder trees (``ROOT/CLASS/IMAGE``) or directories of labelled
WebDataset shards, as ``clipforge eval`` reads them. Shard indexes written before the hash
existed (version 2) have no ``phash``: their samples cannot be checked and are counted.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
import warnings
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from clipforge.errors import InputError, MissingInput
from clipforge.schemas.phash import CROP_GRID, HashIndex, crop_probes
from clipforge.schemas.validate import read_tar_samples
from clipforge.trainer.data import sample_image
from clipforge.trainer.evalsets import image_folder

# A pair is a copy when the hashes are within DEFAULT_MAX_DISTANCE bits (of any crop probe) and
# the pixels agree: ``similarity`` at least DEFAULT_MIN_SIMILARITY. Measured on 300 generated
# photos and their copies (resized 0.5-2x, cropped up to 5% per side, brightness within 10%, JPEG
# quality 60-95) against 2,000 other photos (tests/test_phash.py): every copy's hash was within
# 4 bits of a probe, with similarity 0.992 or more; the hash alone paired 6 evaluation photos
# with other photos at 8 bits (20 pairs at 10), all below 0.76 similarity. On the demo's stored
# 64 px shapes the hash is looser (a planted copy at 6 bits, and many different shapes of a like
# outline within 7), and the colour check keeps the planted copies (0.97 or more) and drops the
# rest but for shapes of the same colour and outline that a person also pairs. 7 is also the
# widest distance the multi-index search serves at its cheapest (each chunk probed within 1 bit).
DEFAULT_MAX_DISTANCE = 7  # the largest distance at which each 16-bit chunk is probed within 1 bit (see HashIndex)
DEFAULT_MIN_SIMILARITY = 0.95
THUMB = 16
MAX_EVAL_PIXELS = 50_000_000  # the decompression-bomb guard, as the shard stage's
PLOT_PAIRS = 16


def shard_hashes(shards_dir):
    """(keys, hashes, tar of each key, samples without a hash) of a shard set's stored samples."""
    root = Path(shards_dir)
    indexes = sorted(root.glob("[0-9]*.parquet"))
    if not indexes:
        raise MissingInput(f"{root}: no shard indexes (NNNNNN.parquet); give a directory `clipforge shard` wrote")
    keys, hashes, tars, unhashed = [], [], [], 0
    for path in indexes:
        try:
            names = pq.read_schema(path).names
            cols = ["key", "status", "shard"] + (["phash"] if "phash" in names else [])
            t = pq.read_table(path, columns=cols)
        except Exception as e:
            raise InputError(f"{path}: not a readable shard index ({e})") from None
        ok = [i for i, s in enumerate(t["status"].to_pylist()) if s == "success"]
        if "phash" not in names:
            unhashed += len(ok)
            continue
        k, h, s = t["key"].to_pylist(), t["phash"].to_pylist(), t["shard"].to_pylist()
        for i in ok:
            if h[i] is None:
                unhashed += 1
            else:
                keys.append(k[i])
                hashes.append(h[i])
                tars.append(str(root / s[i]))
    return keys, np.array(hashes, dtype=np.int64), tars, unhashed


def _open(data):
    """An RGB array of untrusted image bytes (EXIF orientation applied), or the reason it has none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_EVAL_PIXELS:
                return None, "image_too_many_pixels"
            img = ImageOps.exif_transpose(img).convert("RGB")
            return np.asarray(img), None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, "image_too_many_pixels"
    except Exception:
        return None, "image_undecodable"


def eval_images(path):
    """(name, image bytes or None, reason) of every image of an evaluation set: an ImageFolder
    tree (name: CLASS/FILE) or a directory of labelled shards (name: SHARD:KEY)."""
    root = Path(path)
    if not root.is_dir():
        raise MissingInput(f"{root}: no such directory (an ImageFolder tree or a directory of shards)")
    tars = sorted(root.glob("*.tar"))
    if tars:
        for tar in tars:
            try:
                for sample in read_tar_samples(tar):
                    data = sample_image(sample)
                    yield f"{tar.name}:{sample['__key__']}", data, None if data else "no_image"
            except (tarfile.TarError, OSError, ValueError) as e:
                yield f"{tar.name}", None, f"unreadable_shard ({e})"
        return
    files, _, _ = image_folder(root)
    for f in files:
        try:
            yield str(f.relative_to(root)), f.read_bytes(), None
        except OSError:
            yield str(f.relative_to(root)), None, "unreadable_file"


def probe_crop(pixels, probe, grid=CROP_GRID):
    """The part of an image that ``crop_probes``' hash number ``probe`` was computed from."""
    n = len(grid)
    left, top, right, bottom = (grid[probe // n ** k % n] for k in (3, 2, 1, 0))
    h, w = pixels.shape[:2]
    return pixels[int(top * h):h - int(bottom * h), int(left * w):w - int(right * w)]


def similarity(a, b, size=THUMB):
    """Correlation of two RGB images shrunk to ``size`` x ``size`` (area averaging), after removing
    each one's mean over all channels: 1 for the same picture, unchanged by brightness and
    contrast, lower when colours or layout differ (the perceptual hash sees grey only)."""
    x = cv2.resize(np.ascontiguousarray(a), (size, size), interpolation=cv2.INTER_AREA).astype(np.float64)
    y = cv2.resize(np.ascontiguousarray(b), (size, size), interpolation=cv2.INTER_AREA).astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    norm = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / norm) if norm > 0 else float(np.array_equal(x, y))


def find_overlap(shards_dir, eval_dirs, out_dir, max_distance=DEFAULT_MAX_DISTANCE,
                 min_similarity=DEFAULT_MIN_SIMILARITY, log=print):
    """Write overlap.json, exclude.txt and overlap.png; return the report."""
    t0 = time.monotonic()
    keys, hashes, tars, unhashed = shard_hashes(shards_dir)
    index = HashIndex(hashes)
    log(f"overlap: {len(keys):,} shard images indexed in {time.monotonic() - t0:.1f} s"
        + (f" ({unhashed:,} without a perceptual hash: shard indexes from before it)" if unhashed else ""))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"shards": str(shards_dir), "max_distance": max_distance, "min_similarity": min_similarity,
              "shard_images": len(keys), "shard_images_without_hash": unhashed, "sets": {}}
    exclude, closest = set(), []
    for eval_dir in eval_dirs:
        names, probes, bad = [], [], Counter()
        last = time.monotonic()
        for n, (name, data, reason) in enumerate(eval_images(eval_dir), 1):
            arr = None
            if data is not None:
                arr, reason = _open(data)
            if arr is None:
                bad[reason.split(" (")[0]] += 1
                continue
            names.append(name)
            probes.append(crop_probes(arr))
            if time.monotonic() - last > 10:
                log(f"overlap: {eval_dir}: {n:,} images hashed")
                last = time.monotonic()
        per_image = len(probes[0]) if probes else 1
        qi, si, dist = index.search(np.array(probes, dtype=np.int64).reshape(-1), max_distance)
        best = {}  # (eval image, shard sample) -> (smallest distance over the probes, that probe)
        for q, s, d in zip(qi.tolist(), si.tolist(), dist.tolist()):
            pair = (q // per_image, s)
            if pair not in best or d < best[pair][0]:
                best[pair] = (d, q % per_image)
        confirmed = _confirm(best, eval_dir, names, keys, tars, min_similarity)
        pairs = sorted(({"eval": names[q], "key": keys[s], "distance": d, "similarity": round(sim, 4)}
                        for (q, s), (d, sim) in confirmed.items()),
                       key=lambda p: (p["distance"], -p["similarity"], p["eval"], p["key"]))
        overlapping = len({p["eval"] for p in pairs})
        report["sets"][str(eval_dir)] = {"images": len(names), "unreadable": dict(bad), "with_overlap": overlapping,
                                         "overlap_fraction": round(overlapping / max(1, len(names)), 6),
                                         "hash_candidates": len(best), "pairs": pairs}
        exclude.update(p["key"] for p in pairs)
        for (q, s), (d, sim) in confirmed.items():
            closest.append((d, -sim, str(eval_dir), names[q], keys[s], tars[s]))
        log(f"overlap: {eval_dir}: {overlapping:,} of {len(names):,} images have a near-duplicate in the shards "
            f"({len(best):,} pairs within {max_distance} bits, {len(pairs):,} of them alike in colour and layout)")
    report["excluded_keys"] = len(exclude)
    report["seconds"] = round(time.monotonic() - t0, 2)
    _atomic_write(out / "exclude.txt", "".join(k + "\n" for k in sorted(exclude)))
    _atomic_write(out / "overlap.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    plot_pairs([(d, e, n, k, t) for d, _, e, n, k, t in sorted(closest)[:PLOT_PAIRS]], eval_dirs,
               out / "overlap.png", max_distance)
    return report


def _confirm(best, eval_dir, names, keys, tars, min_similarity):
    """{(eval image, shard sample): (distance, similarity)} for the hash candidates whose pixels
    agree: the evaluation image, cut as its closest probe was, against the stored image."""
    if not best:
        return {}
    shard_px = {}
    by_tar = {}
    for _, s in best:
        by_tar.setdefault(tars[s], set()).add(keys[s])
    for tar, wanted in by_tar.items():
        with tarfile.open(tar) as tf:
            for key in wanted:
                arr, _ = _open(tf.extractfile(f"{key}.jpg").read())
                shard_px[key] = arr
    wanted_eval = {names[q] for q, _ in best}
    eval_px = {name: _open(data)[0] for name, data, _ in eval_images(eval_dir) if name in wanted_eval and data}
    out = {}
    for (q, s), (d, probe) in best.items():
        a, b = eval_px.get(names[q]), shard_px.get(keys[s])
        if a is None or b is None:
            continue
        sim = similarity(probe_crop(a, probe), b)
        if sim >= min_similarity:
            out[(q, s)] = (d, sim)
    return out


def _atomic_write(path, text):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _shard_jpg(tar, key):
    with tarfile.open(tar) as tf:
        member = tf.getmember(f"{key}.jpg")
        return tf.extractfile(member).read()


def _eval_bytes(eval_dir, name):
    root = Path(eval_dir)
    if ":" in name and (root / name.split(":", 1)[0]).suffix == ".tar":
        tar, key = name.split(":", 1)
        for sample in read_tar_samples(root / tar):
            if sample["__key__"] == key:
                return sample_image(sample)
        return None
    return (root / name).read_bytes()


def plot_pairs(pairs, eval_dirs, path, max_distance):
    """The closest pairs, evaluation image beside the shard's, with their distance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, len(pairs))
    fig, axes = plt.subplots(rows, 2, figsize=(5, 2.4 * rows), squeeze=False)
    if not pairs:
        for ax in axes[0]:
            ax.axis("off")
        axes[0][0].set_title(f"no pair within {max_distance} bits", fontsize=9, loc="left")
    for row, (d, eval_dir, name, key, tar) in zip(axes, pairs):
        for ax, data, title in ((row[0], _eval_bytes(eval_dir, name), f"{Path(eval_dir).name}/{name}"),
                                (row[1], _shard_jpg(tar, key), f"shard sample {key} ({d} bits)")):
            arr, _ = _open(data) if data else (None, None)
            if arr is not None:
                ax.imshow(arr)
            ax.set_title(title[-40:], fontsize=7)
            ax.axis("off")
    fig.suptitle(f"closest evaluation images and shard samples (perceptual hash, within {max_distance} bits)",
                 fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def read_exclude(path):
    """The shard sample keys of an exclude file (``exclude.txt``), as a set."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MissingInput(f"{path}: no such exclude file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: {e}") from None
    keys = {x.strip() for x in lines if x.strip() and not x.startswith("#")}
    bad = [k for k in keys if not (k.isdigit() and len(k) == 12)]
    if bad:
        raise InputError(f"{path}: {bad[0]!r} is not a shard sample key (12 digits)")
    return keys
