"""Evaluation inputs: labelled ImageFolder trees, labelled WebDataset shards, image–text shards.

Each yields batches of (uint8 images, a per-sample value): a class index for classification, a
caption for retrieval and scoring. Images are centre-cropped and resized as CLIP evaluates them;
loading runs in DataLoader worker processes. Samples that cannot be used are counted by reason.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from clipforge.trainer.data import expand_shards, load_image, sample_image, sample_text
from clipforge.errors import InputError, MissingInput

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


def read_lines(path: str | Path) -> list[str]:
    try:
        lines = [x.strip() for x in Path(path).read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError as e:
        raise MissingInput(str(e)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(str(e)) from None
    return [x for x in lines if x and not x.startswith("#")]


# --- ImageFolder ------------------------------------------------------------------------------

def image_folder(root: str | Path, classnames_file: str | Path | None = None):
    """(files, labels, class names): one folder per class, sorted; names from the folders or a file."""
    root = Path(root)
    if not root.is_dir():
        raise MissingInput(f"{root}: no such ImageFolder directory")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise InputError(f"{root}: no class folders (expected ROOT/CLASS/IMAGE)")
    files, labels = [], []
    for i, folder in enumerate(folders):
        for f in sorted(folder.rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(i)
    if not files:
        raise InputError(f"{root}: no images in its class folders")
    names = [f.name.replace("_", " ") for f in folders]
    if classnames_file:
        given = read_lines(classnames_file)
        if len(given) != len(folders):
            raise InputError(f"{classnames_file}: {len(given)} class names for {len(folders)} class folders")
        names = given
    return files, labels, names


class _Files(torch.utils.data.Dataset):
    def __init__(self, files, labels, size):
        self.files, self.labels, self.size = files, labels, size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        try:
            return load_image(Path(self.files[i]).read_bytes(), self.size), self.labels[i], True
        except Exception:   # Pillow raises many types for broken files
            return np.zeros((3, self.size, self.size), np.uint8), self.labels[i], False


def folder_batches(files, labels, size: int, batch_size: int = 256, workers: int = 2):
    """(images uint8, labels int64, ok bool) batches in file order; unreadable files have ok False."""
    loader = torch.utils.data.DataLoader(_Files(files, labels, size), batch_size=batch_size,
                                         num_workers=workers, shuffle=False)
    for images, labels_, ok in loader:
        yield images, labels_, ok


# --- WebDataset shards ------------------------------------------------------------------------

def sample_label(sample: dict) -> int | None:
    """The class index of a labelled sample: `.cls` (WebDataset's convention) or `label` in `.json`."""
    for k in ("cls", "label", "class"):
        if k in sample:
            try:
                return int(sample[k].decode() if isinstance(sample[k], bytes) else sample[k])
            except ValueError:
                return None
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except ValueError:
            return None
        for k in ("label", "cls", "class"):
            if isinstance(meta.get(k), int):
                return meta[k]
    return None


class _Shards(torch.utils.data.IterableDataset):
    """Samples of the shards, split by worker; each is (image, value, key) or a skip reason."""

    def __init__(self, urls, size, kind):
        self.urls, self.size, self.kind = urls, size, kind

    def __iter__(self):
        from webdataset.tariterators import tarfile_samples

        info = torch.utils.data.get_worker_info()
        urls = self.urls[info.id::info.num_workers] if info else self.urls
        skipped = Counter()

        def handler(exn):
            skipped["tar_unreadable"] += 1
            return True

        for sample in tarfile_samples(({"url": u} for u in urls), handler=handler):
            data = sample_image(sample)
            value = sample_label(sample) if self.kind == "label" else sample_text(sample)
            reason = "missing_image" if data is None else ("missing_label" if self.kind == "label" else
                                                            "missing_text") if value is None else None
            if reason is None:
                try:
                    yield {"image": load_image(data, self.size), "value": value, "key": sample.get("__key__", "")}
                    continue
                except Exception:
                    reason = "image_undecodable"
            skipped[reason] += 1
        yield {"skipped": dict(skipped)}


def shard_samples(spec, size: int, kind: str, batch_size: int = 256, workers: int = 2):
    """Batches {images, values, keys} from shards, and a Counter of skip reasons filled as they go."""
    urls = expand_shards(spec)
    skipped: Counter = Counter()

    def batches():
        loader = torch.utils.data.DataLoader(_Shards(urls, size, kind), batch_size=None,
                                             num_workers=min(workers, len(urls)))
        images, values, keys = [], [], []
        for item in loader:
            if "skipped" in item:
                skipped.update(item["skipped"])
                continue
            images.append(item["image"])
            values.append(item["value"])
            keys.append(item["key"])
            if len(images) == batch_size:
                yield {"images": torch.from_numpy(np.stack(images)), "values": values, "keys": keys}
                images, values, keys = [], [], []
        if images:
            yield {"images": torch.from_numpy(np.stack(images)), "values": values, "keys": keys}

    return batches(), skipped


# --- parquet with image bytes (img2dataset's parquet output, for example) -----------------------

def parquet_pairs(path: str | Path, size: int, batch_size: int = 256):
    """Batches {images, values (captions), keys} from parquet files with an image-bytes column."""
    import pyarrow.parquet as pq

    files = sorted(Path(path).glob("*.parquet")) if Path(path).is_dir() else [Path(path)]
    skipped: Counter = Counter()

    def batches():
        for f in files:
            try:
                pf = pq.ParquetFile(f)
            except FileNotFoundError as e:
                raise MissingInput(str(e)) from None
            except (OSError, ValueError) as e:   # pyarrow's ArrowInvalid is a ValueError
                raise InputError(str(e)) from None
            names = pf.schema_arrow.names
            image_col = next((c for c in ("jpg", "image", "png", "webp") if c in names), None)
            text_col = next((c for c in ("caption", "text", "txt") if c in names), None)
            if image_col is None or text_col is None:
                raise InputError(f"{f}: parquet pairs need an image-bytes column (jpg/image) and a caption column")
            key_col = "key" if "key" in names else None
            for rb in pf.iter_batches(batch_size=batch_size, columns=[c for c in (image_col, text_col, key_col) if c]):
                images, values, keys = [], [], []
                for i, (data, text) in enumerate(zip(rb.column(image_col).to_pylist(), rb.column(text_col).to_pylist())):
                    if data is None or not text:
                        skipped["missing_image" if data is None else "missing_text"] += 1
                        continue
                    try:
                        images.append(load_image(data, size))
                    except Exception:
                        skipped["image_undecodable"] += 1
                        continue
                    values.append(text)
                    keys.append(rb.column(key_col)[i].as_py() if key_col else f"{f.name}:{i}")
                if images:
                    yield {"images": torch.from_numpy(np.stack(images)), "values": values, "keys": keys}

    return batches(), skipped

