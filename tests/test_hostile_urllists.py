"""Hostile CSV/TSV URL lists through crawl and shard: fields past the CSV field limit, a line of a
gibibyte (gzip of a few MB), a quote that never closes, a header that cannot be a header. Each row
that cannot be read ends as a counted reason, the rows after it are read, and the whole process
tree stays inside a memory bound (the watchdog kills the run past it).

The probes are generated here; the good rows carry real captions from tests/data (the LAION-style
sample), topped up with plain English captions when too few of them fit.
"""

import gzip
import json
import socket
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from clipforge import limits
from clipforge.pipeline import readers

sys.path.insert(0, str(Path(__file__).parent))
from conftest import shared_file  # noqa: E402
from hostile_helpers import GiB, run_bounded  # noqa: E402

CLIPFORGE = [sys.executable, "-m", "clipforge"]
BOUND = int(1.5 * GiB)
LIMIT = limits.MAX_CSV_FIELD_CHARS


def captions(n):
    """n real captions (LAION-style sample) without tabs, line breaks or quotes, or plain ones."""
    path = shared_file("pairs/laion-style-1000.parquet")
    texts = [t for t in pq.read_table(path).column("TEXT").to_pylist()
             if t and len(t) > 20 and not any(c in t for c in '\t\r\n",') and t.isascii()]
    texts += [f"a red circle on a white background number {i}" for i in range(n)]
    return texts[:n]


def closed_port():
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def good(i, text, port=9):
    return f"{text}\thttp://127.0.0.1:{port}/img/{i}.jpg\n"


def queries(tmp_path, texts):
    """A metadata.json whose entries match every good caption (its words of letters)."""
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(sorted({w for t in texts for w in t.split() if w.isalpha()})))
    return path


def crawl(tmp_path, inputs, *flags):
    texts = captions(3)
    out = tmp_path / "pairs"
    o = run_bounded(CLIPFORGE + ["crawl", "--input", *map(str, inputs), "--queries", str(queries(tmp_path, texts)),
                                 "--out", str(out), "--lang", "all", "--min-text-chars", "1", "--quiet",
                                 "--direct_num_workers=1", *flags], max_bytes=BOUND, timeout=600, cwd=tmp_path)
    return o, out


def stats_of(path):
    return json.loads(Path(path).read_text())


def kept_urls(out):
    return sorted(u for f in Path(out).glob("pairs-*.parquet") for u in pq.read_table(f).column("url").to_pylist())


@pytest.mark.slow
def test_fields_past_the_limit_are_counted_and_the_rest_is_read(tmp_path):
    """A field just past the limit (the csv module's own check) and a line past the line cap (read
    through in pieces) are each one field_too_large; the good rows around them are kept."""
    texts = captions(3)
    rows = ["caption\turl\n", good(0, texts[0]),
            "x" * (LIMIT + 10) + "\thttp://127.0.0.1:9/img/big-field.jpg\n", good(1, texts[1]),
            "y" * (readers.LINE_CAP_FIELDS * LIMIT + 5) + "\n", good(2, texts[2])]
    (tmp_path / "list.tsv").write_text("".join(rows))
    # the same file, read by the reader: exactly the good rows, and the two counted
    with open(tmp_path / "list.tsv", newline="") as f:
        got = list(readers.read_text_table(f, "list.tsv", "tsv"))
    assert [c["text"] for c in got if isinstance(c, dict)] == texts
    assert [readers.unreadable_reason(c) for c in got if not isinstance(c, dict)] == ["field_too_large"] * 2
    o, out = crawl(tmp_path, [tmp_path / "list.tsv"])
    assert o.returncode == 0 and not o.killed, o.stderr[-3000:]
    assert o.peak_bytes < BOUND
    s = stats_of(out / "crawl_stats.json")
    assert s["input"] == 5 and s["kept"] == 3 and s["dropped"] == {"field_too_large": 2}, s
    assert s["extra"]["limits"]["max_csv_field_chars"] == LIMIT
    assert kept_urls(out) == [f"http://127.0.0.1:9/img/{i}.jpg" for i in range(3)]


@pytest.mark.slow
def test_a_quote_that_never_closes_is_one_field_too_large_then_reading_goes_on(tmp_path):
    """CSV: an opening quote with no closing one swallows the lines after it until the field
    passes the limit; that row is field_too_large, the lines left of it are rows of the wrong
    width (unreadable_record), and the good row after them is read."""
    texts = captions(2)
    body = ("url,caption\n" + f"http://127.0.0.1:9/img/0.jpg,{texts[0]}\n"
            + 'http://127.0.0.1:9/img/open.jpg,"a quote that never closes\n' + ("z" * 999 + "\n") * 1100
            + f"http://127.0.0.1:9/img/1.jpg,{texts[1]}\n")
    (tmp_path / "list.csv").write_text(body)
    o, out = crawl(tmp_path, [tmp_path / "list.csv"])
    assert o.returncode == 0 and not o.killed, o.stderr[-3000:]
    s = stats_of(out / "crawl_stats.json")
    assert s["kept"] == 2 and s["dropped"]["field_too_large"] == 1, s
    assert s["kept"] + sum(s["dropped"].values()) == s["input"]
    assert set(s["dropped"]) == {"field_too_large", "unreadable_record"}
    assert kept_urls(out) == ["http://127.0.0.1:9/img/0.jpg", "http://127.0.0.1:9/img/1.jpg"]


def gib_line_list(path, header=True, port=9):
    """A .tsv.gz of a few MB whose third line is one field of a gibibyte (no line break)."""
    texts = captions(2)
    with gzip.open(path, "wb", compresslevel=1) as f:
        if header:
            f.write(b"caption\turl\n")
        f.write(good(0, texts[0], port).encode())
        chunk, left = b"y" * (16 << 20), GiB
        while left > 0:
            f.write(chunk[:left])
            left -= len(chunk)
        f.write(f"\thttp://127.0.0.1:{port}/img/huge.jpg\n".encode())
        f.write(good(1, texts[1], port).encode())
    assert path.stat().st_size < 16 << 20
    return texts


@pytest.mark.slow
def test_a_gibibyte_line_in_a_small_gzip_is_counted_in_bounded_memory(tmp_path):
    """Inflated a piece at a time and read through in pieces: a 1 GiB line never sits in memory
    (Beam's own gzip reader would inflate it whole, and csv.reader would hold it whole)."""
    gib_line_list(tmp_path / "list.tsv.gz")
    o, out = crawl(tmp_path, [tmp_path / "list.tsv.gz"])
    assert o.returncode == 0 and not o.killed, (o.killed, o.peak_bytes, o.stderr[-3000:])
    assert o.peak_bytes < BOUND
    s = stats_of(out / "crawl_stats.json")
    assert s["input"] == 3 and s["kept"] == 2 and s["dropped"] == {"field_too_large": 1}, s


@pytest.mark.slow
def test_shard_counts_the_field_in_its_funnel_and_fetches_the_rest(tmp_path):
    """The same gibibyte line given straight to shard (a URL list, as crawl reads it), headerless:
    field_too_large in shard_stats.json, and the two good rows fetched from a port where nothing
    listens: connect_error (a refused connection is not a timeout)."""
    port = closed_port()
    gib_line_list(tmp_path / "list.tsv.gz", header=False, port=port)
    out = tmp_path / "shards"
    o = run_bounded(CLIPFORGE + ["shard", "--pairs", str(tmp_path / "list.tsv.gz"), "--no-header", "--url-col", "2",
                                 "--text-col", "1", "--out", str(out), "--allow-private-hosts", "--retries", "0",
                                 "--timeout", "5", "--quiet", "--direct_num_workers=1"],
                    max_bytes=BOUND, timeout=600, cwd=tmp_path)
    assert o.returncode == 0 and not o.killed, (o.killed, o.peak_bytes, o.stderr[-3000:])
    assert o.peak_bytes < BOUND
    s = stats_of(out / "shard_stats.json")
    assert s["input"] == 3 and s["kept"] == 0 and s["dropped"] == {"field_too_large": 1, "connect_error": 2}, s
    assert s["extra"]["limits"]["max_csv_field_chars"] == LIMIT


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["crawl", "shard"])
def test_a_header_past_the_limit_is_one_line(tmp_path, stage):
    """A header row is names: one over the limit (plain), or a gibibyte header line (gzip), is no
    URL list; the stage stops in one line before it starts, in bounded memory."""
    (tmp_path / "wide.tsv").write_text("caption\t" + "u" * (LIMIT + 1) + "\n" + good(0, "a red circle"))
    with gzip.open(tmp_path / "bomb.tsv.gz", "wb", compresslevel=1) as f:
        chunk, left = b"h" * (16 << 20), GiB
        while left > 0:
            f.write(chunk[:left])
            left -= len(chunk)
        f.write(b"\n" + good(0, "a red circle").encode())
    for name in ("wide.tsv", "bomb.tsv.gz"):
        args = (["crawl", "--input", name, "--queries", str(queries(tmp_path, ["a red circle"]))] if stage == "crawl"
                else ["shard", "--pairs", name])
        o = run_bounded(CLIPFORGE + args + ["--out", "out"], max_bytes=BOUND, timeout=300, cwd=tmp_path)
        assert o.returncode == 1 and not o.killed, (name, o.killed, o.stderr[-2000:])
        assert len(o.stderr.strip().splitlines()) == 1 and "the header row (line 1)" in o.stderr, o.stderr[-2000:]
        assert "longer than" in o.stderr
        assert o.peak_bytes < BOUND
        assert not (tmp_path / "out").exists()


def test_a_jsonl_line_past_the_cap_is_counted_and_not_held():
    import io

    cap = readers.LINE_CAP_FIELDS * limits.MAX_CSV_FIELD_CHARS
    good = [json.dumps({"url": f"http://a.example/{i}.jpg", "caption": f"a cat {i}"}) for i in range(3)]
    huge = json.dumps({"url": "http://a.example/x.jpg", "caption": "y" * (cap + 10)})
    got = list(readers.read_text_table(io.StringIO("\n".join([good[0], huge, good[1], "", good[2]]) + "\n"),
                                       "list.jsonl", "jsonl"))
    assert [c["url"] for c in got if isinstance(c, dict)] == [f"http://a.example/{i}.jpg" for i in range(3)]
    bad = [c for c in got if not isinstance(c, dict)]
    assert len(bad) == 1 and isinstance(bad[0], readers.FieldTooLarge) and "line 2" in bad[0].detail
