"""Worldwide curation in the crawl (MetaCLIP 2, issue 18): each text matched against the list of
its own language, and each language balanced with its own t.

Oracles: Unicode's character names (which scripts are written without spaces), fastText itself
(each caption's language), a brute-force substring scan of every entry of the language's list
(matching), and a brute-force scan of every integer t (the per-language threshold)."""

import glob
import json
import random
import re
import sys
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipforge.pipeline import balance, captions
from clipforge.pipeline.crawl import CrawlConfig
from clipforge.pipeline.crawl_stage import expand_inputs, load_query_lists, run
from clipforge.pipeline.langid import LanguageID
from clipforge.pipeline.textfilter import TextFilter
from clipforge.schemas.languages import is_no_space_char, metadata_lang
from conftest import shared_file

NO_SPACE_NAMES = ("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH", "HIRAGANA", "KATAKANA", "THAI",
                  "LAO", "MYANMAR", "KHMER", "TIBETAN")
SPACED_NAMES = ("LATIN", "CYRILLIC", "GREEK", "ARABIC", "HEBREW", "HANGUL", "DEVANAGARI", "ARMENIAN",
                "GEORGIAN", "ETHIOPIC", "DIGIT", "HALFWIDTH HANGUL")
# punctuation of those scripts, written without spaces beside it
CJK_PUNCTUATION = set("、。〈〉《》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〃々〆〇")


def test_scripts_without_spaces_follow_unicode_names():
    checked = {True: 0, False: 0}
    for o in range(0x20, 0x32000):
        ch = chr(o)
        name = unicodedata.name(ch, "")
        if name.startswith(NO_SPACE_NAMES):
            assert is_no_space_char(ch), name
            checked[True] += 1
        elif name.startswith(("FULLWIDTH", "HALFWIDTH KATAKANA", "HALFWIDTH IDEOGRAPHIC")) or ch in CJK_PUNCTUATION:
            assert is_no_space_char(ch), name
        elif name.startswith(SPACED_NAMES) and not name.startswith("FULLWIDTH"):
            assert not is_no_space_char(ch), name
            checked[False] += 1
    assert checked[True] > 90_000 and checked[False] > 10_000


def test_language_codes_of_every_vocabulary():
    assert metadata_lang("dewiki") == "de" and metadata_lang("zh_yuewiki") == "zh" and metadata_lang("simple") == "en"
    assert metadata_lang("yue", "lid") == "zh" and metadata_lang("cbk", "lid") == "cbk_zam"
    assert metadata_lang("de.m", "pageviews") == "de" and metadata_lang("ja.m.wikipedia", "pageviews") == "ja"
    assert metadata_lang("de.b", "pageviews") is None and metadata_lang("commons.m", "pageviews") is None
    assert metadata_lang("cmn", "wordnet") == "zh" and metadata_lang("en-GB", "wordnet") == "en"
    assert metadata_lang("../etc", "wiki") is None and metadata_lang("", "lid") is None
    labels = LanguageID().model.get_labels()  # every lid.176 label maps to a code
    assert all(metadata_lang(label[len("__label__"):], "lid") for label in labels) and len(labels) == 176


# --- matching -------------------------------------------------------------------------------------

def _spaced(text):
    """MetaCLIP's caption spacing, written here as one regular expression."""
    return " " + re.sub(r"[\t\n\r]", " ", re.sub(r"([,.;:?!`])", r" \1 ", text)) + " "


def _no_space(ch):
    return unicodedata.name(ch, "").startswith(NO_SPACE_NAMES + ("FULLWIDTH", "HALFWIDTH KATAKANA",
                                                                 "HALFWIDTH IDEOGRAPHIC")) or ch in CJK_PUNCTUATION


def brute_force(entries, text):
    """Every entry with an occurrence in the spaced text that has a space at each end whose
    character is of a script written with spaces."""
    s, found = _spaced(text), set()
    for q in entries:
        start = s.find(q)
        while start >= 0:
            end = start + len(q)
            if (_no_space(q[0]) or s[start - 1] == " ") and (_no_space(q[-1]) or s[end] == " "):
                found.add(q)
                break
            start = s.find(q, start + 1)
    return found


def _real_captions():
    texts = pq.read_table(shared_file("pairs/laion-style-1000.parquet")).column("TEXT").to_pylist()
    from clipforge.pipeline.crawl import candidate_batches

    for path in ("web/cc-main-2020-34-slice.warc.gz", "web/dolma-sample-0000.warc.gz"):
        item = expand_inputs([str(shared_file(path))])[0]
        for _, batch, *_ in candidate_batches(item, (None, None, None), {}):
            texts += batch.to_pylist()
    return [t for t in texts if t]


def _lists_from(texts, lid, per_lang=400, seed=0):
    """Per metadata language: words of its captions (character 2- and 3-grams for scripts
    without spaces), a few words of other languages as decoys, and entries that mix scripts."""
    rng = random.Random(seed)
    pool = {}
    for text in texts:
        clean, reason = captions.clean(text)
        if reason:
            continue
        lang = metadata_lang(lid.predict(clean)[0], "lid")
        words = pool.setdefault(lang, set())
        for w in clean.split():
            w = w.strip(",.;:?!`\"'()")
            if not w:
                continue
            if any(_no_space(c) for c in w):
                words.update(w[i:i + n] for n in (2, 3) for i in range(len(w) - n + 1))
            words.add(w)
    lists = {lang: rng.sample(sorted(ws), min(per_lang, len(ws))) for lang, ws in pool.items() if len(ws) > 2}
    everything = sorted(set().union(*pool.values()))
    for lang in lists:
        lists[lang] += rng.sample(everything, 30) + ["iPhone", "タワー 2", "a 東京"]
    return lists


def test_worldwide_matching_equals_brute_force_per_language_on_real_captions():
    lid = LanguageID()
    texts = _real_captions()
    lists = _lists_from(texts, lid)
    assert {"en", "zh", "ru", "de"} <= set(lists)
    tf = TextFilter(None, langs=(), lang_queries=lists)
    got = tf.filter_batch([f"https://example.com/{i}.jpg" for i in range(len(texts))], texts)
    matched_langs, checked = set(), 0
    for text, g in zip(texts, got):
        clean, reason = captions.clean(text)
        if reason:
            assert g == reason
            continue
        lang = metadata_lang(lid.predict(clean)[0], "lid")
        want = brute_force(lists[lang], clean) if lang in lists else None
        if want is None:
            assert g == "lang_without_list", text
        elif not want:
            assert g == "no_query_match", text
        else:
            assert not isinstance(g, str), text
            assert {tf.queries[i] for i in g[4]} == want, text
            matched_langs.add(lang)
        checked += 1
    assert checked > 500 and {"en", "zh", "ru", "de"} <= matched_langs


def test_entries_of_scripts_without_spaces_match_inside_words():
    lists = {"ja": ["東京", "タワー", "iPhone", "夜景 2"], "en": ["red", "東京"]}
    tf = TextFilter(None, langs=(), lang_queries=lists)
    by_lang = {}
    for text, lang in (("東京タワーの夜景とiPhoneの写真", "ja"), ("東京タワーの夜景と iPhone 15 の写真", "ja"),
                       ("a reddish car and a blue bicycle parked near the station in 東京", "en"), ("a red car, parked", "en")):
        assert metadata_lang(tf.lid.predict(text)[0], "lid") == lang
        got = tf.filter_batch(["https://example.com/a.jpg"], [text])[0]
        by_lang[text] = sorted(tf.queries[i] for i in got[4])
    assert by_lang == {"東京タワーの夜景とiPhoneの写真": ["タワー", "東京"],
                       "東京タワーの夜景と iPhone 15 の写真": ["iPhone", "タワー", "東京"],
                       "a reddish car and a blue bicycle parked near the station in 東京": ["東京"], "a red car, parked": ["red"]}


# --- per-language t -------------------------------------------------------------------------------

def brute_threshold(counts, p):
    """Every integer t from 1 to the largest count + 1; the nearest tail share, the larger t on a tie."""
    counts = [c for c in counts if c > 0]
    total = sum(counts)
    best_gap, best_t = None, None
    for t in range(1, max(counts) + 2):
        gap = abs(sum(c for c in counts if c < t) / total - p)
        if best_gap is None or gap < best_gap - 1e-12:
            best_gap, best_t = gap, t
        elif gap <= best_gap + 1e-12:
            best_t = t
    return best_t


def test_language_threshold_equals_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(1, 60))
        counts = np.minimum(rng.zipf(1.3 + rng.random(), n), 3000) * (rng.random(n) > 0.2)
        if not counts.any():
            continue
        for p in (0.0, 0.01, 0.1, 0.33, 0.5, 0.9, 0.999, 1.0, float(rng.random())):
            t = balance.language_threshold(counts, p)
            assert t == brute_threshold(counts.tolist(), p), (counts.tolist(), p)


def test_language_thresholds_keep_english_tail_share():
    rng = np.random.default_rng(1)
    en = np.minimum(rng.zipf(1.5, 3000), 100_000)
    de = np.minimum(rng.zipf(1.8, 2000), 100_000)
    counts = np.concatenate([en, de, en])
    langs = np.array(["en"] * 3000 + ["de"] * 2000 + ["fr"] * 3000)
    thresholds, p = balance.language_thresholds(counts, langs, 200)
    assert thresholds["en"] == 200 and p == balance.tail_share(en, 200)
    assert balance.tail_share(en, thresholds["fr"]) == p  # the same counts: the same tail share
    assert thresholds["de"] == brute_threshold(de.tolist(), p)
    assert balance.language_thresholds(counts[3000:5000], langs[3000:5000], 200) == ({"de": 200}, None)


# --- the crawl, worldwide -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def worldwide_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ww")
    lid = LanguageID()
    lists = _lists_from(_real_captions(), lid, per_lang=150, seed=2)
    lists["en"] += ["a", "the", "of", "and", "in", "with"]  # head queries, so that English balances
    folder = tmp / "metadata"
    folder.mkdir()
    for lang, qs in lists.items():
        (folder / f"{lang}.json").write_text(json.dumps(sorted(set(qs)), ensure_ascii=False))
    inputs = expand_inputs([str(shared_file("pairs/laion-style-1000.parquet")),
                            str(shared_file("web/cc-main-2020-34-slice.warc.gz"))])
    cfg = CrawlConfig(inputs=inputs, lang_queries=load_query_lists(str(tmp)), langs=(), out=str(tmp / "out"),
                      max_per_query=40, seed=3)
    stats = run(cfg, ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    pairs = pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(str(tmp / "out" / "pairs-*.parquet")))])
    return lists, stats, pairs.to_pylist(), pq.read_table(tmp / "out" / "query_counts.parquet").to_pylist(), tmp / "out"


def test_worldwide_crawl_pairs_match_their_own_language(worldwide_run):
    lists, stats, pairs, _, _ = worldwide_run
    assert len(pairs) == stats["kept"] > 100
    for r in pairs:
        lang = metadata_lang(r["lang"], "lid")
        assert set(r["queries"]) == brute_force(set(lists[lang]), r["text"]), r["text"]
    assert len({r["lang"] for r in pairs}) >= 4


def test_worldwide_funnel_and_thresholds(worldwide_run):
    lists, s, pairs, query_counts, _ = worldwide_run
    assert s["kept"] + sum(s["dropped"].values()) == s["input"]
    langs = s["extra"]["languages"]
    for lang, row in langs.items():
        assert row["identified"] == (row["lang_not_wanted"] + row["lang_without_list"] + row["no_query_match"]
                                     + row["matched"]), lang
        assert row["kept"] + row["balanced_out"] == row["deduplicated"] <= row["matched"], lang
        assert row["kept"] == sum(metadata_lang(r["lang"], "lid") == lang for r in pairs), lang
        assert row["entries"] == len(set(lists.get(lang, []))), lang
    assert sum(r["kept"] for r in langs.values()) == s["kept"]
    assert sum(r["lang_without_list"] for r in langs.values()) == s["dropped"].get("lang_without_list", 0)
    assert sum(r["no_query_match"] for r in langs.values()) == s["dropped"]["no_query_match"]
    assert s["dropped"]["balanced_out"] > 50  # English's head queries were balanced

    # each language's t is the brute-force t of English's tail share, from the published counts
    matches = {}
    for q in query_counts:
        matches.setdefault(q["lang"], []).append(q["matches"])
    p = sum(c for c in matches["en"] if c < 40) / sum(matches["en"])
    assert s["extra"]["balancing"]["tail_share_en"] == pytest.approx(p, abs=1e-6)
    for lang, counts in matches.items():
        want = 40 if lang == "en" else brute_threshold(counts, p)
        assert langs[lang]["t"] == want, lang
    # and every kept pair's keep probability is the formula at its language's t
    by_query = {(q["lang"], q["query"]): q for q in query_counts}
    for r in pairs:
        lang = metadata_lang(r["lang"], "lid")
        t = langs[lang]["t"]
        want = 1 - np.prod([1 - min(1.0, t / by_query[(lang, q)]["matches"]) for q in r["queries"]])
        assert r["keep_prob"] == pytest.approx(want, rel=1e-12)
    for q in query_counts:
        assert q["kept"] == sum(q["query"] in r["queries"] and metadata_lang(r["lang"], "lid") == q["lang"]
                                for r in pairs)


def test_stats_report_shows_each_language_before_and_after_balancing(worldwide_run, tmp_path):
    from clipforge.stats.stage import StatsConfig, run as run_stats

    _, s, _, _, pairs_dir = worldwide_run
    stats = run_stats(StatsConfig(data=[str(pairs_dir)], out=str(tmp_path / "report")), log=lambda *a: None)
    langs = stats["balancing"]["languages"]
    assert langs == s["extra"]["languages"]
    md = (tmp_path / "report" / "report.md").read_text()
    for lang, row in langs.items():
        if row["deduplicated"]:
            assert f"| {lang} | {row['entries']:,} | {row['identified']:,} | {row['matched']:,} |" in md, lang
    assert (tmp_path / "report" / "languages.png").stat().st_size > 10_000


def test_demo_worldwide_runs_the_curation_chain(world_dir, tmp_path, monkeypatch):
    from clipforge.demo import chain

    monkeypatch.chdir(tmp_path)
    assert chain.run_worldwide(world_dir) == 0
    root = tmp_path / chain.DEMO_WORLDWIDE
    q = pq.read_table(root / "queries" / "queries.parquet").to_pylist()
    per_lang = {}
    for r in q:
        per_lang.setdefault(r["lang"], []).append(r["query"])
    assert set(per_lang) == {"en", "de", "fr", "es", "ja"}
    for lang, entries in per_lang.items():  # MetaCLIP 2's layout beside it, the same lists
        assert sorted(json.loads((root / "queries" / "metadata" / f"{lang}.json").read_text())) == sorted(entries)
    assert "円" in per_lang["ja"] and "Kreis" in per_lang["de"]
    s = json.loads((root / "pairs" / "crawl_stats.json").read_text())
    langs = s["extra"]["languages"]
    assert s["extra"]["settings"]["worldwide"] and langs["en"]["t"] == chain.DEMO_MAX_PER_QUERY
    assert all(langs[lang]["entries"] == len(set(per_lang[lang])) for lang in per_lang)
    assert sum(r["kept"] for r in langs.values()) == s["kept"] > 0
    assert sum(langs[lang]["kept"] for lang in ("de", "fr", "es", "ja")) > 0
    md = (root / "reports" / "report.md").read_text()
    assert "Worldwide curation" in md and (root / "reports" / "languages.png").exists()
