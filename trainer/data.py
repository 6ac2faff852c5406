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

Every item a worker yields carries its position in the worker's stream and the state of its
shuffle buffer (which samples it holds, named by shard piece and offset, the last sample read and
the generator's state), so the trainer can checkpoint the exact data position (`LoaderState`) and
a resumed run sees the same batches. A resumed worker opens only the shards that hold a sample of
its buffer or the next sample to read (the current shard, rarely the one before): shards consumed
before the checkpoint are not opened, so resuming costs the same at any depth of an epoch. Within
those shards, samples before the cursor are read through the tar stream but not decoded.
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
import os
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


def default_workers() -> int:
    """Loader processes for one training process: the CPUs it may run on (its affinity, as a
    scheduler or container sets it), shared by the LOCAL_WORLD_SIZE processes of this node, less
    one for the training loop itself; at least one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:      # not on Linux
        cpus = os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, cpus // local - 1)


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
    workers: int = 2                 # the trainer's default: default_workers()
    resampled: bool = False
    shuffle_buffer: int = 1000
    augment: bool = True
    max_consecutive_bad: int = 10000  # a stream that finds no usable sample in this many stops with an error
    exclude: frozenset = frozenset()  # sample keys never trained on (clipforge overlap's exclude.txt)


@dataclass
class LoaderState:
    """Where a rank's stream stands within an epoch: items consumed from each worker, whose turn is next."""
    workers: int
    cursors: list[int] = field(default_factory=list)   # samples each worker's shuffle has emitted and we used
    done: list[bool] = field(default_factory=list)      # workers whose stream ended this epoch
    last_worker: int = -1                               # the worker whose item was consumed last
    shuffles: list = field(default_factory=list)        # each worker's shuffle state at its cursor (None: not yet)

    def __post_init__(self):
        self.cursors = self.cursors or [0] * self.workers
        self.done = self.done or [False] * self.workers
        self.shuffles = self.shuffles or [None] * self.workers

    def consume(self, item: dict):
        w = item["worker"]
        self.cursors[w] = item["cursor"]
        self.done[w] = self.done[w] or item.get("end", False)
        if "shuffle" in item:
            self.shuffles[w] = item["shuffle"]
        self.last_worker = w

    def to_dict(self) -> dict:
        return {"workers": self.workers, "cursors": list(self.cursors), "done": list(self.done),
                "last_worker": self.last_worker, "shuffles": list(self.shuffles)}


class ShardsChanged(InputError):
    """A resumed stream did not find, where the checkpoint says, a sample its shuffle buffer held."""


class _Shuffle:
    """A seeded shuffle buffer whose state can be written down and restored without re-reading
    the stream: the samples it holds are named by their `__pos__` (piece, offset in the shard,
    index in the slot's stream), with the last sample read and the generator's state."""

    def __init__(self, size: int, rng: random.Random):
        self.size, self.rng, self.buf, self.last, self.draining = max(1, size), rng, [], None, False

    def state(self) -> dict:
        return {"buffer": [s["__pos__"] for s in self.buf], "last": self.last, "rng": self.rng.getstate(),
                "draining": self.draining}

    def restore(self, state: dict, samples):
        """Take the buffer's samples from `samples` (which yields them first, in stream order)."""
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.last, self.draining = tuple(state["last"]) if state["last"] else None, state["draining"]
        wanted = [tuple(p) for p in state["buffer"]]
        names = {p[:2]: p for p in wanted}     # (piece, offset): the stream index is known only here
        found = {}
        for sample in samples if wanted else ():
            pos = tuple(sample["__pos__"])[:2]
            if pos not in names:
                raise ShardsChanged(f"resume: the shards changed since the checkpoint ({sample.get('__url__', '?')} "
                                    f"sample {pos[1]} is not where the checkpoint's buffer says)")
            sample["__pos__"] = names[pos]
            found[pos] = sample
            if len(found) == len(wanted):
                break
        if len(found) != len(wanted):
            raise ShardsChanged("resume: the shards changed since the checkpoint (samples it held are gone)")
        self.buf = [found[p[:2]] for p in wanted]

    def run(self, samples):
        if not self.draining:
            for sample in samples:
                self.last = tuple(sample["__pos__"])
                if len(self.buf) < self.size:
                    self.buf.append(sample)
                    continue
                i = self.rng.randrange(self.size)
                self.buf[i], sample = sample, self.buf[i]
                yield sample
            self.draining = True
            self.rng.shuffle(self.buf)
            self.buf.reverse()          # popped from the end: the shuffled order
        while self.buf:
            yield self.buf.pop()


class ShardStream(torch.utils.data.IterableDataset):
    """One rank's batches for one epoch: dicts with uint8 `images`, int64 `texts`, `keys`,
    the producing `worker`, its stream `cursor`, and the `skipped` reasons since its last item.
    A worker's last item has `end=True` and may carry no images (only the counts)."""

    def __init__(self, cfg: DataConfig, tokenizer, epoch: int, rank: int = 0, world: int = 1,
                 state: LoaderState | None = None):
        super().__init__()
        self.cfg, self.tokenizer, self.rank, self.world = cfg, tokenizer, rank, world
        # The epoch lives in shared memory, so persistent loader workers see `set_epoch`; the
        # resume state applies to the epoch the stream was made for only.
        self._epoch = torch.tensor([epoch], dtype=torch.int64).share_memory_()
        self._state, self.state_epoch = state, epoch

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int):
        """The next iteration reads this epoch (from its start), also in persistent workers."""
        self._epoch[0] = epoch

    @property
    def state(self) -> LoaderState | None:
        return self._state if self.epoch == self.state_epoch else None

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
        """(pieces, modulo): the pieces this slot reads in order, (url, first sample, end or None);
        modulo is (slot, slots) when slots share whole shards (too few shards, no sizes) and each
        keeps every slots-th sample of the stream, else None."""
        urls = list(self.cfg.shards)
        slots, slot = self.world * workers, self.rank * workers + worker
        if self.cfg.resampled:
            rng = self._rng("resample", worker)
            return ((rng.choice(urls), 0, None) for _ in iter(int, 1)), None
        sizes = shard_sizes(urls)
        order = list(range(len(urls)))
        self._rng("shards", per_rank=False).shuffle(order)   # the same order on every rank and worker
        urls = [urls[i] for i in order]
        if sizes is not None:
            return [(urls[i], a, b) for i, a, b in slot_ranges([sizes[i] for i in order], slots, slot)], None
        if len(urls) >= slots:
            return [(u, 0, None) for u in urls[slot::slots]], None
        return [(u, 0, None) for u in urls], (slot, slots)   # too few shards: everyone reads all, keeps every n-th

    def _raw_samples(self, worker: int, workers: int, skipped: Counter, resume: dict | None = None):
        """The slot's samples in stream order, each with its `__pos__` (piece, offset in the shard,
        index in the stream). Resuming from a shuffle state, the samples its buffer held come
        first, then those after its last read; pieces holding neither are not opened."""
        from webdataset.tariterators import tarfile_samples

        def handler(exn):
            skipped["tar_unreadable"] += 1
            return True

        pieces, modulo = self._shard_plan(worker, workers)
        last, wanted = None, {}
        if resume is not None:
            last = tuple(resume["last"])
            for p, o, _ in resume["buffer"]:
                wanted.setdefault(p, set()).add(o)
        base = 0    # stream index of the piece's first sample
        for p, (url, first, end) in enumerate(pieces):
            if last is not None and p < last[0]:
                need = wanted.get(p)
                if not need:
                    continue        # read before the checkpoint and not in the buffer: never opened
                for o, sample in enumerate(tarfile_samples([{"url": url}], handler=handler)):
                    if o > max(need):
                        break
                    if o in need:
                        sample["__pos__"] = (p, o, -1)
                        yield sample
                continue
            if last is not None and p == last[0]:
                base = last[2] - last[1]
            need = wanted.get(p, ()) if last is not None and p == last[0] else ()
            o = -1
            for o, sample in enumerate(tarfile_samples([{"url": url}], handler=handler)):
                if end is not None and o >= end:
                    break
                if o < first:
                    continue
                old = last is not None and (p, o) <= last[:2]
                if old and o not in need:
                    continue        # consumed before the checkpoint: not decoded again
                if not old and modulo is not None and (base + o) % modulo[1] != modulo[0]:
                    continue
                sample["__pos__"] = (p, o, base + o)
                yield sample
            if modulo is not None:
                base += o + 1

    def __iter__(self):
        worker, workers = self._worker()
        skip, resume = 0, None
        if self.state is not None:
            if self.state.done[worker]:
                return
            skip, resume = self.state.cursors[worker], self.state.shuffles[worker]
        cfg = self.cfg
        skipped: Counter = Counter()
        images, texts, keys, ids = [], [], [], []
        position, bad_run, used = 0, 0, 0
        shuffle = _Shuffle(cfg.shuffle_buffer, self._rng("buffer", worker))
        raw = self._raw_samples(worker, workers, skipped, resume)
        if resume is not None:
            shuffle.restore(resume, raw)
            position, skip = skip, 0
        for sample in shuffle.run(raw):
            position += 1
            if position <= skip:
                continue   # a checkpoint without the shuffle's state: re-read up to the cursor, not decoded
            if cfg.exclude and sample.get("__key__") in cfg.exclude:
                skipped["excluded"] += 1   # e.g. a copy of an evaluation image: not decoded, not trained on
                continue
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
            ids.append(sample_id(sample.get("__url__", ""), keys[-1]))
            if len(images) == cfg.batch_size:
                used += len(images)
                yield {"images": torch.from_numpy(np.stack(images)), "texts": self.tokenizer(texts),
                       "keys": keys, "ids": np.array(ids, dtype=np.int64), "worker": worker, "cursor": position,
                       "skipped": dict(skipped), "shuffle": shuffle.state()}
                images, texts, keys, ids = [], [], [], []
                skipped = Counter()
        # The tail that does not fill a batch is left for the next epoch's shuffle (counted, not trained).
        if images:
            skipped["epoch_tail"] += len(images)
        yield {"images": None, "worker": worker, "cursor": position, "skipped": dict(skipped), "end": True}


def sample_id(url: str, key: str) -> int:
    """A 64-bit name of a sample (its shard and key), for counting distinct samples in an epoch."""
    return int.from_bytes(hashlib.blake2b(f"{url}\0{key}".encode(), digest_size=8).digest(), "little", signed=True)


def slot_lengths(cfg: DataConfig, epoch: int, rank: int, world: int) -> list[int] | None:
    """Samples each of a rank's loader workers reads in an epoch, when the shards' sizes say
    (None in resampled mode or without sizes.json)."""
    if cfg.resampled:
        return None
    workers = max(1, cfg.workers)
    stream = ShardStream(cfg, None, epoch, rank, world)
    out = []
    for worker in range(workers):
        pieces, modulo = stream._shard_plan(worker, workers)
        if modulo is not None or any(end is None for _, _, end in pieces):
            return None
        out.append(sum(end - first for _, first, end in pieces))
    return out


def _reasons(counts: Counter | dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no samples at all"


def make_loader(cfg: DataConfig, tokenizer, epoch: int, rank: int = 0, world: int = 1,
                state: LoaderState | None = None, timeout: float = 600.0, pin_memory: bool = False):
    """A DataLoader of the stream; its workers persist across epochs (`loader.dataset.set_epoch`
    before the next `iter`) instead of restarting, with their imports and open state, each epoch."""
    dataset = ShardStream(cfg, tokenizer, epoch, rank, world, state)
    if cfg.workers == 0:
        return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=0)
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=cfg.workers, prefetch_factor=4,
                                       timeout=timeout, pin_memory=pin_memory, persistent_workers=True)


def keys_digest(keys: list[str]) -> str:
    return hashlib.sha1("\n".join(keys).encode()).hexdigest()[:16]
