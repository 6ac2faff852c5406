"""The benchmark harness: ratios and the report, checked on work whose cost is known."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness  # noqa: E402


def test_ratio_is_peer_time_over_ours_and_report_lists_it():
    calls = []
    c = harness.Comparison(name="sum", ours=lambda: calls.append("ours") or sum(range(10_000)),
                           peer=lambda: calls.append("peer") or sum(list(range(10_000)) * 3),
                           peer_name="naive", items=10_000, unit="numbers", input="range(10000)", repeats=3,
                           setup=lambda: calls.append("setup"), notes="toy")
    r = harness.run(c, log=lambda *_: None)
    assert calls == ["setup", "ours", "setup", "peer"] * 3  # alternating, set-up before each
    assert len(r.ours_s) == len(r.peer_s) == 3
    r.ours_s, r.peer_s = [1.0, 2.0, 9.0], [4.0, 6.0, 5.0]  # medians 2 and 5
    assert r.ratio == 2.5 and r.ours_rate == 5000 and r.peer_rate == 2000
    import dataclasses

    md = harness.markdown({"bench_toy": {"measured": "2026-01-01 00:00 UTC", "command": "make bench",
                                         "machine": "a CPU, 2 cores", "rows": [dataclasses.asdict(r)]}})
    assert "| sum | range(10000) | 5,000 numbers/s | naive | 2,000 numbers/s | **2.50x** |  |" in md
    assert "cores" in md and "- **sum**: toy" in md and "## toy" in md and "Measured 2026-01-01" in md
    assert "Profile" not in md
    md = harness.markdown({"bench_toy": {"measured": "2026-01-01 00:00 UTC", "command": "make bench",
                                         "machine": "a CPU, 2 cores", "rows": [dataclasses.asdict(r)],
                                         "about": "Profile: where the time goes.\n"}})
    assert "on a CPU, 2 cores.\n\nProfile: where the time goes.\n\n| benchmark |" in md


def test_subprocess_benchmarks_record_peak_memory_of_the_process_tree():
    # the child allocates ~64 MiB and keeps it for a moment: the sampled peak must see it
    hold = [sys.executable, "-c", "import time; b = bytearray(64 << 20); b[::4096] = b'x' * len(b[::4096]); "
            "time.sleep(1.0)"]
    small = [sys.executable, "-c", "import time; time.sleep(0.5)"]
    c = harness.Comparison(name="mem", ours=small, peer=hold, peer_name="big", items=1, repeats=1)
    r = harness.run(c, log=lambda *_: None)
    assert r.peer_rss[0] > r.ours_rss[0] + (48 << 20)
    import dataclasses

    md = harness.markdown({"bench_mem": {"measured": "now", "command": "make bench", "machine": "here",
                                         "rows": [dataclasses.asdict(r)]}})
    assert " MiB / " in md


def test_a_partial_rerun_keeps_the_rows_it_did_not_run_with_their_dates():
    old = [{"name": "a", "v": 1, "measured": "d1"}, {"name": "b", "v": 1, "measured": "d1"}]
    new = [{"name": "b", "v": 2, "measured": "d2"}, {"name": "c", "v": 2, "measured": "d2"}]
    assert harness.merge_rows(old, new) == [{"name": "a", "v": 1, "measured": "d1"},
                                            {"name": "b", "v": 2, "measured": "d2"},
                                            {"name": "c", "v": 2, "measured": "d2"}]
    row = dict(name="kept", peer_name="p", unit="links", items=10, input="in", ours_s=[1.0], peer_s=[2.0],
               notes="n", measured="2026-01-01 00:00 UTC")
    fresh = dict(row, name="fresh", measured="2026-02-01 00:00 UTC")
    md = harness.markdown({"bench_x": {"measured": "2026-02-01 00:00 UTC", "command": "make bench", "machine": "m",
                                       "rows": [row, fresh]}})
    assert "- **kept**: n (this row: measured 2026-01-01 00:00 UTC, kept from an earlier run)" in md
    assert "- **fresh**: n\n" in md
