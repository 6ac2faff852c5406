"""The query-list stage: readers on real dumps and lexicons, counts against a reference, PMI,
source merging, determinism, the portable runner, every runner (a dask.distributed cluster,
an external worker pool) giving the local outputs, and bad input."""

import bz2
import gzip
import json
import math
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from clipforge.queries import lexicons, tokens
from clipforge.queries.pipeline import QueriesConfig, _Smallest, build, read_lines, text_ranges
from clipforge.queries.stage import expand, run
from clipforge.queries.wikidump import DumpError, iter_pages, wikitext_to_prose
from clipforge.schemas import QUERY
from clipforge.schemas.files import read_metadata, read_stats
from clipforge.schemas.validate import validate_parquet

from conftest import shared_file

CLI = str(Path(sys.executable).with_name("clipforge"))
ONE_WORKER = ["--direct_num_workers=2"]


def real_articles():
    with bz2.open(shared_file("wiki/enwiki-pages-articles-excerpt.xml.bz2")) as f:
        pages = list(iter_pages(f))
    return pages, [p for p in pages if p.ns == 0 and not p.redirect]


# --- readers ------------------------------------------------------------------------------

def test_real_dump_pages_redirects_and_namespaces():
    pages, articles = real_articles()
    assert len(pages) == 206 and len(articles) == 106  # as the sample's README states
    redirects = [p for p in pages if p.redirect]
    assert len(redirects) == 100 and all(p.text.lstrip().upper().startswith("#REDIRECT") for p in redirects)
    assert articles[0].title == "Anarchism"


@pytest.mark.slow
def test_markup_is_gone_from_the_prose():
    _, articles = real_articles()
    prose = "\n".join(wikitext_to_prose(p.text) for p in articles)
    for markup in ("{{", "}}", "[[", "]]", "<ref", "</ref>", "{|", "|}", "'''", "''", "thumb|", "Category:",
                   "File:", "<!--", "&nbsp;"):
        assert markup not in prose, markup
    # link text survives, link targets and templates do not
    assert "Anarchism is a political philosophy" in prose
    text = "The [[Circle (shape)|circle]] is {{convert|3|m}} wide.<ref>{{cite web|title=X}}</ref> " \
           "[[File:C.svg|thumb|A caption]] See [[Category:Shapes]] and [[de:Kreis]].\n{| class=x\n| cell\n|}\nEnd."
    assert wikitext_to_prose(text) == "The circle is wide. See and .\nEnd."


def test_truncated_and_non_xml_dumps(tmp_path):
    data = shared_file("wiki/enwiki-pages-articles-excerpt.xml.bz2").read_bytes()
    (tmp_path / "cut.xml.bz2").write_bytes(data[: len(data) // 2])
    got = []
    with pytest.raises(DumpError, match="compressed stream is truncated"):
        for page in iter_pages(bz2.open(tmp_path / "cut.xml.bz2"), "cut.xml.bz2"):
            got.append(page)
    assert 0 < len(got) < 206
    (tmp_path / "x.xml").write_bytes(b"<html><body>hi</body></html>")
    with pytest.raises(DumpError, match="not a MediaWiki XML dump"):
        list(iter_pages(open(tmp_path / "x.xml", "rb"), "x.xml"))


def test_oewn_yaml_lemmas_have_spaces_not_underscores():
    data = shared_file("wordnet/oewn-noun.object.yaml").read_bytes()
    lemmas = list(lexicons.oewn_yaml_lemmas(data))
    assert "abyssal zone" in lemmas and "abyss" in lemmas
    assert not any("_" in lemma for lemma in lemmas)
    assert sum(" " in lemma for lemma in lemmas) > 100


def test_wn_lmf_xml_and_underscores(tmp_path):
    lmf = b"""<?xml version="1.0" encoding="UTF-8"?>
<LexicalResource xmlns:dc="https://globalwordnet.github.io/schemas/dc/">
  <Lexicon id="t" label="test" language="en" email="a@b" license="x" version="1">
    <LexicalEntry id="t-red-a"><Lemma writtenForm="red" partOfSpeech="a"/><Sense id="s1" synset="t-1-a"/></LexicalEntry>
    <LexicalEntry id="t-polka_dot-n"><Lemma writtenForm="polka_dot" partOfSpeech="n"/><Sense id="s2" synset="t-2-n"/></LexicalEntry>
    <LexicalEntry id="t-Star_of_David-n"><Lemma writtenForm="Star of David" partOfSpeech="n"/></LexicalEntry>
    <Synset id="t-1-a" partOfSpeech="a"/>
  </Lexicon>
</LexicalResource>"""
    (tmp_path / "wn.xml.gz").write_bytes(gzip.compress(lmf))
    assert list(lexicons.wordnet_lemmas(str(tmp_path / "wn.xml.gz"))) == ["red", "polka dot", "Star of David"]
    with pytest.raises(lexicons.LexiconError, match="unknown WordNet format"):
        lexicons.wordnet_format("wn.txt")


def test_nltk_wordnet_when_installed_or_a_clear_error():
    try:
        import nltk  # noqa: F401
    except ImportError:
        with pytest.raises(lexicons.LexiconError, match="pip install nltk"):
            list(lexicons.wordnet_lemmas("nltk"))
        return
    try:
        lemmas = set(lexicons.wordnet_lemmas("nltk"))
    except lexicons.LexiconError as e:
        assert "nltk.downloader wordnet" in str(e)
        return
    assert "dog" in lemmas and "hot dog" in lemmas


def test_tokens():
    text = "Paris. The Red-Circle isn't here; New York (city) has “quotes”, Lennon–McCartney 42 1990s"
    assert tokens.unigrams(text) == ["Paris", "The", "Red-Circle", "isn't", "here", "New", "York", "city", "has",
                                     "quotes", "Lennon", "McCartney", "1990s"]
    assert tokens.bigrams(text) == ["The Red-Circle", "Red-Circle isn't", "isn't here", "New York",
                                    "Lennon McCartney"]
    bigrams = tokens.bigrams(text)
    assert "Paris The" not in bigrams and "here New" not in bigrams and "New York" in bigrams
    assert "York city" not in bigrams and "Lennon McCartney" in bigrams
    assert [tokens.clean_entry(x) for x in ("  polka   dot ", "!", "", "  ", "—", "C++", "A")] == \
        ["polka dot", None, None, None, None, "C++", "A"]


# --- the pipeline -------------------------------------------------------------------------

def reference_counts(articles):
    uni, bi = Counter(), Counter()
    for p in articles:
        prose = wikitext_to_prose(p.text)
        uni.update(tokens.unigrams(prose))
        bi.update(tokens.bigrams(prose))
    return uni, bi


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "real"
    cfg = QueriesConfig(wiki=[str(shared_file("wiki/enwiki-pages-articles-excerpt.xml.bz2"))], out=str(out),
                        min_count=40, min_bigram_count=20, min_pmi=5.0, max_entries=0)
    stats = run(cfg, ONE_WORKER)
    return out, stats


@pytest.mark.slow
def test_counts_equal_a_reference_count(real_run):
    out, stats = real_run
    _, articles = real_articles()
    uni, bi = reference_counts(articles)
    rows = pq.read_table(out / "queries.parquet").to_pylist()
    got_uni = {r["query"]: r["count"] for r in rows if r["source"] == "unigram"}
    assert got_uni == {w: c for w, c in uni.items() if c >= 40}
    n = sum(uni.values())
    assert stats["extra"]["corpus"]["word_tokens"] == n
    assert stats["extra"]["corpus"]["distinct_words"] == len(uni)
    assert stats["extra"]["corpus"]["distinct_bigrams"] == len(bi)
    expected_bi = {}
    for b, c in bi.items():
        a, w = b.split(" ")
        if c >= 20 and math.log2(n * c / (uni[a] * uni[w])) >= 5.0:
            expected_bi[b] = c
    got_bi = {r["query"]: r for r in rows if r["source"] == "bigram"}
    # a bigram that is also a higher-priority entry would be listed there; none is, here
    assert {b: r["count"] for b, r in got_bi.items()} == expected_bi
    # hand-checked PMI values of a few bigrams
    for b in ("United States", "Ayn Rand", "Aristotle's"):
        if b in got_bi:
            a, w = b.split(" ")
            assert got_bi[b]["pmi"] == pytest.approx(math.log2(n * bi[b] / (uni[a] * uni[w])))
    assert "United States" in got_bi
    us = got_bi["United States"]
    assert us["pmi"] == pytest.approx(math.log2(n * bi["United States"] / (uni["United"] * uni["States"])))
    assert all(r["pmi"] >= 5.0 for r in got_bi.values())


@pytest.mark.slow
def test_output_is_ranked_and_valid(real_run):
    out, stats = real_run
    assert validate_parquet(out / "queries.parquet", QUERY) == stats["kept"]
    rows = pq.read_table(out / "queries.parquet").to_pylist()
    assert read_metadata(out / "metadata.json") == [r["query"] for r in rows]
    uni = [r["count"] for r in rows if r["source"] == "unigram"]
    assert uni == sorted(uni, reverse=True)
    sources = [r["source"] for r in rows]
    assert sources == sorted(sources, key=["unigram", "bigram"].index)
    s = read_stats(out / "queries_stats.json")
    assert s["kept"] + sum(s["dropped"].values()) == s["input"]
    assert s["extra"]["corpus"]["wiki_redirects_skipped"] == 100


@pytest.fixture(scope="module")
def demo_inputs(world_dir):
    return dict(wiki=[str(world_dir / "wiki" / "*.xml.bz2")], pageviews=[str(world_dir / "pageviews" / "*.gz")],
                wordnet=[str(world_dir / "wordnet" / "*.yaml")])


@pytest.mark.slow
def test_demo_sources_merge_by_priority_and_thresholds(tmp_path, demo_inputs):
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps(["zebra crossing", "red", "zebra crossing", "Circle"]))
    cfg = QueriesConfig(**demo_inputs, metadata=[str(meta)], out=str(tmp_path / "q"), min_count=20, min_pmi=2.0)
    stats = run(cfg, ONE_WORKER)
    rows = pq.read_table(tmp_path / "q" / "queries.parquet").to_pylist()
    by_query = {r["query"]: r for r in rows}
    assert [r["query"] for r in rows[:3]] == ["zebra crossing", "red", "Circle"]  # imported list first, in order
    assert by_query["red"]["source"] == "metadata"
    assert by_query["circle"]["source"] == "wordnet"  # also a frequent word: WordNet wins over unigram
    assert by_query["polka dot"]["source"] == "wordnet"
    assert by_query["Traffic light"]["source"] == "title" and by_query["Traffic light"]["count"] >= 70
    assert "Obscure shape article" not in by_query  # below 70 views
    assert not any(":" in q for q in by_query)  # Special:Search, File:..., Talk:...
    assert by_query["hexagon"]["source"] == "wordnet"
    assert stats["dropped"]["title_has_colon"] == 3
    assert stats["dropped"]["duplicate_of_higher_priority"] >= 10
    assert stats["extra"]["sources"]["metadata"] == {"candidates": 3, "kept": 3}
    assert len(rows) == stats["kept"] == len(by_query)


@pytest.mark.slow
def test_same_input_same_bytes_on_any_worker_count_and_the_portable_runner(tmp_path, demo_inputs):
    outputs = {}
    for name, flags in {"one": ["--direct_num_workers=1"], "two": ["--direct_num_workers=2"],
                        "portable": ["--runner=PortableRunner", "--job_endpoint=embed",
                                     "--environment_type=LOOPBACK"]}.items():
        cfg = QueriesConfig(**demo_inputs, out=str(tmp_path / name), min_count=20, min_pmi=2.0, max_entries=50)
        stats = run(cfg, flags)
        outputs[name] = ((tmp_path / name / "queries.parquet").read_bytes(),
                         (tmp_path / name / "metadata.json").read_bytes(), stats["dropped"])
    assert outputs["one"] == outputs["two"] == outputs["portable"]
    assert len(json.loads(outputs["one"][1])) == 50
    assert outputs["one"][2]["over_max_entries"] > 0


# --- every runner -------------------------------------------------------------------------

def test_text_lines_split_like_read_from_text(tmp_path):
    """Text files are read in byte ranges inside a ParDo (Read transforms are no-ops on some
    runners): every range split gives exactly the lines Beam's ReadFromText gives."""
    data = (b"first\r\nsecond\n\n\nthird\r\r\nfourth \xc3\xa9t\xc3\xa9\n\r\n  \nlast, no newline\r")
    path = tmp_path / "t.txt"
    path.write_bytes(data)
    (tmp_path / "t.txt.gz").write_bytes(gzip.compress(data))
    whole = list(read_lines(str(path)))
    assert whole == [b"first", b"second", b"", b"", b"third\r", "fourth été".encode(), b"", b"  ",
                     b"last, no newline\r"]
    assert list(read_lines(str(tmp_path / "t.txt.gz"))) == whole
    for split in (1, 2, 3, 5, 8, 13, len(data) - 1, len(data), 1 << 20):
        ranges = text_ranges([str(path)], {str(path): len(data)}, split_bytes=split)
        assert len(ranges) == (math.ceil(len(data) / split) if split < len(data) else 1)
        assert [line for r in ranges for line in read_lines(*r)] == whole, split
    assert text_ranges([str(tmp_path / "t.txt.gz")], {str(tmp_path / "t.txt.gz"): 10 ** 9}) == \
        [(str(tmp_path / "t.txt.gz"), 0, None)]  # compressed files are read whole
    with beam.Pipeline(runner=FnApiRunner()) as p:
        assert_that(p | beam.io.ReadFromText(str(path)), equal_to([line.decode() for line in whole]))


def test_smallest_keeps_the_first_ranked_rows_through_any_merge():
    rng = random.Random(5)
    rows = [(rng.randrange(5), rng.randrange(-50, 50), f"q{i}", "unigram", i, None) for i in range(500)]
    for n in (1, 7, 100, 499, 500, 1000, 0):
        fn, lists = _Smallest(n), _Smallest(n, lists=True)
        accs = []
        for part in (rows[:100], rows[100:333], rows[333:]):
            acc = fn.create_accumulator()
            for r in part:
                acc = fn.add_input(acc, r)
            accs.append(acc)
        shard_lists = [fn.extract_output(fn.merge_accumulators(accs[:2])), fn.extract_output(accs[2])]
        acc = lists.create_accumulator()
        for lst in shard_lists:
            acc = lists.add_input(acc, lst)
        expected = sorted(rows, key=lambda r: r[:3])
        assert lists.extract_output(acc) == (expected[:n] if n else expected), n


@pytest.fixture(scope="module")
def engine_inputs(world_dir, tmp_path_factory):
    """The demo world's dump, pageviews and WordNet, plus what exercises every reader and
    counter: a dump that breaks off, text corpora (CRLF lines, blank lines, gzip without a final
    newline), pageviews with malformed lines, an imported metadata.json. Returns the inputs
    and the counts they must give."""
    d = tmp_path_factory.mktemp("engine-inputs")
    dump = next((world_dir / "wiki").glob("*.xml.bz2"))
    xml = bz2.decompress(dump.read_bytes())
    (d / "cut.xml").write_bytes(xml[: int(len(xml) * 0.6)])
    with open(dump, "rb") as f:
        articles = [p for p in iter_pages(bz2.open(f)) if p.ns == 0 and not p.redirect]
    cut_articles = []
    with pytest.raises(DumpError):
        for page in iter_pages(open(d / "cut.xml", "rb"), "cut.xml"):
            if page.ns == 0 and not page.redirect:
                cut_articles.append(page)
    assert 0 < len(cut_articles) < len(articles)
    lines = [line for p in articles for line in wikitext_to_prose(p.text).split("\n")]
    rng = random.Random(11)
    (d / "corpus.txt").write_bytes("".join(line + rng.choice(["\n", "\r\n", "\n\n"]) for line in lines).encode())
    text_docs = sum(1 for _ in read_lines(str(d / "corpus.txt")))
    (d / "more.txt.gz").write_bytes(gzip.compress("\n".join(lines[: len(lines) // 2]).encode()))
    text_docs += len(lines) // 2
    (d / "views").write_bytes(b"en Circle 80 0\nthis line is garbage\nen Square x 0\r\nen Star 90 0\r\n"
                              b"en Talk:Foo 100 0\nen _ 100 0\nde Kreis 500 0\n")
    (d / "metadata.json").write_text(json.dumps(["zebra crossing", "red", "zebra crossing", "Circle", "!"]))
    inputs = dict(wiki=[str(world_dir / "wiki" / "*.xml.bz2"), str(d / "cut.xml")],
                  text=[str(d / "corpus.txt"), str(d / "more.txt.gz")],
                  pageviews=[str(world_dir / "pageviews" / "*.gz"), str(d / "views")],
                  wordnet=[str(world_dir / "wordnet" / "*.yaml")], metadata=[str(d / "metadata.json")])
    demo_views = sum(1 for f in (world_dir / "pageviews").glob("*.gz") for _ in read_lines(str(f)))
    return inputs, {"documents": len(articles) + len(cut_articles) + text_docs, "pageview_lines": demo_views + 5}


def engine_cfg(inputs, out):
    return QueriesConfig(**inputs, out=str(out), min_count=20, min_pmi=2.0, max_entries=200)


def stage_outputs(out, stats):
    """What a run leaves behind: the list's bytes and its funnel (without the wall time). The
    pipeline's own counts file is gone."""
    assert sorted(os.listdir(out)) == ["metadata", "metadata.json", "queries.parquet", "queries_stats.json"]
    assert os.listdir(out / "metadata") == ["en.json"]
    assert (out / "metadata" / "en.json").read_bytes() == (out / "metadata.json").read_bytes()
    written = read_stats(out / "queries_stats.json")
    assert written["extra"].pop("seconds") > 0 and stats["extra"].pop("seconds") > 0
    assert written == stats
    return {"queries.parquet": (out / "queries.parquet").read_bytes(),
            "metadata.json": (out / "metadata.json").read_bytes(), "stats": stats}


@pytest.fixture(scope="module")
def local_outputs(engine_inputs, tmp_path_factory):
    inputs, expected = engine_inputs
    out = tmp_path_factory.mktemp("engine-local") / "q"
    got = stage_outputs(out, run(engine_cfg(inputs, out), ONE_WORKER))
    s = got["stats"]
    corpus = s["extra"]["corpus"]
    assert corpus["documents"] == expected["documents"]
    assert corpus["wiki_files_broken"] == 1 and corpus["pageview_lines_malformed"] == 2
    assert corpus["pageview_lines"] == expected["pageview_lines"]
    assert s["kept"] == 200 and s["dropped"]["over_max_entries"] > 0
    assert s["kept"] + sum(s["dropped"].values()) == s["input"]
    assert s["dropped"]["below_min_pmi"] > 0 and s["extra"]["bigram_pmi"]["count"] > 0
    assert s["dropped"]["empty_or_punctuation"] >= 2  # "!" and the title "_"
    assert all(s["extra"]["sources"][src]["kept"] > 0 for src in ("metadata", "wordnet", "unigram"))
    assert all(s["extra"]["sources"][src]["candidates"] > 0 for src in ("bigram", "title"))
    assert read_metadata(out / "metadata.json")[:3] == ["zebra crossing", "red", "Circle"]
    return got


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_dask_cluster_gives_the_local_list(engine_inputs, local_outputs, tmp_path, dask_cluster, monkeypatch):
    """On Beam's DaskRunner against a dask.distributed cluster (a scheduler and two workers):
    byte-identical queries.parquet and metadata.json, and the same funnel, every count of it.
    Inputs and output are given relative to a working directory the workers do not share."""
    monkeypatch.chdir(tmp_path)
    inputs = {k: [os.path.relpath(x, tmp_path) for x in v] for k, v in engine_inputs[0].items()}
    stats = run(engine_cfg(inputs, "dask"), ["--runner=DaskRunner", f"--dask_client_address={dask_cluster}"])
    got = stage_outputs(tmp_path / "dask", stats)
    listed = got["stats"]["extra"]["inputs"]
    assert listed == {k: [os.path.relpath(x, tmp_path) for x in v]
                      for k, v in local_outputs["stats"]["extra"]["inputs"].items()}
    got["stats"]["extra"]["inputs"] = local_outputs["stats"]["extra"]["inputs"]
    assert got == local_outputs


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_external_worker_pool_gives_the_local_list(engine_inputs, local_outputs, tmp_path, worker_pool):
    """Through Beam's portable path with an external worker pool (how Flink and Spark run
    Python): the same bytes and the same funnel."""
    out = tmp_path / "pool"
    stats = run(engine_cfg(engine_inputs[0], out), worker_pool)
    assert stage_outputs(out, stats) == local_outputs


def test_the_pipeline_keeps_to_what_every_runner_translates(engine_inputs, tmp_path):
    """Only Impulse (inside Create), ParDo, GroupByKey and Flatten; no side inputs, no
    multi-output ParDo, no Read (ReadFromText is one); and the last step (all that DaskRunner computes) depends on
    every other step."""
    inputs, _ = engine_inputs
    resolved = {k: [p for p, _ in expand(v, f"--{k}")] for k, v in inputs.items()}
    p = beam.Pipeline(options=PipelineOptions([]))
    build(p, engine_cfg(resolved, tmp_path), str(tmp_path / "counts.json"))
    leaves, composites = [], []

    class Collect(PipelineVisitor):
        def enter_composite_transform(self, node):
            composites.append(node)

        def visit_transform(self, node):
            leaves.append(node)

    p.visit(Collect())
    assert not [n.full_label for n in composites if isinstance(n.transform, beam.io.Read)]
    for node in leaves:
        assert isinstance(node.transform, (beam.Impulse, beam.ParDo, beam.GroupByKey, beam.Flatten)), node.full_label
        assert not node.side_inputs, node.full_label
        if isinstance(node.transform, beam.ParDo):
            assert len(node.outputs) == 1, node.full_label
    last, upstream, todo = leaves[-1], set(), [leaves[-1]]
    while todo:
        for pcoll in todo.pop().inputs:
            producer = getattr(pcoll, "producer", None)
            if producer is not None and producer not in upstream:
                upstream.add(producer)
                todo.append(producer)
    assert last.full_label.startswith("FinishWithStats")
    assert [n.full_label for n in leaves if n is not last and n not in upstream] == []


# --- bad input, through the command line ------------------------------------------------------

def cli(*args, cwd):
    return subprocess.run([CLI, "queries", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.slow
def test_bad_inputs_end_in_one_line(tmp_path):
    (tmp_path / "notxml.xml").write_text("just some text, not a dump")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.json").write_text('{"a": 1}')
    for args, message in [
        (["--wiki", "missing-*.xml.bz2"], "no such file"),
        (["--wiki", "notxml.xml"], "not a MediaWiki XML dump"),
        (["--text", "empty.txt"], "no queries produced"),
        (["--metadata", "bad.json"], "expected a JSON list of strings"),
        (["--wordnet", "words.csv"], "no such file"),
        (["--min-count", "-1", "--text", "empty.txt"], "must not be negative"),
    ]:
        r = cli(*args, "--out", "o", cwd=tmp_path)
        assert r.returncode == 1, (args, r.stderr)
        assert r.stderr.strip().count("\n") == 0 and message in r.stderr, (args, r.stderr)


@pytest.mark.slow
def test_damage_inside_files_is_counted(tmp_path):
    data = shared_file("wiki/enwiki-pages-articles-excerpt.xml.bz2").read_bytes()
    (tmp_path / "cut.xml.bz2").write_bytes(data[: len(data) // 2])
    (tmp_path / "views").write_text("en Circle 80 0\nthis line is garbage\nen Square x 0\nen Star 90 0\n")
    r = cli("--wiki", "cut.xml.bz2", "--pageviews", "views", "--min-count", "30", "--out", "o", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "broke off" in r.stderr
    s = read_stats(tmp_path / "o" / "queries_stats.json")
    assert s["extra"]["corpus"]["wiki_files_broken"] == 1 and s["extra"]["corpus"]["wiki_pages"] > 0
    assert s["extra"]["corpus"]["pageview_lines_malformed"] == 2
    assert s["extra"]["sources"]["title"] == {"candidates": 2, "kept": 2}


@pytest.mark.slow
def test_no_arguments_builds_the_demo_list(tmp_path):
    """`clipforge queries` alone: the demo web (generated on first use) through the same code."""
    r = subprocess.run([CLI, "queries"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "data" / "demo" / "queries"
    queries = read_metadata(out / "metadata.json")
    for q in ("circle", "red", "polka dot", "Circle"):
        assert q in queries
    s = read_stats(out / "queries_stats.json")
    assert all(s["extra"]["sources"][src]["kept"] > 0 for src in ("wordnet", "unigram", "bigram", "title"))
