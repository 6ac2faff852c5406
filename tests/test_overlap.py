"""clipforge overlap: evaluation images that a shard set also holds (resized and re-encoded by
the site that published them) are found, reported per set, listed for exclusion and drawn;
the others are not. The shard set is made by the real shard stage over loopback HTTP."""

import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageEnhance

from clipforge.pipeline.images import ImageConfig
from clipforge.pipeline.shard import ShardConfig
from clipforge.pipeline.shard_stage import expand_pairs, run
from clipforge.schemas.tars import TarSink
from clipforge.trainer.overlap import find_overlap, read_exclude

from test_near_dup import _jpeg, site  # noqa: F401  (site is a fixture)
from test_phash import photo_like


def test_planted_overlap_is_found_and_nothing_else(site, tmp_path):  # noqa: F811
    root, base = site
    rng = random.Random(8)
    evals = [photo_like(rng, 320, 240) for _ in range(12)]
    web = [photo_like(rng, 320, 240) for _ in range(20)]
    planted = {0, 3, 7, 10}  # evaluation images a site republished, smaller and recompressed
    names = []
    for i, img in enumerate(web):
        (root / f"w{i}.jpg").write_bytes(_jpeg(img, 85))
        names.append(f"w{i}.jpg")
    for i in sorted(planted):  # cropped a little (up to 4% a side), resized, brighter, recompressed
        img = evals[i].crop((4 * (i % 4), 3 * (i % 3), 320 - 12 + i, 240 - i))
        img = ImageEnhance.Brightness(img.resize((240, 180), Image.Resampling.BICUBIC)).enhance(1.06)
        (root / f"e{i}.jpg").write_bytes(_jpeg(img, 72))
        names.append(f"e{i}.jpg")
    pq.write_table(pa.table({"url": [f"{base}/{n}" for n in names], "text": [f"photo {n}" for n in names]}),
                   tmp_path / "pairs.parquet")
    items, n = expand_pairs([str(tmp_path / "pairs.parquet")])
    shards = tmp_path / "shards"
    run(ShardConfig(inputs=items, out=str(shards), samples_per_shard=10, allow_private=True,
                    image=ImageConfig(image_size=96, min_size=0)), n, ["--direct_num_workers=1"])
    index = pa.concat_tables(pq.read_table(p) for p in sorted(shards.glob("0*.parquet")))
    key_of = {r["url"].rsplit("/", 1)[1]: r["key"] for r in index.to_pylist()}

    folder = tmp_path / "evalset"  # an ImageFolder tree: two classes
    for i, img in enumerate(evals[:8]):
        (folder / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        img.save(folder / f"class{i % 2}" / f"img{i}.png")
    (folder / "class0" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    labelled = tmp_path / "labelled"  # labelled shards: the other four
    labelled.mkdir()
    with TarSink(str(labelled / "000000.tar")) as sink:
        for i, img in enumerate(evals[8:], 8):
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=95)
            sink.write({"__key__": f"s{i}", "jpg": buf.getvalue(), "cls": str(i % 2)})

    out = tmp_path / "overlap"
    report = find_overlap(shards, [folder, labelled], out, log=lambda *_: None)
    got = json.loads((out / "overlap.json").read_text())
    assert got == json.loads(json.dumps(report))
    f, s = got["sets"][str(folder)], got["sets"][str(labelled)]
    assert (f["images"], f["with_overlap"], f["unreadable"]) == (8, 3, {"image_undecodable": 1})
    assert (s["images"], s["with_overlap"]) == (4, 1)
    found = {(p["eval"], p["key"]) for p in f["pairs"] + s["pairs"]}
    want = {(f"class{i % 2}/img{i}.png", key_of[f"e{i}.jpg"]) for i in planted if i < 8}
    want |= {(f"000000.tar:s{i}", key_of[f"e{i}.jpg"]) for i in planted if i >= 8}
    assert found == want  # every planted copy, and no other pair
    assert read_exclude(out / "exclude.txt") == {key_of[f"e{i}.jpg"] for i in planted}
    png = Image.open(out / "overlap.png")
    assert png.format == "PNG" and png.height > png.width  # one row per pair

    # the dataset report shows it, from the same overlap.json
    from clipforge.stats.stage import StatsConfig
    from clipforge.stats.stage import run as run_stats
    rep = tmp_path / "report"
    stats = run_stats(StatsConfig(data=[str(shards), str(out)], out=str(rep), samples=4), log=lambda *_: None)
    assert stats["overlap"]["sets"][str(folder)]["with_overlap"] == 3
    assert stats["overlap"]["excluded_keys"] == len(planted)
    md = (rep / "report.md").read_text()
    assert "## Overlap with evaluation sets" in md and "overlap.png" in md
    assert (rep / "overlap.png").read_bytes() == (out / "overlap.png").read_bytes()

    # the command line: the same report, and bad input as one line
    import subprocess
    import sys
    from pathlib import Path
    cli = str(Path(sys.executable).with_name("clipforge"))
    r = subprocess.run([cli, "overlap", "--shards", str(shards), "--eval", str(folder), str(labelled),
                        "--out", str(tmp_path / "o2")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{folder}: 3 of 8 images have a near-duplicate" in r.stdout
    assert read_exclude(tmp_path / "o2" / "exclude.txt") == read_exclude(out / "exclude.txt")
    for argv, words in ((["--shards", str(tmp_path / "nowhere"), "--eval", str(folder)], "no shard indexes"),
                        (["--shards", str(shards), "--eval", str(folder), "--max-distance", "40"], "max-distance"),
                        (["--shards", str(shards)], "--eval")):
        r = subprocess.run([cli, "overlap", *argv, "--out", str(tmp_path / "o3")], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode != 0 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
