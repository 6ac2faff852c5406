"""Worldwide query lists (issue 18): one list per language from generated MediaWiki dumps (de,
fr, es, ja, each naming itself in <dbname>), pageviews of several projects, and a WN-LMF file
with two lexicons, under each rule set (clip, metaclip1, metaclip2), against a plain-Python
recount of the same documents. The segmenter's oracle for Japanese is ICU itself (its word
break iterator, walked here on its own); PMI's is NLTK's BigramAssocMeasures when installed."""

import bz2
import gzip
import json
import math
import random
from collections import Counter
from xml.sax.saxutils import escape

import pyarrow.parquet as pq
import pytest

from clipforge.queries import tokens
from clipforge.queries.pipeline import METACLIP2_CAPS, QueriesConfig, _TopCap, cap_of
from clipforge.queries.stage import resolve_langs, run, split_lang, wiki_lang
from clipforge.queries.wikidump import iter_pages, wikitext_to_prose
from clipforge.schemas import QUERY
from clipforge.schemas.files import read_metadata, read_stats
from clipforge.schemas.validate import validate_parquet

ONE_WORKER = ["--direct_num_workers=2"]
PRIORITY = {"metadata": 0, "wordnet": 1, "unigram": 2, "bigram": 3, "title": 4}

# Small vocabularies per language: a few fixed phrases (strong bigrams) and filler words.
VOCAB = {
    "de": (["der rote Kreis", "ein blaues Quadrat", "der gelbe Stern", "die grüne Linie"],
           "und mit auf für von im ist war sehr groß klein Form Farbe Bild Wort Haus Stadt Fluss Berg".split()),
    "fr": (["le cercle rouge", "un carré bleu", "une étoile jaune", "la ligne verte"],
           "et avec sur pour de dans est était très grand petit forme couleur image mot maison ville".split()),
    "es": (["el círculo rojo", "un cuadrado azul", "una estrella amarilla", "la línea verde"],
           "y con sobre para de en es era muy grande pequeño forma color imagen palabra casa ciudad".split()),
}
JA_SENTENCES = ["東京タワーは日本の電波塔です。", "赤い丸と青い四角を描いた。", "富士山は日本で一番高い山です。",
                "黄色い星が夜空に光っている。", "猫が緑の線の上で寝ている。", "京都の古い寺を訪れた。",
                "大阪の人はたこ焼きが好きです。", "川の近くに小さな家があります。"]


def sentence(rng, lang):
    if lang == "ja":
        return rng.choice(JA_SENTENCES)
    phrases, filler = VOCAB[lang]
    words = [rng.choice(filler) for _ in range(rng.randint(3, 8))]
    words.insert(rng.randrange(len(words) + 1), rng.choice(phrases))
    return " ".join(words).capitalize() + rng.choice([". ", ", ", "; ", " "])


def dump(lang, n_pages, rng, dbname=None):
    pages = []
    for i in range(n_pages):
        text = "".join(sentence(rng, lang) for _ in range(rng.randint(2, 6)))
        if i % 7 == 3:
            text = f"'''{text}''' [[Kategorie:Form]] {{{{Infobox|x=1}}}}"
        pages.append(f"<page><title>{escape(lang)} Seite {i}</title><ns>0</ns><id>{i + 1}</id>"
                     f"<revision><id>{i + 100}</id><text xml:space=\"preserve\">{escape(text)}</text></revision></page>")
    pages.append("<page><title>Weiterleitung</title><ns>0</ns><id>9999</id><redirect title=\"X\"/>"
                 "<revision><id>1</id><text>#REDIRECT [[X]]</text></revision></page>")
    head = (f'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11" xml:lang="{lang}">'
            f"<siteinfo><sitename>Wikipedia</sitename><dbname>{dbname or lang + 'wiki'}</dbname></siteinfo>")
    return bz2.compress((head + "".join(pages) + "</mediawiki>\n").encode("utf-8"))


WN_LMF = """<?xml version="1.0" encoding="UTF-8"?>
<LexicalResource xmlns:dc="https://globalwordnet.github.io/schemas/dc/">
  <Lexicon id="ofr" label="French" language="fr" email="a@b" license="x" version="1">
    <LexicalEntry id="f1"><Lemma writtenForm="cercle" partOfSpeech="n"/></LexicalEntry>
    <LexicalEntry id="f2"><Lemma writtenForm="carré_bleu" partOfSpeech="n"/></LexicalEntry>
    <LexicalEntry id="f3"><Lemma writtenForm="arc-en-ciel" partOfSpeech="n"/></LexicalEntry>
  </Lexicon>
  <Lexicon id="wnja" label="Japanese" language="jpn" email="a@b" license="x" version="1">
    <LexicalEntry id="j1"><Lemma writtenForm="電波塔" partOfSpeech="n"/></LexicalEntry>
    <LexicalEntry id="j2"><Lemma writtenForm="日本" partOfSpeech="n"/></LexicalEntry>
  </Lexicon>
  <Lexicon id="wnzh" label="Chinese" language="cmn-Hans" email="a@b" license="x" version="1">
    <LexicalEntry id="z1"><Lemma writtenForm="北京" partOfSpeech="n"/></LexicalEntry>
  </Lexicon>
</LexicalResource>
"""

PAGEVIEWS = """de Berlin 120 0
de.m Berlin 30 0
de Roter_Kreis 90 0
de Spezial:Suche 500 0
de Kleine_Seite 3 0
de.b Ein_Buch 400 0
fr Paris 200 0
fr.m Cercle_rouge 75 0
fr Petit 10 0
es Madrid 150 0
es.m Madrid 25 0
es.d palabra 300 0
ja 東京タワー 300 0
ja.m 富士山 80 0
ja 京都 40 0
ja 大阪 60 0
ja 寺 5 0
en Circle 999 0
zh 北京 500 0
commons.m File:X.jpg 800 0
this line is malformed
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("worldwide")
    rng = random.Random(18)
    for lang, n in (("de", 40), ("fr", 30), ("es", 30), ("ja", 40)):
        (d / f"{lang}wiki-latest-pages-articles.xml.bz2").write_bytes(dump(lang, n, rng))
    (d / "views.gz").write_bytes(gzip.compress(PAGEVIEWS.encode("utf-8")))
    (d / "omw.xml").write_text(WN_LMF, encoding="utf-8")
    (d / "extra-de.txt").write_text("".join(sentence(rng, "de") + "\n" for _ in range(30)), encoding="utf-8")
    return d


def paths(d):
    return dict(wiki=[str(d / "*wiki-latest-pages-articles.xml.bz2")], text=[f"de={d / 'extra-de.txt'}"],
                pageviews=[str(d / "views.gz")], wordnet=[str(d / "omw.xml")])


# --- the reference: a plain-Python recount -----------------------------------------------------

def icu_words(text, lang):
    """ICU's word segments walked here on their own: (segment, is word, is number)."""
    import icu

    us = icu.UnicodeString(text)
    it = icu.BreakIterator.createWordInstance(icu.Locale(lang))
    it.setText(us)
    out, start = [], it.first()
    while True:
        end = it.nextBoundary()
        if end == icu.BreakIterator.DONE:
            return out
        status = it.getRuleStatus()
        out.append((str(us[start:end]), status >= 200, 100 <= status < 200))
        start = end


def recount(lang, docs):
    """(unigram counts, bigram counts {(a, b): c}) of the documents, recounted here."""
    uni, bi = Counter(), Counter()
    for doc in docs:
        if lang == "ja":
            segs = icu_words(doc, lang)
            uni.update(s for s, word, _ in segs if word)
            bi.update((a, b) for (a, wa, _), (b, wb, _) in zip(segs, segs[1:]) if wa and wb)
        else:
            uni.update(tokens.unigrams(doc))
            bi.update(tuple(b.split(" ")) for b in tokens.bigrams(doc))
    return uni, bi


def documents(d):
    docs = {}
    for path in sorted(d.glob("*wiki-latest-pages-articles.xml.bz2")):
        lang = path.name[:2]
        with bz2.open(path) as f:
            docs.setdefault(lang, []).extend(wikitext_to_prose(p.text) for p in iter_pages(f)
                                             if p.ns == 0 and not p.redirect)
    docs["de"] += (d / "extra-de.txt").read_text(encoding="utf-8").splitlines()
    return docs


def nltk_pmi():
    try:
        from nltk.metrics import BigramAssocMeasures
    except ImportError:
        return None
    return lambda n, c_ab, c_a, c_b: BigramAssocMeasures.pmi(c_ab, (c_a, c_b), n)


def views_by_lang(langs):
    views = Counter()
    for line in PAGEVIEWS.splitlines():
        parts = line.split(" ")
        if len(parts) != 4:
            continue
        code = parts[0].split(".")
        if len(code) > 1 and code[1] not in ("m",):
            continue  # de.b, es.d: other projects
        if code[0] in langs:
            views[(code[0], parts[1])] += int(parts[2])
    return views


WORDNET = {"fr": ["cercle", "carré bleu", "arc-en-ciel"], "ja": ["電波塔", "日本"], "zh": ["北京"]}


def reference(d, langs, rules, min_count=0, min_bigram_count=None, min_pmi=0.0, min_views=0, caps=None):
    """{lang: [query, ...]} in rank order, and {lang: {query: (source, count, pmi)}}, as the rules
    say, recounted here."""
    caps = {**METACLIP2_CAPS, **(caps or {})}
    if min_bigram_count is None:
        min_bigram_count = min_count if rules == "clip" else 1
    docs = documents(d)
    check_pmi = nltk_pmi()
    views = views_by_lang(langs)
    lists, rows = {}, {}
    for lang in langs:
        uni, bi = recount(lang, docs.get(lang, []))
        n = sum(uni.values())
        cands = []  # (priority, order, query, source, count, pmi)
        for i, lemma in enumerate(WORDNET.get(lang, [])):
            cands.append((1, 0, lemma, "wordnet", None, None))
        if rules == "metaclip2":
            ranked = sorted((-c, w) for w, c in uni.items())
            cap = min(caps["unigram"][2], math.ceil(len(ranked) * caps["unigram"][0] / caps["unigram"][1]))
            kept_uni = ranked[:cap]
            cands += [(2, negc, w, "unigram", -negc, None) for negc, w in kept_uni]
        else:
            cands += [(2, -c, w, "unigram", c, None) for w, c in uni.items() if c >= min_count]
        scored = []
        for (a, b), c in bi.items():
            if c < min_bigram_count:
                continue
            value = math.log2(n * c / (uni[a] * uni[b]))
            if check_pmi:
                assert check_pmi(n, c, uni[a], uni[b]) == pytest.approx(value)
            if value < min_pmi or (rules == "metaclip2" and value <= min_pmi):
                continue
            scored.append((-value, tokens.join_bigram(a, b, lang), c, value))
        if rules == "metaclip2":
            scored.sort()
            scored = scored[:min(caps["bigram"][2], math.ceil(len(kept_uni) * caps["bigram"][0] / caps["bigram"][1]))]
        cands += [(3, order, q, "bigram", c, value) for order, q, c, value in scored]
        titles = [(-v, t.replace("_", " "), v) for (lg, t), v in views.items() if lg == lang and ":" not in t]
        if rules == "metaclip2":
            titles.sort()
            titles = titles[:min(caps["title"][2], math.ceil(len(titles) * caps["title"][0] / caps["title"][1]))]
        else:
            titles = [t for t in titles if t[2] >= min_views]
        cands += [(4, order, t, "title", v, None) for order, t, v in titles]
        best = {}
        for cand in cands:
            q = tokens.clean_entry(cand[2])
            if q is None:
                continue
            cand = (cand[0], cand[1], q) + cand[3:]
            if q not in best or cand[:2] < best[q][:2]:
                best[q] = cand
        ordered = sorted(best.values(), key=lambda r: r[:3])
        lists[lang] = [r[2] for r in ordered]
        rows[lang] = {r[2]: (r[3], r[4], r[5]) for r in ordered}
    return lists, rows


def check_outputs(out, lists, rows):
    langs = sorted(lists)
    assert sorted(p.name for p in (out / "metadata").iterdir()) == [f"{lang}.json" for lang in langs]
    for lang in langs:
        assert read_metadata(out / "metadata" / f"{lang}.json") == lists[lang], lang
    table = pq.read_table(out / "queries.parquet")
    assert validate_parquet(out / "queries.parquet", QUERY) == sum(len(v) for v in lists.values())
    got = table.to_pylist()
    assert [r["lang"] for r in got] == sorted(r["lang"] for r in got)
    for lang in langs:
        mine = [r for r in got if r["lang"] == lang]
        assert [r["query"] for r in mine] == lists[lang]
        for r in mine:
            source, count, pmi = rows[lang][r["query"]]
            assert r["source"] == source and r["count"] == count, r
            if pmi is not None:
                assert r["pmi"] == pytest.approx(pmi)
    stats = read_stats(out / "queries_stats.json")
    assert stats["kept"] + sum(stats["dropped"].values()) == stats["input"]
    for lang in langs:
        entry = stats["extra"]["languages"][lang]
        assert entry["kept"] == len(lists[lang])
        assert entry["kept"] + sum(entry["dropped"].values()) == sum(s["candidates"] for s in entry["sources"].values())
    return stats


# --- the pieces ---------------------------------------------------------------------------------

def test_languages_of_inputs(inputs):
    assert wiki_lang(str(inputs / "dewiki-latest-pages-articles.xml.bz2")) == "de"
    assert split_lang("de=corpus.txt") == ("de", "corpus.txt")
    assert split_lang("zh_yue=a.txt") == ("zh", "a.txt")
    assert split_lang("corpus.txt") == (None, "corpus.txt")
    assert split_lang("/data/a=b.txt") == (None, "/data/a=b.txt")
    assert resolve_langs("all", {"fr", "de"}) == ("de", "fr")
    assert resolve_langs(("en",), {"de"}) == ("en",)
    assert resolve_langs("de,fr,de", set()) == ("de", "fr")


def test_tsheg_segmentation():
    text = "བོད་ཡིག་ནི། ༡༢ ཀ་ཁ"
    words, pairs = tokens.words_and_pairs(text, "bo")
    assert words == ["བོད", "ཡིག", "ནི", "ཀ", "ཁ"]
    assert pairs == [("བོད", "ཡིག"), ("ཡིག", "ནི"), ("ཀ", "ཁ")]  # the shad and the number end a run
    assert tokens.join_bigram("བོད", "ཡིག", "bo") == "བོད་ཡིག"


def test_icu_segmentation_is_icus():
    for lang, text in (("ja", "東京タワーは日本の電波塔です。2024年に100万人が訪れた。𠮷野家"),
                       ("zh", "北京是中华人民共和国的首都。"), ("th", "ภาษาไทยเป็นภาษาที่สวยงาม")):
        segs = icu_words(text, lang)
        words, pairs = tokens.words_and_pairs(text, lang)
        assert words == [s for s, w, _ in segs if w]
        assert pairs == [(a, b) for (a, wa, _), (b, wb, _) in zip(segs, segs[1:]) if wa and wb]
    assert "東京タワー" in tokens.words_and_pairs("東京タワーは日本の電波塔です。", "ja")[0]
    assert tokens.join_bigram("日本", "の", "ja") == "日本の"


def test_top_cap_keeps_the_count_and_the_first_rows_through_any_merge():
    rng = random.Random(3)
    rows = [(rng.randrange(-40, 0), f"w{i}", i) for i in range(700)]
    for most in (1, 5, 100, 699, 700, 2000):
        fn = _TopCap(most)
        accs = []
        for part in (rows[:50], rows[50:400], rows[400:]):
            acc = fn.create_accumulator()
            for r in part:
                acc = fn.add_input(acc, r)
            accs.append(acc)
        n, top = fn.extract_output(fn.merge_accumulators([fn.merge_accumulators(accs[:2]), accs[2]]))
        assert n == 700 and top == sorted(rows)[:most]
    assert cap_of("unigram", 3_000_000) == 251_465 and cap_of("unigram", 1001) == 101
    # 40% of 251,465 kept English unigrams is 100,586: under the stated most of 100,646
    assert cap_of("bigram", 10 ** 9, 251_465) == 100_586 and cap_of("bigram", 10 ** 9, 300_000) == 100_646
    assert cap_of("bigram", 5, 11) == 5
    assert cap_of("title", 100) == 76 and cap_of("title", 10 ** 6) == 61_235


# --- whole runs ---------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("rules,thresholds", [
    ("clip", dict(min_count=3, min_bigram_count=3, min_pmi=3.0, min_views=50)),
    ("metaclip1", dict(min_count=3, min_pmi=3.0, min_views=50)),
])
def test_threshold_rules_per_language_equal_the_reference(inputs, tmp_path, rules, thresholds):
    out = tmp_path / rules
    langs = ("de", "es", "fr", "ja")
    run(QueriesConfig(**paths(inputs), out=str(out), rules=rules, langs=langs, max_entries=0, **thresholds),
        ONE_WORKER)
    lists, rows = reference(inputs, langs, rules, **thresholds)
    stats = check_outputs(out, lists, rows)
    assert not (out / "metadata.json").exists()  # several languages: metadata/{lang}.json only
    assert any(" " not in q and rows["ja"][q][0] == "bigram" for q in lists["ja"])  # joined bigrams
    assert rows["fr"]["cercle"][0] == "wordnet" and rows["fr"]["carré bleu"][0] == "wordnet"
    assert rows["ja"]["日本"][0] == "wordnet" and "北京" not in rows["ja"]
    corpus = stats["extra"]["corpus"]
    assert corpus["pageview_lines_other_project"] == 3  # de.b, es.d, commons.m
    assert corpus["pageview_lines_other_language"] == 2  # en, zh
    assert corpus["pageview_lines_malformed"] == 1
    assert corpus["wordnet_lemmas_other_language"] == 1  # the Chinese lexicon
    assert stats["extra"]["thresholds"]["rules"] == rules
    assert stats["extra"]["thresholds"]["min_bigram_count"] == (3 if rules == "clip" else 1)
    assert stats["extra"]["languages"]["de"]["documents"] == 40 + 30


@pytest.mark.slow
def test_metaclip2_caps_per_language_equal_the_reference(inputs, tmp_path):
    out = tmp_path / "m2"
    # small absolute caps so that both cuts, the fraction and the most, bind somewhere
    caps = {"unigram": (10, 100, 5), "bigram": (40, 100, 100_646), "title": (76, 100, 61_235)}
    stats = run(QueriesConfig(**paths(inputs), out=str(out), rules="metaclip2", langs="all", min_pmi=2.0,
                              caps=caps), ONE_WORKER)
    langs = ("de", "es", "fr", "ja", "zh")
    assert stats["extra"]["langs"] == list(langs)  # every language with a corpus or a WordNet lexicon; not en
    lists, rows = reference(inputs, langs, "metaclip2", min_pmi=2.0, caps=caps)
    check_outputs(out, lists, rows)
    per = stats["extra"]["languages"]
    for lang in langs:
        c = per[lang]["caps"]
        assert c["unigram"]["cap"] == min(5, math.ceil(c["unigram"]["available"] / 10))
        assert c["bigram"]["cap"] == min(100_646, math.ceil(0.4 * c["unigram"]["cap"]))
        assert per[lang]["sources"]["unigram"]["kept"] <= c["unigram"]["cap"]
    de, ja = per["de"]["caps"], per["ja"]["caps"]
    assert de["unigram"]["cap"] == 5 < de["unigram"]["available"] / 10  # the most binds
    assert de["bigram"]["cap"] == 2 < de["bigram"]["available"]  # 40% of the 5 kept unigrams
    assert ja["title"] == {"available": 5, "cap": 4}  # 76% binds: 寺 (5 views) is cut
    assert "寺" not in lists["ja"] and per["zh"]["sources"]["wordnet"] == {"candidates": 1, "kept": 1}
    assert per["de"]["caps"]["title"] == {"available": 3, "cap": 3}  # Berlin, Roter Kreis, Kleine Seite
    assert stats["dropped"]["over_rank_cap"] > 0
    assert stats["extra"]["rules"]["name"] == "metaclip2"


@pytest.mark.slow
def test_lists_read_back_in_metaclip2_layout_and_english_stays_english(inputs, tmp_path):
    """metadata/{lang}.json of one run is the next run's --metadata folder; an English run with
    German inputs beside it keeps one English list, byte for byte what it is without them."""
    first = tmp_path / "first"
    run(QueriesConfig(**paths(inputs), out=str(first), langs=("de", "ja"), min_count=3, min_pmi=3.0,
                      min_views=50), ONE_WORKER)
    again = tmp_path / "again"
    stats = run(QueriesConfig(metadata=[str(first / "metadata")], out=str(again), langs="all"), ONE_WORKER)
    assert stats["extra"]["langs"] == ["de", "ja"]
    for lang in ("de", "ja"):
        assert (again / "metadata" / f"{lang}.json").read_bytes() == (first / "metadata" / f"{lang}.json").read_bytes()
    en_only = tmp_path / "en"
    (tmp_path / "en.txt").write_text("a red circle and a red square\n" * 5, encoding="utf-8")
    run(QueriesConfig(text=[str(tmp_path / "en.txt")], pageviews=paths(inputs)["pageviews"], out=str(en_only),
                      min_count=2, min_pmi=0.5), ONE_WORKER)
    mixed = tmp_path / "mixed"
    stats = run(QueriesConfig(text=[str(tmp_path / "en.txt")], wiki=paths(inputs)["wiki"],
                              pageviews=paths(inputs)["pageviews"], out=str(mixed), min_count=2, min_pmi=0.5),
                ONE_WORKER)
    for name in ("metadata.json", "metadata/en.json", "queries.parquet"):
        assert (mixed / name).read_bytes() == (en_only / name).read_bytes(), name
    assert (mixed / "metadata.json").read_bytes() == (mixed / "metadata" / "en.json").read_bytes()
    assert len(stats["extra"]["inputs_other_language"]["wiki"]) == 4
    assert stats["extra"]["corpus"]["pageview_lines_other_language"] == 16
    assert set(pq.read_table(mixed / "queries.parquet").column("lang").to_pylist()) == {"en"}
    listed = json.loads((mixed / "metadata.json").read_text())
    assert listed[:3] == ["a", "red", "and"] and listed[-1] == "Circle"
