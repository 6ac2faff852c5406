"""Streaming image–text batches from WebDataset shards, reproducible to the sample.

Shards are read with webdataset's tar reader (local paths, brace patterns, `pipe:` commands and
the URLs its `gopen` handles). What each rank and loader worker reads is a pure function of
(seed, epoch, rank, worker): shards are shuffled per epoch, and when their sizes are known
(`sizes.json` beside them) the shuffled sequence of samples is cut into rank x worker slots of
equal length (a slot reads a run of whole shards and at most a part of a shard at each end), so
every slot, and every rank, has the same number of samples and an epoch leaves out at most each
rank's last partial batch; without sizes, shards are dealt out round-robin (or, when there are
fewer shards than slots, every slot reads all shards and keeps every n-th sample); a seeded
shuffle buffer mixes samples; the random crop of each sample is seeded by its
position. In resampled mode each slot draws shards with replacement, endlessly.

Every item a worker yields carries its position in the worker's stream, so the trainer can
checkpoint the exact data position (`LoaderState`) and a resumed run sees the same batches.
PyTorch's DataLoader takes items from its workers round-robin; on resume, worker slots are
rotated so the round-robin continues where it stopped.

Decoding and augmentation run in the workers without torchvision: Pillow's JPEG draft mode
decodes at reduced scale, one `resize(box=...)` does crop and resize, and images travel as
uint8 (normalisation with CLIP's mean and std happens on the device, `normalize_images`).
Unusable samples are counted by reason and skipped.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipforge.errors import InputError, MissingInput, UserError
from clipforge.trainer.model import CLIP_MEAN, CLIP_STD

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class NoUsableSamples(UserError, RuntimeError):
    """Raised when a stream yields no usable sample (instead of waiting forever)."""


# --- shard lists ------------------------------------------------------------------------------

def expand_shards(spec: str | list[str]) -> list[str]:
    """Shard URLs from `a.tar::b/{000..009}.tar`, a directory of .tar files, globs, or `pipe:` URLs."""
    from webdataset.shardlists import expand_urls

    specs = spec if isinstance(spec, list) else [spec]
    urls: list[str] = []
    for s in specs:
        for url in expand_urls(str(s)):
            if "://" in url or url.startswith("pipe:"):
                urls.append(url)
                continue
            p = Path(url)
            if p.is_dir():
                found = sorted(str(x) for x in p.glob("*.tar"))
                if not found:
                    raise MissingInput(f"{p}: no .tar shards in this directory")
                urls += found
            elif any(c in url for c in "*?["):
                found = sorted(glob.glob(url))
                if not found:
                    raise MissingInput(f"{url}: no file matches")
                urls += found
            elif p.exists():
                urls.append(url)
            else:
                raise MissingInput(f"{url}: no such shard")
    if not urls:
        raise MissingInput(f"{spec}: no shards")
    return urls


def count_samples(urls: list[str]) -> int | None:
    """Samples in these shards from the `sizes.json` beside them (img2dataset's and ours), if every one is listed."""
    sizes = shard_sizes(urls)
    return None if sizes is None else sum(sizes)


def shard_sizes(urls: list[str]) -> list[int] | None:
    """Samples in each of these shards from the `sizes.json` beside them, if every one is listed."""
    out = []
    cache: dict[str, dict] = {}
    for url in urls:
        if "://" in url or url.startswith("pipe:"):
            return None
        p = Path(url)
        d = str(p.parent)
        if d not in cache:
            f = p.parent / "sizes.json"
            try:
                cache[d] = json.loads(f.read_text()) if f.exists() else {}
            except (OSError, ValueError):
                cache[d] = {}
        if p.name not in cache[d]:
            return None
        out.append(int(cache[d][p.name]))
    return out


def slot_ranges(sizes: list[int], slots: int, slot: int) -> list[tuple[int, int, int]]:
    """(shard index, first sample, end) pieces of slot `slot` when the samples of shards of these
    sizes, in this order, are cut into `slots` runs whose lengths differ by at most one."""
    total = sum(sizes)
    lo, hi = slot * total // slots, (slot + 1) * total // slots
    pieces, start = [], 0
    for i, n in enumerate(sizes):
        a, b = max(lo, start), min(hi, start + n)
        if a < b:
            pieces.append((i, a - start, b - start))
        start += n
        if start >= hi:
            break
    return pieces


# --- images -----------------------------------------------------------------------------------

def random_resized_crop_box(w: int, h: int, rng: random.Random, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)):
    """A crop of `scale` of the area and `ratio` aspect, as torchvision's RandomResizedCrop draws it."""
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return (x, y, x + cw, y + ch)
    return center_crop_box(w, h)


def center_crop_box(w: int, h: int):
    s = min(w, h)
    x, y = (w - s) // 2, (h - s) // 2
    return (x, y, x + s, y + s)


def load_image(data: bytes, size: int, rng: random.Random | None = None) -> np.ndarray:
    """Encoded image -> uint8 [3, size, size]; a random resized crop when `rng` is given, else a centre crop."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (size, size))   # JPEG: decode at the smallest scale still >= size
        im = im.convert("RGB")
        w, h = im.size
        box = random_resized_crop_box(w, h, rng) if rng is not None else center_crop_box(w, h)
        im = im.resize((size, size), Image.Resampling.BICUBIC, box=box)
        return np.asarray(im).transpose(2, 0, 1).copy()


def normalize_images(images: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """uint8 [b, 3, h, w] -> float, scaled to [0, 1] and standardised with CLIP's mean and std.

    One conversion and two in-place passes: (x / 255 - mean) / std = x * (1 / (255 std)) - mean / std.
    The two constants are made once per device and dtype (no host-to-device copy per step).
    """
    scale, shift = _norm_constants(images.device, dtype)
    return images.to(dtype).mul_(scale).sub_(shift)


_NORM = {}


def _norm_constants(device, dtype):
    key = (str(device), dtype)
    if key not in _NORM:
        std = torch.tensor(CLIP_STD, dtype=torch.float64).view(1, 3, 1, 1)
        mean = torch.tensor(CLIP_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
        _NORM[key] = ((1.0 / (255.0 * std)).to(device=device, dtype=dtype), (mean / std).to(device=device, dtype=dtype))
    return _NORM[key]


def sample_text(sample: dict) -> str | None:
    for k in ("txt", "text", "caption"):
        if k in sample:
            v = sample[k]
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except ValueError:
            return None
        for k in ("caption", "text", "txt"):
            if isinstance(meta.get(k), str):
                return meta[k]
    return None


def sample_image(sample: dict) -> bytes | None:
    for k in IMAGE_EXTS:
        if k in sample:
            return sample[k]
    return None


# --- the stream -------------------------------------------------------------------------------

@dataclass
class DataConfig:
    shards: list[str]
    batch_size: int                  # samples per rank per step
    image_size: int = 224
    seed: int = 0
    workers: int = 2
    resampled: bool = False
    shuffle_buffer: int = 1000
    augment: bool = True
    max_consecutive_bad: int = 10000  # a stream that finds no usable sample in this many stops with an error


@dataclass
class LoaderState:
    """Where a rank's stream stands within an epoch: items consumed from each worker, whose turn is next."""
    workers: int
    cursors: list[int] = field(default_factory=list)   # samples each worker's shuffle has emitted and we used
    done: list[bool] = field(default_factory=list)      # workers whose stream ended this epoch
    last_worker: int = -1                               # the worker whose item was consumed last

    def __post_init__(self):
        self.cursors = self.cursors or [0] * self.workers
        self.done = self.done or [False] * self.workers

    def consume(self, item: dict):
        w = item["worker"]
        self.cursors[w] = item["cursor"]
        self.done[w] = self.done[w] or item.get("end", False)
        self.last_worker = w

    def to_dict(self) -> dict:
        return {"workers": self.workers, "cursors": list(self.cursors), "done": list(self.done),
                "last_worker": self.last_worker}


class ShardStream(torch.utils.data.IterableDataset):
    """One rank's batches for one epoch: dicts with uint8 `images`, int64 `texts`, `keys`,
    the producing `worker`, its stream `cursor`, and the `skipped` reasons since its last item.
    A worker's last item has `end=True` and may carry no images (only the counts)."""

    def __init__(self, cfg: DataConfig, tokenizer, epoch: int, rank: int = 0, world: int = 1,
                 state: LoaderState | None = None):
        super().__init__()
        self.cfg, self.tokenizer, self.epoch, self.rank, self.world = cfg, tokenizer, epoch, rank, world
        self.state = state

    # Which worker of the original run this loader slot plays (rotated on resume, see module doc).
    def _worker(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        slot, n = (info.id, info.num_workers) if info else (0, 1)
        if self.state is None:
            return slot, n
        if self.state.workers != n:
            raise InputError(f"resuming needs the same loader worker count ({self.state.workers}, not {n})")
        return (self.state.last_worker + 1 + slot) % n, n

    def _rng(self, *parts, per_rank: bool = True) -> random.Random:
        key = (self.cfg.seed, self.epoch, self.rank if per_rank else None) + parts
        digest = hashlib.sha256(repr(key).encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "little"))

    def _shard_plan(self, worker: int, workers: int):
        """(shard URLs for this slot, sample split): the split is a list of (first, end) sample
        ranges, one per URL, when shard sizes are known; (slot, slots) when slots share shards
        without them; None when the slot reads its shards whole."""
        urls = list(self.cfg.shards)
        slots, slot = self.world * workers, self.rank * workers + worker
        if self.cfg.resampled:
            rng = self._rng("resample", worker)
            return (rng.choice(urls) for _ in iter(int, 1)), None
        sizes = shard_sizes(urls)
        order = list(range(len(urls)))
        self._rng("shards", per_rank=False).shuffle(order)   # the same order on every rank and worker
        urls = [urls[i] for i in order]
        if sizes is not None:
            pieces = slot_ranges([sizes[i] for i in order], slots, slot)
            return [urls[i] for i, _, _ in pieces], [(a, b) for _, a, b in pieces]
        if len(urls) >= slots:
            return urls[slot::slots], None
        return urls, (slot, slots)          # too few shards: everyone reads all, keeps every slots-th sample

    def _raw_samples(self, worker: int, workers: int, skipped: Counter):
        from webdataset.tariterators import tarfile_samples

        def handler(exn):
            skipped["tar_unreadable"] += 1
            return True

        urls, split = self._shard_plan(worker, workers)
        if isinstance(split, list):     # sample ranges of shards: read each up to its range's end
            for url, (first, end) in zip(urls, split):
                for index, sample in enumerate(tarfile_samples([{"url": url}], handler=handler)):
                    if index >= end:
                        break
                    if index >= first:
                        yield sample
            return
        samples = tarfile_samples(({"url": u} for u in urls), handler=handler)
        if split is None:
            yield from samples
            return
        slot, slots = split
        for index, sample in enumerate(samples):
            if index % slots == slot:
                yield sample

    def _shuffled(self, samples, worker: int):
        """A seeded shuffle buffer: the same samples in the same order for a given seed and epoch."""
        size = max(1, self.cfg.shuffle_buffer)
        rng = self._rng("buffer", worker)
        buf = []
        for sample in samples:
            if len(buf) < size:
                buf.append(sample)
                continue
            i = rng.randrange(size)
            buf[i], sample = sample, buf[i]
            yield sample
        rng.shuffle(buf)
        yield from buf

    def __iter__(self):
        worker, workers = self._worker()
        skip = 0
        if self.state is not None:
            if self.state.done[worker]:
                return
            skip = self.state.cursors[worker]
        cfg = self.cfg
        skipped: Counter = Counter()
        images, texts, keys = [], [], []
        position, bad_run, used = 0, 0, 0
        for sample in self._shuffled(self._raw_samples(worker, workers, skipped), worker):
            position += 1
            if position <= skip:
                continue   # already consumed before the checkpoint: not decoded again
            reason, image = None, None
            data, text = sample_image(sample), sample_text(sample)
            if data is None:
                reason = "missing_image"
            elif text is None:
                reason = "missing_text"
            elif not text.strip():
                reason = "empty_text"
            else:
                rng = self._rng("crop", worker, position) if cfg.augment else None
                try:
                    image = load_image(data, cfg.image_size, rng)
                except Exception:   # Pillow raises many types for broken files
                    reason = "image_undecodable"
            if reason:
                skipped[reason] += 1
                bad_run += 1
                if bad_run >= cfg.max_consecutive_bad:
                    raise NoUsableSamples(
                        f"no usable sample in {bad_run} consecutive samples of rank {self.rank} worker {worker} "
                        f"({_reasons(skipped)})")
                continue
            bad_run = 0
            images.append(image)
            texts.append(text)
            keys.append(sample.get("__key__", ""))
            if len(images) == cfg.batch_size:
                used += len(images)
                yield {"images": torch.from_numpy(np.stack(images)), "texts": self.tokenizer(texts),
                       "keys": keys, "worker": worker, "cursor": position, "skipped": dict(skipped)}
                images, texts, keys = [], [], []
                skipped = Counter()
        # The tail that does not fill a batch is left for the next epoch's shuffle (counted, not trained).
        if images:
            skipped["epoch_tail"] += len(images)
        yield {"images": None, "worker": worker, "cursor": position, "skipped": dict(skipped), "end": True}


def _reasons(counts: Counter | dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no samples at all"


def make_loader(cfg: DataConfig, tokenizer, epoch: int, rank: int = 0, world: int = 1,
                state: LoaderState | None = None, timeout: float = 600.0, pin_memory: bool = False):
    dataset = ShardStream(cfg, tokenizer, epoch, rank, world, state)
    if cfg.workers == 0:
        return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=0)
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=cfg.workers, prefetch_factor=4,
                                       timeout=timeout, pin_memory=pin_memory, persistent_workers=False)


def keys_digest(keys: list[str]) -> str:
    return hashlib.sha1("\n".join(keys).encode()).hexdigest()[:16]
