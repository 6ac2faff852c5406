"""The stats report, checked against the stage outputs it reads, and opened in a real browser."""

import json
from html import escape as html_escape
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "clipforge"]


def _cli(*args, cwd=ROOT):
    proc = subprocess.run(CLI + list(args), capture_output=True, text=True, cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# every test here reads one module fixture that runs queries, crawl and shard (about a minute)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stage_outputs(world_dir, demo_server, tmp_path_factory):
    """queries -> crawl -> shard on the session's demo world, through the command line."""
    d = tmp_path_factory.mktemp("chain")
    w = world_dir
    _cli("queries", "--wiki", str(w / "wiki" / "*.bz2"), "--wordnet", str(w / "wordnet" / "*"), "--pageviews",
         str(w / "pageviews" / "*.gz"), "--out", str(d / "queries"), "--min-count", "20", "--min-pmi", "2")
    _cli("crawl", "--input", str(w / "crawl" / "*.wat.gz"), "--queries", str(d / "queries"), "--out", str(d / "pairs"),
         "--max-per-query", "15")
    _cli("shard", "--pairs", str(d / "pairs"), "--out", str(d / "shards"), "--allow-private-hosts", "--image-size", "64",
         "--samples-per-shard", "60", "--threads", "8")
    return d


@pytest.fixture(scope="module")
def report(stage_outputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    proc = _cli("stats", "--data", str(stage_outputs), "--out", str(out), "--samples", "12")
    assert "report.html" in proc.stdout
    return out, json.loads((out / "stats.json").read_text())


def test_funnels_are_the_stages_own_numbers(stage_outputs, report):
    _, stats = report
    by_stage = {f["stage"]: f for f in stats["funnels"]}
    for stage, path in (("queries", "queries/queries_stats.json"), ("crawl", "pairs/crawl_stats.json"),
                        ("shard", "shards/shard_stats.json")):
        own = json.loads((stage_outputs / path).read_text())
        f = by_stage[stage]
        assert (f["input"], f["kept"]) == (own["input"], own["kept"])
        assert {d["reason"]: d["count"] for d in f["dropped"]} == own["dropped"]
        assert f["kept"] + sum(d["count"] for d in f["dropped"]) == f["input"]
    assert stats["chain"]["pairs"] == by_stage["crawl"]["kept"] and stats["chain"]["samples"] == by_stage["shard"]["kept"]
    # The crawl's page funnel: every response envelope of the WAT file in one bucket, shown in the report.
    own_pages = json.loads((stage_outputs / "pairs/crawl_stats.json").read_text())["extra"]["pages"]
    pages = by_stage["crawl"]["pages"]
    assert {b["bucket"]: b["count"] for b in pages["buckets"] if b["count"]} == \
        {k: v for k, v in own_pages.items() if k != "truncated"}
    assert pages["responses"] == sum(b["count"] for b in pages["buckets"]) > 0
    md = (report[0] / "report.md").read_text()
    assert f"read {pages['responses']:,} web-archive responses" in md and "| html |" in md


def test_pairs_balancing_and_sources_agree_with_the_parquet_files(stage_outputs, report):
    _, stats = report
    pairs = [r for f in sorted((stage_outputs / "pairs").glob("pairs-*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert stats["pairs"]["pairs"] == len(pairs)
    assert stats["pairs"]["languages"] == dict(Counter(r["lang"] for r in pairs))
    assert stats["pairs"]["caption_chars"]["n"] == len(pairs)
    assert stats["pairs"]["caption_chars"]["max"] == max(len(r["text"]) for r in pairs)
    qc = pq.read_table(stage_outputs / "pairs" / "query_counts.parquet").to_pylist()
    b = stats["balancing"]
    assert b["t"] == 15 and b["queries_matched"] == len(qc)
    assert b["matches_total"] == sum(r["matches"] for r in qc) and b["kept_total"] == sum(r["kept"] for r in qc)
    assert b["head_queries"] == sum(r["matches"] > 15 for r in qc) and b["head_queries"] > 0
    assert b["matches_sorted"] == sorted((r["matches"] for r in qc), reverse=True)
    # Every pair-query match of the kept pairs is counted under its query's source.
    kept_matches = Counter(q for r in pairs for q in r["queries"])
    assert sum(v["kept"] for v in b["sources"].values()) == sum(kept_matches.values())
    assert b["top"][0]["matches"] == max(r["matches"] for r in qc)


def test_shard_numbers_agree_with_the_index_and_sizes(stage_outputs, report):
    _, stats = report
    rows = [r for f in sorted((stage_outputs / "shards").glob("[0-9]*.parquet")) for r in pq.read_table(f).to_pylist()]
    s = stats["shards"]
    ok = [r for r in rows if r["status"] == "success"]
    assert s["attempted"] == len(rows) and s["samples"] == len(ok)
    assert s["status"] == dict(Counter(r["status"] for r in rows))
    sizes = json.loads((stage_outputs / "shards" / "sizes.json").read_text())
    assert s["samples_in_sizes_json"] == sum(sizes.values()) == len(ok)
    assert {t["shard"]: t["samples"] for t in s["shards"]} == sizes
    assert all(t["tar_bytes"] == (stage_outputs / "shards" / t["shard"]).stat().st_size for t in s["shards"])
    assert s["original_longer_side"]["n"] == len(ok)
    assert s["original_longer_side"]["max"] == max(max(r["original_width"], r["original_height"]) for r in ok)
    assert sum(h["count"] for h in s["failures_by_host"]) == len(rows) - len(ok)


def test_report_files_and_contact_sheet(report):
    out, stats = report
    for name in ("report.html", "report.md", "stats.json", "funnel.png", "balancing.png", "sizes.png", "shards.png",
                 "contact_sheet.png"):
        assert (out / name).stat().st_size > 1000, name
    assert len(stats["contact_sheet"]) == 12
    html = (out / "report.html").read_text()
    assert "src=\"http" not in html and "src='http" not in html and html.count("data:image/") >= 12 + 5
    md = (out / "report.md").read_text()
    for section in ("## Funnel", "## Balancing", "## Sources and languages", "## Captions and images", "## Failures",
                    "## Shards", "## Contact sheet"):
        assert section in md and section[3:] in html
    assert "![contact sheet](contact_sheet.png)" in md
    assert all(html_escape(c["caption"]) in html for c in stats["contact_sheet"])   # escaped, as report.py writes


def test_report_opens_in_headless_chromium_with_every_image(report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium)")
    out, _ = report
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(args + ["--virtual-time-budget=5000", "--dump-dom", (out / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    import re

    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded and loaded.group(1) == loaded.group(2) and int(loaded.group(2)) >= 17, loaded
    shot = tmp_path / "shot.png"
    subprocess.run(args + ["--window-size=1200,3000", f"--screenshot={shot}", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1200, 3000) and len(im.convert("L").getcolors(1 << 16) or []) > 50   # not a blank page


def test_stats_bad_input_is_one_line(tmp_path):
    proc = subprocess.run(CLI + ["stats", "--data", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and "no stage outputs" in proc.stderr


def test_stats_on_a_corrupt_pairs_file_is_one_line(stage_outputs, tmp_path):
    """A pairs file that is not parquet (a crawl's real stats beside it) ends in one line naming it."""
    import shutil

    pairs = tmp_path / "pairs"
    pairs.mkdir()
    shutil.copy(stage_outputs / "pairs" / "crawl_stats.json", pairs)
    (pairs / "pairs-00000.parquet").write_bytes(b"not parquet at all")
    proc = subprocess.run(CLI + ["stats", "--data", str(tmp_path), "--out", str(tmp_path / "r")], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pairs-00000.parquet: not a readable parquet file" in lines[0]
