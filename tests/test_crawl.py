"""The crawl stage: readers on real archives and URL lists, caption rules, matching against a
brute-force reference, balancing against its formula, determinism, and damaged input."""

import gzip
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from clipforge.pipeline import balance, captions, readers
from clipforge.pipeline.crawl import CrawlConfig
from clipforge.pipeline.crawl_stage import expand_inputs, load_queries, run
from clipforge.pipeline.langid import LanguageID
from clipforge.pipeline.matching import Matcher, spaced
from clipforge.queries.pipeline import QueriesConfig
from clipforge.queries.stage import run as run_queries
from clipforge.schemas import CURATED_PAIR
from clipforge.schemas import pairs as pair_ids
from clipforge.schemas.files import read_stats
from clipforge.schemas.validate import validate_parquet

from conftest import shared_file

CLI = str(Path(sys.executable).with_name("clipforge"))


def pairs_of(out):
    rows = []
    for f in sorted(Path(out).glob("pairs-*.parquet")):
        table = pq.read_table(f)
        assert validate_parquet(f, CURATED_PAIR) == table.num_rows, f
        rows += table.to_pylist()
    return rows


# --- captions, matching, balancing: the functional core ------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("  a red&nbsp;circle &amp; a\tsquare ", ("a red circle & a square", None)),
    ("a red circle â€“ free clip art", ("a red circle – free clip art", None)),
    ("caf\u00c3\u00a9 table", ("café table", None)),
    ("zero\u200bwidth", ("zerowidth", None)),
    ("", (None, "no_text")), ("   ", (None, "no_text")), ("ab", (None, "text_too_short")),
    ("x" * 1025, (None, "text_too_long")),
    ("IMG_0042.jpg", (None, "text_file_name")), ("kyle_lo_profile.jpg", (None, "text_file_name")),
    ("DSC01234", (None, "text_file_name")), ("spacer.gif", (None, "text_file_name")),
    ("12345", (None, "text_number")), ("2019-05-01", (None, "text_number")),
    ("logo", (None, "text_boilerplate")), ("Image", (None, "text_boilerplate")),
    ("untitled-12", (None, "text_boilerplate")), ("an image", (None, "text_boilerplate")),
    ("logo of a red star", ("logo of a red star", None)), ("photo of a dog", ("photo of a dog", None)),
])
def test_caption_rules(raw, expected):
    assert captions.clean(raw) == expected


def test_matching_semantics():
    m = Matcher(["red", "red circle", "Circle", "U.S.", "kid's", "polka dot"])
    assert m.match("a red circle, on white.") == ["red", "red circle"]
    assert m.match("Red circle") == []  # case-sensitive
    assert m.match("reddish circles") == []  # word boundaries
    assert m.match("red:red;red?") == ["red"]
    assert m.match('"red" (circle)') == []  # quotes and brackets are not spaced
    assert m.match("my kid's Circle!") == ["Circle", "kid's"]
    assert m.match("the U.S. flag") == []  # MetaCLIP quirk: '.' is spaced in the text, not in entries
    assert m.match("polka\tdot") == ["polka dot"]
    assert spaced("a,b") == " a , b "
    assert Matcher([]).match("anything") == []


def brute_force(queries, text):
    s = spaced(text)
    return sorted({q for q in queries if f" {q} " in s})


def test_matching_equals_brute_force_on_real_captions(world_dir):
    laion = pq.read_table(shared_file("pairs/laion-style-1000.parquet")).column("TEXT").to_pylist()
    demo = [t["text"] for t in pq.read_table(world_dir / "truth.parquet").to_pylist()]
    texts = [t for t in laion + demo if t]
    words = Counter(w for t in texts for w in t.split())
    queries = sorted(w for w, c in words.items() if c >= 3) + ["red circle", "polka dot", "New York", "T-shirt"]
    m = Matcher(queries)
    matched = 0
    for t in texts:
        got = m.match(t)
        assert got == brute_force(queries, t), t
        matched += bool(got)
    assert matched > len(texts) // 2


def test_keep_probability_and_draw():
    counts = {"head": 1000, "tail": 10, "mid": 400}
    assert balance.keep_probability(["tail"], counts, 100) == 1.0
    assert balance.keep_probability(["head"], counts, 100) == pytest.approx(0.1)
    assert balance.keep_probability(["head", "mid"], counts, 100) == pytest.approx(1 - 0.9 * 0.75)
    draws = [balance.draw(7, f"uid{i}") for i in range(20000)]
    assert draws == [balance.draw(7, f"uid{i}") for i in range(20000)]
    assert abs(sum(d < 0.3 for d in draws) / 20000 - 0.3) < 0.02
    assert balance.draw(7, "x") != balance.draw(8, "x")


def test_uid_normalises_the_url():
    a = pair_ids.uid("HTTP://Example.COM:80/a/b.jpg#frag", "a red circle")
    assert a == pair_ids.uid("http://example.com/a/b.jpg", "a red circle")
    assert a != pair_ids.uid("http://example.com/a/B.jpg", "a red circle")
    assert a != pair_ids.uid("http://example.com/a/b.jpg?x=1", "a red circle")
    assert a != pair_ids.uid("http://example.com/a/b.jpg", "a red circle!")
    assert pair_ids.uid("https://e.com:8443/x", "t") != pair_ids.uid("https://e.com/x", "t")


def test_langid_on_real_text():
    lid = LanguageID()
    assert lid.predict("a red circle on a white background")[0] == "en"
    assert lid.predict("ein roter Kreis auf weißem Hintergrund")[0] == "de"
    # symbols only: the model returns no label at all, which predict reports as undetermined
    assert lid.predict("☆☆☆") == ("und", 0.0)
    assert lid.predict_many(["☆☆☆", "a red circle on a white background"])[0] == ("und", 0.0)
    got = lid.predict_many(["un cercle rouge sur fond blanc", "un círculo de color rojo"])
    assert [g[0] for g in got] == ["fr", "es"]


def _real_links():
    """(url, raw text) of real links: the LAION-style list and the images of two real WARCs."""
    links = []
    laion = pq.read_table(shared_file("pairs/laion-style-1000.parquet")).to_pylist()
    links += [(r["URL"], r["TEXT"] or "") for r in laion]
    for name in ("web/dolma-sample-0000.warc.gz", "web/cc-main-2020-34-slice.warc.gz"):
        links += [(c["url"], c["text"]) for c in read_all(shared_file(name), "warc") if isinstance(c, dict)]
    return links


def test_vectorised_caption_cleaning_equals_clean():
    """clean_many (Arrow compute for plain ASCII texts, clean() for the rest) gives clean()'s
    outcome for every text: real alt texts, and generated ones made of the characters and words
    the rules look at (controls, white space, digits, file extensions, boilerplate words), at
    the length limits, and with other length limits."""
    import random

    rng = random.Random(11)
    pieces = list("abcxXiImM0123456789 .,:;/#+%()-_|&\t\n\r\x0b\x0c\x1c\x1f\x00\x7f") + [
        "image", "IMG", "logo", "an ", "a ", ".jpeg", ".PNG", "photo", "dsc", "alt text", "\u00d7", "\u00e9", "&amp;",
        "\u200b", "\u00c3\u00a9"]
    texts = [t for _, t in _real_links()]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 10))) for _ in range(40000)]
    texts += ["x" * n for n in (1023, 1024, 1025, 8192, 8193)] + [" " * 9000 + "abc", "a " * 600, "\x00" * 5]
    assert captions.clean_many(texts) == [captions.clean(t) for t in texts]
    assert captions.clean_many(texts, 1, 6) == [captions.clean(t, 1, 6) for t in texts]
    assert captions.clean_many([]) == []


def test_vectorised_url_check_equals_the_regex():
    """url_codes (RE2 over Arrow, Python for the rest) decides as the Python regex does, on real
    URLs and on generated ones full of the characters where the two engines differ."""
    import random

    import pyarrow as pa

    from clipforge.pipeline.textfilter import REASONS, url_codes, url_problem

    rng = random.Random(5)
    parts = ["http://", "https://", "HTTP://", "ftp://", "a.com", "/x", "?q=1", "#f", ":80", ":", "@", "u@",
             "[::1]", "[zz]", " ", "\t", "\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u3000", "é",
             "%20", "data:", "javascript:", "//", "-", ".", "_"]
    urls = [u for u, _ in _real_links()]
    urls += ["".join(rng.choice(parts) for _ in range(rng.randint(1, 7))) for _ in range(30000)]
    urls += ["http://a.com/x\n", "http://ex\u2100ample.com/a.jpg", "https://a.b/" + "x" * 5000]
    got = [REASONS[c] for c in url_codes(pa.array(urls, pa.string()))]
    want = [url_problem(u) or "kept" for u in urls]
    assert got == want
    assert {"kept", "bad_url_scheme", "invalid_url"} <= set(got)


@pytest.mark.parametrize("langs", [(), ("en",)])
def test_batched_text_stage_equals_the_plain_steps(langs):
    """The batched text stage (distinct texts once, lid.176 per batch, for every language only on
    texts that match) gives per link what the plain steps give: clean, lid.176, match, uid."""
    from clipforge.pipeline.textfilter import TextFilter, url_problem

    links = _real_links()
    links += links[:300]  # repeats across batches
    queries = ["a", "the", "and", "of", "photo", "red", "new", "le", "de", "的", "Home"]
    tf, lid, m = TextFilter(queries, langs=langs), LanguageID(), Matcher(queries)
    got = []
    for i in range(0, len(links), 97):
        batch = links[i:i + 97]
        got += tf.filter_batch([u for u, _ in batch], [t for _, t in batch])
    for (url, raw), g in zip(links, got):
        problem = url_problem(url)
        text, reason = captions.clean(raw)
        if problem or reason:
            assert g == (problem or reason), (url, raw)
            continue
        lang, score = lid.predict(text)
        if langs and lang not in langs:
            assert g == "lang_not_wanted"
            continue
        ids = [m.queries.index(q) for q in m.match(text)]
        if not ids:
            assert g == "no_query_match"
            continue
        assert g[0] == pair_ids.uid(url, text) and g[1] == text and g[2] == lang and g[4] == ids
        assert g[3] == pytest.approx(score, rel=1e-6)
    outcomes = Counter(g if isinstance(g, str) else "kept" for g in got)
    assert outcomes["kept"] > 100 and outcomes["no_query_match"] > 10


# --- readers on real files ------------------------------------------------------------------------

def read_all(path, fmt):
    with open(path, "rb") as f:
        reader = readers.read_warc if fmt == "warc" else readers.read_wat
        return list(reader(f, str(path)))


def test_real_wget_warc_resolves_relative_src_and_keeps_file_name_alts():
    cands = read_all(shared_file("web/dolma-sample-0000.warc.gz"), "warc")
    assert not any(isinstance(c, readers.Unreadable) for c in cands)
    with_text = [c for c in cands if c["text"].strip()]
    assert sum(c["text_attr"] == "alt" for c in with_text) == 169  # the sample's README: 169 non-empty alts
    assert all(c["page_url"].startswith("http") for c in cands)  # wget's <...> around the URI removed
    assert all(c["url"].startswith(("http://", "https://", "data:")) for c in cands)
    relative_targets = [c for c in cands if c["url"].endswith(("/alt.webp", "/me-512.webp"))]
    assert relative_targets and all(c["url"].split("/")[2] == c["page_url"].split("/")[2] for c in relative_targets)
    reasons = Counter(captions.clean(c["text"])[1] for c in with_text)
    assert reasons["text_file_name"] >= 1  # e.g. kyle_lo_profile.jpg


def test_real_common_crawl_slice_decodes_legacy_charsets():
    cands = read_all(shared_file("web/cc-main-2020-34-slice.warc.gz"), "warc")
    texts = [c["text"] for c in cands if c["text"].strip()]
    assert len(texts) >= 25
    assert not any("\ufffd" in t for t in texts)
    assert any(any("\u4e00" <= ch <= "\u9fff" for ch in t) for t in texts)  # Chinese from gb2312/gbk pages
    assert any(any("\u0400" <= ch <= "\u04ff" for ch in t) for t in texts)  # Russian from windows-1251 pages


def test_decode_html_priorities():
    body = '<html><head><meta charset="windows-1251"></head><body>Привет</body></html>'.encode("cp1251")
    assert readers.decode_html(body, "text/html")[1] == "cp1251"
    assert "Привет" in readers.decode_html(body, "text/html")[0]
    assert readers.decode_html(body, "text/html; charset=utf-8")[1] == "utf-8"  # the header wins
    assert readers.decode_html(b"\xef\xbb\xbfhi", "text/html; charset=cp1251") == ("hi", "utf-8")  # BOM wins
    assert readers.decode_html("é".encode("latin-1"), "text/html; charset=ISO-8859-1")[1] == "cp1252"


def test_html_images_base_title_and_lazy_src():
    html = ('<html><head><base href="/static/"></head><body><img src="a.jpg" alt="A">'
            '<img src="//cdn.x.org/b.png" title="B title"><img data-src="c.jpg" src="data:image/gif;base64,R0">'
            '<img src="d.jpg"><img src="" alt="empty src"></body></html>')
    got = readers.html_images(html, "http://x.org/page/index.html")
    assert got == [("http://x.org/static/a.jpg", "A", "alt"), ("http://cdn.x.org/b.png", "B title", "title"),
                   ("http://x.org/static/c.jpg", "", "none"), ("http://x.org/static/d.jpg", "", "none")]


def test_laion_style_list_autodetects_columns(tmp_path):
    items = expand_inputs([str(shared_file("pairs/laion-style-1000.parquet"))])
    assert items and all(fmt == "parquet" for _, fmt, _ in items)
    cfg = CrawlConfig(inputs=items, queries=["a", "the", "of"], out=str(tmp_path / "o"), langs=())
    s = run(cfg, ["--direct_num_workers=1"])
    assert s["input"] == 1000 and s["kept"] > 150 and s["dropped"]["no_query_match"] > 300
    rows = pairs_of(tmp_path / "o")
    assert len(rows) == s["kept"]
    assert all(r["input_format"] == "urllist" and r["page_url"] is None for r in rows)


# --- the pipeline on the demo web -----------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_queries(world_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("queries")
    run_queries(QueriesConfig(wiki=[str(world_dir / "wiki" / "*.bz2")], wordnet=[str(world_dir / "wordnet" / "*")],
                              pageviews=[str(world_dir / "pageviews" / "*.gz")], out=str(out), min_count=20,
                              min_pmi=2.0), ["--direct_num_workers=1"])
    return load_queries(str(out))


@pytest.mark.slow
def test_three_forms_of_the_same_pages_give_the_same_pairs(world_dir, demo_queries, tmp_path):
    results = {}
    for fmt, pattern in (("warc", "crawl/*.warc.gz"), ("wat", "crawl/*.wat.gz"), ("urllist", "crawl/urls.parquet")):
        cfg = CrawlConfig(inputs=expand_inputs([str(world_dir / pattern)]), queries=demo_queries,
                          out=str(tmp_path / fmt))
        stats = run(cfg, ["--direct_num_workers=2"])
        rows = pairs_of(tmp_path / fmt)
        assert len(rows) == stats["kept"] > 0
        results[fmt] = {(r["uid"], r["url"], r["text"], r["page_url"], r["lang"], tuple(r["queries"])) for r in rows}
        assert all(r["input_format"] == fmt for r in rows)
    assert results["warc"] == results["wat"] == results["urllist"]
    # relative, root-relative, protocol-relative and <base> srcs all came back as absolute URLs
    truth = {(t["url"], t["page_url"]) for t in pq.read_table(world_dir / "truth.parquet").to_pylist()}
    assert {(r[1], r[3]) for r in results["wat"]} <= truth


@pytest.mark.slow
def test_funnel_buckets_on_the_demo_web(world_dir, demo_queries, tmp_path):
    cfg = CrawlConfig(inputs=expand_inputs([str(world_dir / "crawl" / "*.warc.gz"),
                                            str(world_dir / "crawl" / "*.wat.gz")]),
                      queries=demo_queries, out=str(tmp_path / "o"))
    s = run(cfg, ["--direct_num_workers=2"])
    assert s == read_stats(tmp_path / "o" / "crawl_stats.json") | {"extra": s["extra"]}
    assert s["kept"] + sum(s["dropped"].values()) == s["input"]
    truth = pq.read_table(world_dir / "truth.parquet").to_pylist()
    # the same links in two forms: every kept pair of one form is a duplicate in the other
    assert s["dropped"]["duplicate"] == s["kept"]
    assert s["input"] == 2 * len(truth) + 2 * s["dropped"].get("bad_url_scheme", 0) // 2
    for reason in ("lang_not_wanted", "text_file_name", "text_boilerplate", "no_text"):
        assert s["dropped"][reason] > 0, reason
    kept = pairs_of(tmp_path / "o")
    assert len(kept) == s["kept"] > 0
    assert all(r["lang"] == "en" and r["queries"] for r in kept)


@pytest.fixture(scope="module")
def synthetic_list(tmp_path_factory):
    """A URL list whose balancing outcome is known: 'zebra' alone 400 times, 'lion' alone 60
    times, 'zebra lion' together 40 times."""
    d = tmp_path_factory.mktemp("synthetic")
    rows = [{"url": f"http://127.0.0.1/z/{i}.jpg", "caption": f"a zebra number {i}"} for i in range(400)]
    rows += [{"url": f"http://127.0.0.1/l/{i}.jpg", "caption": f"one lion standing {i}"} for i in range(60)]
    rows += [{"url": f"http://127.0.0.1/zl/{i}.jpg", "caption": f"a zebra and a lion {i}"} for i in range(40)]
    rows += [rows[0], rows[1]]  # exact duplicates
    with open(d / "list.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.write("{this line is garbage\n")
    return d / "list.jsonl"


@pytest.mark.slow
def test_balancing_follows_its_formula(synthetic_list, tmp_path):
    t = 100
    cfg = CrawlConfig(inputs=expand_inputs([str(synthetic_list)]), queries=["zebra", "lion"], out=str(tmp_path / "o"),
                      max_per_query=t, langs=(), seed=3)
    s = run(cfg, ["--direct_num_workers=2"])
    assert s["input"] == 503 and s["dropped"]["duplicate"] == 2 and s["dropped"]["unreadable_record"] == 1
    counts = {r["query"]: r for r in pq.read_table(tmp_path / "o" / "query_counts.parquet").to_pylist()}
    assert counts["zebra"]["matches"] == 440 and counts["lion"]["matches"] == 100
    rows = pairs_of(tmp_path / "o")
    for r in rows:  # the stored probability is the formula, recomputed from query_counts.parquet
        expected = 1 - math.prod(1 - min(1, t / counts[q]["matches"]) for q in r["queries"])
        assert r["keep_prob"] == pytest.approx(expected)
    only_zebra = [r for r in rows if r["queries"] == ["zebra"]]
    # 'zebra' alone: kept with p = 100/440 each; about 400 * 100/440 = 91, binomial sd ~8.4
    assert abs(len(only_zebra) - 400 * t / 440) < 4 * math.sqrt(400 * (t / 440) * (1 - t / 440))
    assert sum(r["queries"] == ["lion"] for r in rows) == 60  # a tail query keeps everything
    expected_total = 400 * t / 440 + 60 + 40 * 1.0
    assert abs(s["kept"] - expected_total) < 4 * math.sqrt(400 * (t / 440) * (1 - t / 440))
    assert counts["zebra"]["kept"] == sum("zebra" in r["queries"] for r in rows)


def _crawl_outputs(tmp_path, name, inputs, flags, out=None):
    cfg = CrawlConfig(inputs=inputs, queries=["zebra", "lion", "red", "circle", "a"], out=out or str(tmp_path / name),
                      max_per_query=50, langs=("en",), rows_per_file=100)
    stats = run(cfg, flags)
    stats["extra"].pop("seconds")
    files = {p.name: p.read_bytes() for p in sorted((tmp_path / name).glob("*.parquet"))}
    assert not (tmp_path / name / "_tmp").exists()
    return files, stats


@pytest.mark.slow
def test_same_output_on_any_worker_count_and_the_portable_runner(synthetic_list, world_dir, tmp_path):
    inputs = expand_inputs([str(synthetic_list), str(world_dir / "crawl" / "*.wat.gz")])
    outs = {name: _crawl_outputs(tmp_path, name, inputs, flags)
            for name, flags in (("one", ["--direct_num_workers=1"]), ("two", ["--direct_num_workers=2"]),
                                ("portable", ["--runner=PortableRunner", "--job_endpoint=embed",
                                              "--environment_type=LOOPBACK"]))}
    assert len(outs["one"][0]) > 3  # several pairs files
    assert outs["one"] == outs["two"] == outs["portable"]
    assert outs["one"][1]["extra"]["partitions"] > 2


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_distributed_engines_give_the_local_output(synthetic_list, world_dir, tmp_path, dask_cluster, worker_pool,
                                                   monkeypatch):
    """The same crawl on a dask.distributed cluster (scheduler and two workers started by the
    fixture, in another working directory: paths given relative) and through Beam's portable
    path with an external worker pool (how Flink and Spark run Python): identical pairs, query
    counts and funnel."""
    (tmp_path / "list.jsonl").write_bytes(synthetic_list.read_bytes())
    archives = [str(world_dir / "crawl" / "*.wat.gz"), str(world_dir / "crawl" / "*.warc.gz")]
    inputs = expand_inputs([str(tmp_path / "list.jsonl"), *archives])
    local = _crawl_outputs(tmp_path, "local", inputs, ["--direct_num_workers=2"])
    monkeypatch.chdir(tmp_path)
    dask = _crawl_outputs(tmp_path, "dask", expand_inputs(["list.jsonl", *archives]),
                          ["--runner=DaskRunner", f"--dask_client_address={dask_cluster}"], out="dask")
    pool = _crawl_outputs(tmp_path, "pool", inputs, worker_pool)
    assert local[1]["kept"] > 0 and local[1]["dropped"]["duplicate"] > 0
    assert dask == local
    assert pool == local


def test_damaged_archives_are_counted_not_fatal(world_dir, tmp_path):
    data = (world_dir / "crawl" / "demo-00000.warc.gz").read_bytes()
    members, pos = [], 0
    d = __import__("zlib").decompressobj(31)
    while pos < len(data):  # split the file into its gzip members
        d = __import__("zlib").decompressobj(31)
        d.decompress(data[pos:])
        end = len(data) - len(d.unused_data)
        members.append(data[pos:end])
        pos = end
    assert len(members) > 10
    broken = bytearray(members[6])
    broken[len(broken) // 2: len(broken) // 2 + 40] = b"\x00" * 40  # a broken gzip member mid-file
    malformed = gzip.compress(b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: nonsense\r\n\r\n")
    damaged = b"".join(members[:6]) + bytes(broken) + malformed + b"".join(members[7:])
    (tmp_path / "damaged.warc.gz").write_bytes(damaged)
    cfg = CrawlConfig(inputs=expand_inputs([str(tmp_path / "damaged.warc.gz")]), queries=["red", "circle"],
                      out=str(tmp_path / "o"))
    s = run(cfg, ["--direct_num_workers=1"])
    assert s["dropped"]["unreadable_record"] >= 1
    assert s["kept"] + sum(s["dropped"].values()) == s["input"]


@pytest.mark.slow
def test_cli_bad_inputs_are_one_line(tmp_path, world_dir):
    (tmp_path / "list.csv").write_text("link,words\nhttp://127.0.0.1/a.jpg,a red circle\n")
    (tmp_path / "cc3m.tsv").write_text("a red circle\thttp://127.0.0.1/a.jpg\n")
    (tmp_path / "list.jsonl").write_text('{"url": "http://127.0.0.1/a.jpg", "caption": "a red circle"}\n')
    pq.write_table(pq.read_table(shared_file("pairs/laion-style-1000.parquet")).slice(0, 5), tmp_path / "l.parquet")
    (tmp_path / "q.json").write_text('["red"]')
    headerless = ["--input", "cc3m.tsv", "--queries", "q.json", "--no-header"]
    for args, message in [
        (["--input", "cc3m.tsv", "--queries", "q.json", "--url-col", "2", "--text-col", "1"], "pass --no-header"),
        (["--input", "cc3m.tsv", "--queries", "q.json"], "no url column among a red circle, http://127.0.0.1/a.jpg"),
        (headerless + ["--url-col", "2", "--text-col", "3"], "--text-col 3 is past the last column"),
        (headerless + ["--url-col", "0", "--text-col", "1"], "--url-col '0': with --no-header a column is a position"),
        (headerless + ["--url-col", "-1", "--text-col", "1"], "a column is a position"),
        (headerless + ["--url-col", "url", "--text-col", "1"], "a column is a position"),
        (headerless + ["--url-col", "2", "--text-col", "1", "--page-url-col", "5"], "--page-url-col 5 is past"),
        (headerless + ["--text-col", "1"], "--no-header needs --url-col and --text-col"),
        (["--input", "l.parquet", "--queries", "q.json", "--no-header", "--url-col", "1", "--text-col", "2"],
         "--no-header is for CSV and TSV lists (parquet names its columns)"),
        (["--input", "list.jsonl", "--queries", "q.json", "--no-header", "--url-col", "1", "--text-col", "2"],
         "--no-header is for CSV and TSV lists (JSONL"),
        (["--input", "nope-*.warc.gz", "--queries", "q.json"], "no such file"),
        (["--input", "list.csv", "--queries", "q.json"], "no url column"),
        (["--input", "list.csv", "--queries", "q.json", "--url-col", "link", "--text-col", "text"], "no column 'text'"),
        (["--input", "notes.doc", "--queries", "q.json"], "no such file"),
        (["--input", str(world_dir / "manifest.json"), "--queries", "q.json"], "not a JSON object"),
        (["--input", str(world_dir / "routes.json"), "--queries", "q.json"], "not a JSON object"),
        (["--input", "list.csv"], "--queries is required"),
        (["--input", "list.csv", "--queries", "missing-dir"], "no such file or directory"),
    ]:
        r = subprocess.run([CLI, "crawl", *args, "--out", "o"], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
        assert r.returncode != 0, args
        assert message in r.stderr and r.stderr.strip().count("\n") == 0, (args, r.stderr)
    r = subprocess.run([CLI, "crawl", "--input", "list.csv", "--queries", "q.json", "--url-col", "link",
                        "--text-col", "words", "--out", "o", "--lang", "all"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert pairs_of(tmp_path / "o")[0]["text"] == "a red circle"


def _real_captions(n):
    """(caption, url) of n real LAION-style pairs with a caption (some hold commas and quotes:
    the lists below are written with csv's quoting, so both forms of each file hold the same)."""
    rows = pq.read_table(shared_file("pairs/laion-style-1000.parquet")).to_pylist()
    rows = [(r["TEXT"], r["URL"]) for r in rows if r["TEXT"]]
    assert len(rows) >= n
    return rows[:n]


def _write_list(path, rows, header=None, delimiter="\t"):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        if header:
            w.writerow(header)
        w.writerows(rows)


def test_headerless_lists_read_as_the_same_lists_with_a_header(tmp_path):
    """CC3M's layout (caption, url), CC12M's (url, caption) and a CSV, each without a header row,
    give the same candidates as the same file with one; rows are counted the same way too."""
    pairs = _real_captions(300)
    assert any("," in c for c, _ in pairs) and any('"' in c for c, _ in pairs)  # quoting is exercised
    broken = [("only one field",), ("", "")]  # a short row and a row without URL: unreadable either way
    layouts = {
        "cc3m": ("tsv", [(c, u) for c, u in pairs], ["caption", "url"], ("2", "1")),
        "cc12m": ("tsv", [(u, c) for c, u in pairs], ["url", "caption"], ("1", "2")),
        "csv": ("csv", [(c, "x", u) for c, u in pairs], ["caption", "other", "url"], ("3", "1")),
    }
    for name, (fmt, rows, header, (url_col, text_col)) in layouts.items():
        delimiter = "," if fmt == "csv" else "\t"
        _write_list(tmp_path / f"{name}-header.{fmt}", rows[:150] + broken + rows[150:], header, delimiter)
        _write_list(tmp_path / f"{name}.{fmt}", rows[:150] + broken + rows[150:], None, delimiter)

        def read(file, **cols):
            with open(file, newline="") as f:
                return [c if isinstance(c, dict) else readers.unreadable_reason(c)
                        for c in readers.read_text_table(f, "list", fmt, **cols)]

        with_header = read(tmp_path / f"{name}-header.{fmt}")
        without = read(tmp_path / f"{name}.{fmt}", url_col=url_col, text_col=text_col, no_header=True)
        assert with_header == without, name
        assert [(c["text"], c["url"]) for c in without if isinstance(c, dict)] == pairs
        assert [c for c in without if not isinstance(c, dict)] == ["unreadable_record"] * 2


@pytest.mark.slow
def test_headerless_tsv_crawls_to_the_same_pairs(tmp_path):
    """`clipforge crawl --no-header --url-col 2 --text-col 1` on CC3M's layout keeps exactly the
    pairs of the same file with a header, and counts its links the same way."""
    pairs = _real_captions(400)
    _write_list(tmp_path / "cc3m.tsv", pairs)
    _write_list(tmp_path / "cc3m-header.tsv", pairs, ["caption", "url"])
    (tmp_path / "q.json").write_text(json.dumps(["the", "of", "and", "a", "in", "for", "with", "by"]))
    out = {}
    for name, flags in (("header", ["--input", "cc3m-header.tsv"]),
                        ("headerless", ["--input", "cc3m.tsv", "--no-header", "--url-col", "2", "--text-col", "1"])):
        r = subprocess.run([CLI, "crawl", *flags, "--queries", "q.json", "--out", name, "--lang", "all", "--quiet",
                            "--direct_num_workers=1"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        stats = read_stats(tmp_path / name / "crawl_stats.json")
        rows = [{k: v for k, v in row.items() if k != "source_file"} for row in pairs_of(tmp_path / name)]
        out[name] = (rows, stats["input"], stats["kept"], stats["dropped"])
    assert out["header"] == out["headerless"]
    assert out["header"][1] == 400 and out["header"][2] > 50


def test_vectorised_uid_equals_balance_uid():
    """uids_arrow (RE2 over Arrow for the common URL shape) gives pair_ids.uid's ids, on real links
    and on generated URLs of every shape normalise_url handles (case, ports, queries, fragments)."""
    import random

    import pyarrow as pa

    from clipforge.schemas.pairs import uid, uids_arrow

    rng = random.Random(3)
    parts = ["http://", "HTTPS://", "hTTp://", "Ex.COM", "a-b.org", "/P/a", "?q=A", "#Frag", ":80", ":443",
             ":8080", "/", "é", "u@", "[::1]", "%2F", "?", "#", "x.y"]
    links = [(u, t) for u, t in _real_links() if u.lower().startswith(("http://", "https://"))]
    links += [("".join(rng.choice(parts) for _ in range(rng.randint(2, 6))), rng.choice(["a cat", "Ünï", "x\ty", ""]))
              for _ in range(20000)]
    links = [(u, t) for u, t in links if u.lower().startswith(("http://", "https://"))]
    got = uids_arrow(pa.array([u for u, _ in links]), pa.array([t for _, t in links]))
    assert got == [uid(u, t) for u, t in links]
    assert len(links) > 4000
