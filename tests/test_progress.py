"""Progress lines of the long-running Beam stages: counts grow while the stage runs, and the
summary comes last."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import shared_file

CLI = str(Path(sys.executable).with_name("clipforge"))


def _lines(stderr, prefix):
    return [ln for ln in stderr.splitlines() if ln.startswith(prefix)]


@pytest.mark.slow
def test_crawl_reports_progress_while_it_runs(tmp_path):
    """150,000 links of real captions (the LAION-style list, each caption under many URLs),
    progress every 0.1 s: the matching lines' counts grow, then the dedup/balance lines. (At one
    line a second a fast two-core machine matched all six parts between two lines.)"""
    texts = [t for t in pq.read_table(shared_file("pairs/laion-style-1000.parquet")).column("TEXT").to_pylist() if t]
    n = 150_000
    rows = {"url": [f"http://127.0.0.1/{i % 97}/{i}.jpg" for i in range(n)],
            "caption": [f"{texts[i % len(texts)]} {i % 7919}" for i in range(n)]}
    pq.write_table(pa.table(rows), tmp_path / "links.parquet", row_group_size=25_000)
    (tmp_path / "q.json").write_text('["the", "a", "of", "and", "with"]')
    r = subprocess.run([CLI, "crawl", "--input", str(tmp_path / "links.parquet"), "--queries", str(tmp_path / "q.json"),
                        "--out", str(tmp_path / "out"), "--lang", "all", "--progress-every", "0.1"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    matching = _lines(r.stderr, "crawl: matching")
    read = [int(re.search(r"([\d,]+) links read", ln).group(1).replace(",", "")) for ln in matching]
    # how many 1-second lines the matching phase gets depends on the machine's speed: at least one,
    # and the counts never go back
    assert read and read == sorted(read) and all(0 < x <= n for x in read), r.stderr
    assert all(re.search(r"\d+/6 parts", ln) and "ETA" in ln for ln in matching)
    # after matching, the dedup/balance phase (seconds on 150,000 links) gets lines of its own
    after = [ln for ln in r.stderr.splitlines() if "partitions deduplicated" in ln]
    assert after, r.stderr
    for ln in after:
        m = re.search(r"crawl: ([\d,]+) links read, [\d,]+ matched; partitions deduplicated ([01])/1, balanced ([01])/1$",
                      ln)
        assert m and m.group(1) == f"{n:,}" and m.group(3) <= m.group(2), ln
    kept = json.loads((tmp_path / "out" / "crawl_stats.json").read_text())["kept"]
    assert f"crawl: {kept:,} of {n:,} image links kept" in r.stdout.splitlines()[-1]
    quiet = subprocess.run([CLI, "crawl", "--input", str(tmp_path / "links.parquet"), "--queries",
                            str(tmp_path / "q.json"), "--out", str(tmp_path / "out2"), "--lang", "all", "--quiet"],
                           capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0 and not _lines(quiet.stderr, "crawl: matching")


@pytest.mark.slow
def test_shard_reports_progress_while_it_runs(tmp_path):
    """12,000 pairs whose URLs are refused at once (nothing listens on 127.0.0.1:9), 300 per
    shard: the whole-stage line counts shards and pairs upward."""
    n = 12_000
    pq.write_table(pa.table({"url": [f"http://127.0.0.1:9/{i}.jpg" for i in range(n)],
                             "text": [f"a picture {i}" for i in range(n)]}), tmp_path / "pairs.parquet")
    r = subprocess.run([CLI, "shard", "--pairs", str(tmp_path / "pairs.parquet"), "--out", str(tmp_path / "s"),
                        "--allow-private-hosts", "--retries", "0", "--samples-per-shard", "300",
                        "--progress-every", "1"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = _lines(r.stderr, "shard: [")
    done = [int(re.search(r"\] (\d+)/40 shards", ln).group(1)) for ln in lines]
    tried = [int(re.search(r"([\d,]+) pairs tried", ln).group(1).replace(",", "")) for ln in lines]
    assert len(lines) >= 2 and done == sorted(done) and tried == sorted(tried) and tried[-1] > tried[0], r.stderr
    assert "pairs have an image" in r.stdout.splitlines()[-1]
