"""Near-duplicate images in the shard stage: the same photo resized and re-encoded by another
site is dropped as near_duplicate_image (the smallest uid keeps it) when --near-dup-distance is
given; distinct photos stay; exact duplicates keep their own bucket. Real HTTP over loopback,
the real Beam pipeline, real tars."""

import functools
import http.server
import io
import json
import random
import tarfile
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipforge.pipeline.images import ImageConfig
from clipforge.pipeline.shard import ShardConfig
from clipforge.pipeline.shard_stage import expand_pairs, run
from clipforge.schemas.pairs import uid as pair_uid
from clipforge.schemas.phash import distance, phash

from test_phash import photo_like


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _jpeg(img, q):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=q)
    return buf.getvalue()


def test_near_duplicates_are_dropped_and_distinct_photos_stay(site, tmp_path):
    root, base = site
    rng = random.Random(21)
    originals = [photo_like(rng, 360, 270) for _ in range(16)]
    files = {}  # name -> (original index, how it was made)
    for i, img in enumerate(originals):
        files[f"o{i}.jpg"] = (i, _jpeg(img, 90))
        if i < 6:  # a copy another site made: half size, lower quality
            files[f"c{i}.jpg"] = (i, _jpeg(img.resize((180, 135), Image.Resampling.BICUBIC), 70))
    files["x0.jpg"] = (0, files["o0.jpg"][1])  # the same bytes again: an exact duplicate
    for name, (_, data) in files.items():
        (root / name).write_bytes(data)
    names = sorted(files)
    texts = [f"photo {n}" for n in names]
    urls = [f"{base}/{n}" for n in names]
    pq.write_table(pa.table({"url": urls, "text": texts}), tmp_path / "pairs.parquet")
    items, n = expand_pairs([str(tmp_path / "pairs.parquet")])
    cfg = ShardConfig(inputs=items, out=str(tmp_path / "shards"), samples_per_shard=8, allow_private=True,
                      image=ImageConfig(image_size=64, min_size=0), near_dup_distance=8)
    stats = run(cfg, n, ["--direct_num_workers=1"])

    index = pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / "shards").glob("0*.parquet")))
    rows = {r["url"].rsplit("/", 1)[1]: r for r in index.to_pylist()}
    uid = {n: pair_uid(u, t) for n, u, t in zip(names, urls, texts)}
    # the oracle: which files show the same photo (by construction), each group keeps its smallest uid
    by_photo = {}
    for name, (i, _) in files.items():
        by_photo.setdefault(i, []).append(name)
    expect_kept = {min(group, key=uid.get) for group in by_photo.values()}
    kept = {n for n, r in rows.items() if r["status"] == "success"}
    assert kept == expect_kept
    exact = {n for n, r in rows.items() if r["status"] == "duplicate_image"}
    near = {n for n, r in rows.items() if r["status"] == "near_duplicate_image"}
    assert near | exact == set(files) - expect_kept and near  # every copy dropped, some as near
    for name in near:
        owner = min(by_photo[files[name][0]], key=uid.get)
        assert rows[name]["error"].endswith(f"uid {uid[owner]}'s") or uid[owner] in rows[name]["error"]
    # distinct photos are far apart, copies close: the distance chosen sits between
    hashes = {n: r["phash"] for n, r in rows.items()}
    assert all(h is not None for h in hashes.values())
    far = min(distance(hashes[f"o{a}.jpg"], hashes[f"o{b}.jpg"]) for a in range(16) for b in range(a))
    assert far > 8
    assert stats["kept"] == len(expect_kept) and stats["dropped"]["near_duplicate_image"] == len(near)
    assert stats["kept"] + sum(stats["dropped"].values()) == stats["input"] == len(files)
    in_tars = set()
    for tar in (tmp_path / "shards").glob("*.tar"):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    in_tars.add(json.loads(tf.extractfile(m).read())["url"].rsplit("/", 1)[1])
    assert in_tars == kept
    # the stored hash is the hash of the stored pixels
    one = next(iter(kept))
    assert hashes[one] == rows[one]["phash"]


def test_without_the_flag_near_copies_stay(site, tmp_path):
    root, base = site
    rng = random.Random(4)
    img = photo_like(rng, 300, 300)
    (root / "a.jpg").write_bytes(_jpeg(img, 90))
    (root / "b.jpg").write_bytes(_jpeg(img.resize((200, 200)), 75))
    pq.write_table(pa.table({"url": [f"{base}/a.jpg", f"{base}/b.jpg"], "text": ["a", "b"]}), tmp_path / "p.parquet")
    items, n = expand_pairs([str(tmp_path / "p.parquet")])
    stats = run(ShardConfig(inputs=items, out=str(tmp_path / "s"), allow_private=True,
                            image=ImageConfig(image_size=64, min_size=0)), n, ["--direct_num_workers=1"])
    assert stats["kept"] == 2
    index = pq.read_table(next((tmp_path / "s").glob("0*.parquet"))).to_pylist()
    a, b = (r["phash"] for r in sorted(index, key=lambda r: r["url"]))
    assert distance(a, b) <= 8  # they were near, and nothing asked for them to go
    arr = np.asarray(img.resize((64, 64)))
    assert distance(phash(arr), a) <= 8


def test_the_flag_alone_takes_the_measured_default():
    from clipforge.cli import build_parser
    parse = build_parser().parse_args
    assert parse(["shard"]).near_dup_distance is None
    assert parse(["shard", "--near-dup-distance"]).near_dup_distance == 8
    assert parse(["shard", "--near-dup-distance", "5"]).near_dup_distance == 5
