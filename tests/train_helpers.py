"""Small WebDataset shards of the demo world's concepts, written directly (no crawl, no server)."""

import io
import json
import random
from pathlib import Path

import webdataset as wds

from clipforge.demo import captions, concepts


def jpeg(attrs, rng, size=64) -> bytes:
    buf = io.BytesIO()
    concepts.draw(attrs, rng, size, size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_shards(out: Path, n_shards: int = 4, per_shard: int = 96, seed: int = 0, extra=None) -> Path:
    """Shards of (KEY.jpg, KEY.txt, KEY.json) with English captions, plus sizes.json.

    `extra(shard_index, writer)` may add more (for example broken) samples to a shard.
    """
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sizes = {}
    key = 0
    for s in range(n_shards):
        name = f"{s:06d}.tar"
        with wds.TarWriter(str(out / name)) as w:
            n = 0
            for _ in range(per_shard):
                attrs = concepts.sample_attributes(rng)
                text = captions.english(attrs, rng)
                w.write({"__key__": f"{key:012d}", "jpg": jpeg(attrs, rng), "txt": text,
                         "json": json.dumps({"key": f"{key:012d}", "caption": text, **attrs}).encode()})
                key += 1
                n += 1
            if extra is not None:
                n += extra(s, w)
        sizes[name] = n
    (out / "sizes.json").write_text(json.dumps(sizes))
    return out


def write_heldout(out: Path, per_class: int = 2, seed: int = 1) -> Path:
    """An ImageFolder tree of the shapes (OUT/<shape>/<n>.jpg), as the demo world's held-out set."""
    rng = random.Random(seed)
    for shape in concepts.SHAPES:
        (out / shape).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            (out / shape / f"{j}.jpg").write_bytes(jpeg(concepts.sample_attributes(rng, shape=shape), rng))
    return out
