"""The loader benchmark's parts: the worker counts it tries, and a toy run of its comparisons
(real shards, real loader worker processes on both sides) that redraws its text and figure."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import bench_loader, harness  # noqa: E402


def test_worker_counts_reach_the_cpus():
    assert bench_loader.worker_counts(1) == [0, 1]
    assert bench_loader.worker_counts(2) == [0, 1, 2]
    assert bench_loader.worker_counts(12) == [0, 1, 2, 4, 8, 12]
    assert bench_loader.samples_for(2) == 2048 and bench_loader.samples_for(64) == 8 * 128 * 64


def test_a_toy_run_fills_the_table_the_figure_and_the_core_count(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_loader, "samples_for", lambda m: 300)
    plot = tmp_path / "loader.png"
    comparisons = bench_loader.benchmarks(tmp_path, max_workers=1, sizes=((80, 60),), repeats=1, plot=plot)
    assert [c.name for c in comparisons] == ["loader, 0 workers: 80x60 JPEGs -> 224 px",
                                             "loader, 1 worker: 80x60 JPEGs -> 224 px"]
    results = [harness.run(c, log=lambda *a: None) for c in comparisons]   # verify() checks the sample counts
    assert all(r.ours_rate > 0 and r.peer_rate > 0 for r in results)
    text = bench_loader.ABOUT
    rows = [line for line in text.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")]
    assert len(rows) == 2 and "(main process)" in rows[0]
    assert "cores for clipforge's loader" in text and plot.stat().st_size > 1000
    rate, flops, step_s = bench_loader.h100_rate()
    assert 11e12 < flops < 11.6e12 and rate == 256 / step_s   # ViT-B/32 at 256: the issue's ~11 TFLOP a step
