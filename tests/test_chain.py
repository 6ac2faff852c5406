"""The whole chain as `make demo` runs it, on a smaller world, in a scratch directory."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).with_name("clipforge"))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]   # the first test waits for the whole chain


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([CLI, "demo", "--size", "2000", "--epochs", "16"], cwd=cwd, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cwd, proc


def test_every_stage_ran_and_reported_progress(chain):
    cwd, proc = chain
    for n, what in enumerate(["demo web", "query list", "crawl", "shard", "overlap with the held-out sets", "stats",
                              "train", "zero-shot eval"], 1):
        assert f"== [{n}/8] {what}" in proc.stdout
    assert "ETA" in proc.stdout and "samples/s" in proc.stdout
    assert "clipforge demo: done" in proc.stdout
    for path in ("data/demo/queries/queries.parquet", "data/demo/pairs/crawl_stats.json", "data/demo/shards/sizes.json",
                 "data/demo/reports/report.html", "data/demo/runs/tiny/train_stats.json",
                 "data/demo/runs/tiny/eval/eval.json"):
        assert (cwd / path).exists(), path


def test_the_planted_overlap_is_found_and_reported(chain):
    """The world publishes some held-out images on its pages; every one that reached the shards
    is in the overlap report, its exclude list, and the dataset report's overlap section."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cwd, proc = chain
    manifest = json.loads((cwd / "data/demo/world/manifest.json").read_text())
    planted = {p["url"]: p["heldout"] for p in manifest["planted"]}
    index = pa.concat_tables(pq.read_table(p) for p in sorted((cwd / "data/demo/shards").glob("0*.parquet")))
    stored = {r["key"]: planted[r["url"]] for r in index.to_pylist() if r["url"] in planted and r["status"] == "success"}
    assert stored, "no planted image reached the shards"
    overlap = json.loads((cwd / "data/demo/overlap/overlap.json").read_text())
    pairs = {(p["key"], f"heldout/{Path(name).name}/{p['eval']}")
             for name, v in overlap["sets"].items() for p in v["pairs"]}
    assert set(stored.items()) <= pairs  # each planted copy, matched with its own held-out file
    excluded = set((cwd / "data/demo/overlap/exclude.txt").read_text().split())
    assert set(stored) <= excluded
    assert f"{len(stored)} reached the shards" in proc.stdout
    report = json.loads((cwd / "data/demo/reports/stats.json").read_text())
    assert report["overlap"]["excluded_keys"] == len(excluded)
    # the run trained without them: every epoch counts the copies it read as excluded, none trained on
    train = json.loads((cwd / "data/demo/runs/tiny/train_stats.json").read_text())
    for record in train["epochs"]:
        assert 0 < record["skipped"].get("excluded", 0) <= len(excluded), record
    # and the evaluation reports the clean split beside the full sets
    results = json.loads((cwd / "data/demo/runs/tiny/eval/eval.json").read_text())["results"]
    for r in results.values():
        assert r["clean"]["overlapping"] > 0 and r["clean"]["samples"] + r["clean"]["overlapping"] == r["samples"]
    assert "clean: top-1" in proc.stdout


def test_funnels_add_up_at_every_stage(chain):
    cwd, _ = chain
    stats = json.loads((cwd / "data/demo/reports/stats.json").read_text())
    funnels = {f["stage"]: f for f in stats["funnels"]}
    assert set(funnels) == {"queries", "crawl", "shard"}
    for f in funnels.values():
        assert f["kept"] + sum(d["count"] for d in f["dropped"]) == f["input"] > 0
    # Each stage reads what the one before it kept.
    queries = json.loads((cwd / "data/demo/queries/queries_stats.json").read_text())
    crawl = json.loads((cwd / "data/demo/pairs/crawl_stats.json").read_text())
    assert crawl["extra"]["settings"]["queries"] == queries["kept"]
    assert funnels["shard"]["input"] == funnels["crawl"]["kept"]


def test_shards_load_and_match_sizes(chain):
    import webdataset as wds

    from clipforge.schemas.validate import validate_shard_dir

    cwd, _ = chain
    shards = cwd / "data/demo/shards"
    validate_shard_dir(shards)
    sizes = json.loads((shards / "sizes.json").read_text())
    n = sum(1 for s in wds.WebDataset(sorted(str(p) for p in shards.glob("*.tar")), shardshuffle=False).decode("pil")
            if s["jpg"].size[0] > 0 and s["txt"])
    assert n == sum(sizes.values()) > 500


def test_zero_shot_accuracy_is_well_above_chance(chain):
    cwd, proc = chain
    results = json.loads((cwd / "data/demo/runs/tiny/eval/eval.json").read_text())["results"]
    colour, shape = results["colour"], results["shape"]
    assert colour["top1"] >= 4 * colour["chance_top1"], colour["top1"]
    assert shape["top1"] >= 1.5 * shape["chance_top1"], shape["top1"]
    assert "x chance" in proc.stdout


def test_rerun_reuses_finished_stages(chain):
    cwd, _ = chain
    shards = cwd / "data/demo/shards"
    before = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.tar")}
    assert before
    proc = subprocess.run([CLI, "demo", "--size", "2000", "--epochs", "16"], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for stage in ("queries: reusing", "crawl: reusing", "train: reusing"):
        assert stage in proc.stdout
    # every shard of the first run is reused, none written again, and the tar files are untouched
    extra = json.loads((shards / "shard_stats.json").read_text())["extra"]
    assert (extra["shards_written"], extra["shards_reused"]) == (0, len(before))
    assert f"shard(s) ({len(before)} reused)" in proc.stdout
    assert {p.name: p.stat().st_mtime_ns for p in shards.glob("*.tar")} == before
