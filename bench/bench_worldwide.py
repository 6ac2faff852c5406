"""Worldwide curation (issue 18): `clipforge crawl --worldwide` against the one-process script in
the shape of MetaCLIP 2's curation (bench/peer_metaclip2_script.py), on the same URL lists and the
same per-language lists, whole command timed, peak memory of the whole process tree.

Input: N links in 4 URL-list parquet parts. 60% English (word windows of the real Wikipedia
excerpt and the real captions of the LAION-style list and the two WARCs, as bench/scale_inputs.py
draws them), 10% each German, French, Spanish and Japanese (one or two sentences of the demo
world's article and alt-text templates in that language: generated, since no real text of those
languages ships with the project). Lists: English 100,000 entries (the Wikipedia excerpt's words
and bigrams, topped up with word pairs), German, French, Spanish and Japanese the words of their
sentences topped up with word pairs to 20,000, and six more languages with 20,000 entries each
that the input never selects (a worker only builds the automata of languages it meets).

Also measured (the section's text): one crawl worker's text filter with L languages x 100,000
entries and every automaton built, its peak resident memory and build time, L = 1, 3, 10, each in
a fresh process (what a worker pays once, whatever the input size).
"""

import json
import os
from collections import Counter
import random
import shutil
import sys
from pathlib import Path

import subprocess

import pyarrow as pa
import pyarrow.parquet as pq

from bench import scale_inputs
from bench.harness import Comparison

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("clipforge"))
T = 20_000
PARTS = 4
SHARES = {"en": 0.6, "de": 0.1, "fr": 0.1, "es": 0.1, "ja": 0.1}
IDLE_LANGS = ("it", "nl", "pt", "ru", "zh", "pl")


def _log(msg):
    print(msg, flush=True)


def _sentence(rng, lang):
    from clipforge.demo import captions, corpora

    shapes, colours = captions.words(lang)
    s = list(shapes.values())
    c = list(colours.values())
    templates = corpora._WORLD_SENTENCES[lang] + captions._OTHER[lang][2]
    t = rng.choice(templates)
    return t.format(s=rng.choice(s), c=rng.choice(c), o=rng.choice(s), shape=rng.choice(s), colour=rng.choice(c))


def _texts(rng, n, src):
    words, paragraphs, caps = src["words"], src["paragraphs"], src["captions"]
    out = []
    langs, weights = zip(*SHARES.items())
    for lang in rng.choices(langs, weights, k=n):
        if lang == "en":
            if rng.random() < 0.25:
                out.append(rng.choice(caps))
            else:
                a, b = rng.choice(paragraphs)
                k = rng.randint(3, 20)
                i = rng.randint(a, max(a, b - k))
                out.append(" ".join(words[i:i + k]))
        else:
            sep = "" if lang == "ja" else " "
            out.append(_sentence(rng, lang) + (sep + _sentence(rng, lang) if rng.random() < 0.5 else ""))
    return out


def inputs(workdir, n, seed=0):
    folder = workdir / f"links-{n}"
    if (folder / "done").exists():
        return sorted(folder.glob("part-*.parquet"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    src = scale_inputs.sources()
    hosts = src["hosts"]
    for k in range(PARTS):
        rng = random.Random(f"{seed}:{k}")
        m = n // PARTS + (k < n % PARTS)
        urls = [f"{rng.choice(hosts)[0]}://{rng.choice(hosts)[1]}/ww/{k}/{i}.jpg" for i in range(m)]
        pq.write_table(pa.table({"url": urls, "caption": _texts(rng, m, src)}), folder / f"part-{k:02d}.parquet",
                       row_group_size=100_000)
    (folder / "done").write_text("")
    return sorted(folder.glob("part-*.parquet"))


def lists(workdir, seed=0):
    from bench.bench_crawl import query_list
    from clipforge.demo import captions, corpora

    folder = workdir / "metadata"
    if (folder / "en.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    (folder / "en.json").write_text(json.dumps(query_list(100_000)))
    for lang in tuple(SHARES)[1:] + IDLE_LANGS:
        if lang in corpora.WORLD_WIKIS:
            shapes, colours = captions.words(lang)
            vocab = sorted(set(shapes.values()) | set(colours.values()) |
                           {w.strip(".,。（）") for _ in range(2000) for w in _sentence(rng, lang).split()} - {""})
        else:
            vocab = [f"{lang}{i}" for i in range(3000)]
        entries = list(vocab)
        seen, sep = set(entries), "" if lang == "ja" else " "
        while len(entries) < 20_000:
            e = rng.choice(vocab) + sep + rng.choice(vocab) + (sep + str(rng.randint(0, 99)))
            if e not in seen:
                seen.add(e)
                entries.append(e)
        (folder / f"{lang}.json").write_text(json.dumps(entries, ensure_ascii=False))
    return folder


ABOUT = None
_WORKER = """
import random, resource, sys, time
import pyarrow.parquet as pq
n_langs, per, laion = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
caps = [t for t in pq.read_table(laion).column("TEXT").to_pylist() if t]
words = sorted({w for t in caps for w in t.split()})
rng = random.Random(0)
langs = ["en", "de", "fr", "es", "it", "nl", "pt", "ru", "ja", "zh"][:n_langs]
lists = {}
for lang in langs:
    seen = set()
    while len(seen) < per:
        seen.add(" ".join(rng.choice(words) for _ in range(rng.randint(1, 3))) + f" {len(seen)}" * (rng.random() < 0.5))
    lists[lang] = sorted(seen)
from clipforge.pipeline.textfilter import TextFilter
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
tf = TextFilter(None, langs=(), lang_queries=lists)
for lang in langs:
    tf.world.match_ids(lang, "a red circle")
build = time.perf_counter() - t0
print(sum(map(len, lists.values())), build, before / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def worker_memory(per=100_000, counts=(1, 3, 10)):
    """[(languages, entries, build seconds, peak MiB before the filter, peak MiB with it)]."""
    laion = str(scale_inputs.LAION)
    out = []
    for n in counts:
        got = subprocess.run([sys.executable, "-c", _WORKER, str(n), str(per), laion], capture_output=True, text=True,
                             check=True, cwd=ROOT).stdout.split()
        entries, build, before, peak = int(got[0]), float(got[1]), float(got[2]), float(got[3])
        out.append((n, entries, build, before, peak))
        _log(f"  worker with {n} language(s), {entries:,} entries: {peak:,.0f} MiB peak, {build:.1f} s to build")
    return out


def benchmarks(workdir):
    global ABOUT
    workdir.mkdir(parents=True, exist_ok=True)
    mem = worker_memory()
    ABOUT = ("One crawl worker's text filter with every automaton built (fresh process each, lists of 100,000 "
             "generated entries per language, words of the real LAION-style captions):\n\n"
             "| languages | entries | peak memory | before the filter (Python, lists) | build |\n|---|---|---|---|---|\n" +
             "".join(f"| {n} | {e:,} | {p:,.0f} MiB | {b:,.0f} MiB | {t:.1f} s |\n" for n, e, t, b, p in mem) +
             "\nA worker pays this once, whatever its input; the crawl's passes keep the rest flat in the input.\n")
    sizes = [int(x) for x in os.environ.get("CLIPFORGE_WORLDWIDE_SIZES", "400000").split(",") if x.strip()]
    meta = lists(workdir)
    n_entries = sum(len(json.loads(p.read_text())) for p in meta.glob("*.json"))
    out = []
    for n in sizes:
        parts = inputs(workdir, n)
        ours_out, peer_out = workdir / f"ours-{n}", workdir / f"peer-{n}"

        def clean(a=ours_out, b=peer_out):
            shutil.rmtree(a, ignore_errors=True)
            shutil.rmtree(b, ignore_errors=True)

        def verify(side, n=n, a=ours_out, b=peer_out):
            if side == "ours":
                s = json.loads((a / "crawl_stats.json").read_text())
                kept = {k: v["kept"] for k, v in s["extra"]["languages"].items() if v["kept"]}
                got, total, t = s["input"], s["kept"], {k: v["t"] for k, v in s["extra"]["languages"].items() if v["t"]}
            else:
                s = json.loads((b / "peer_stats.json").read_text())
                got, total, t = s["input"], s["kept"], s["t"]
                kept = Counter(lang for p in b.glob("pairs-*.parquet")
                               for lang in pq.read_table(p, columns=["lang"]).column("lang").to_pylist())
            if got != n or not total:
                raise RuntimeError(f"worldwide {side}: read {got:,} of {n:,} links, kept {total:,}")
            _log(f"    {side}: kept {total:,}; t per language {t}; kept by language {dict(kept)}")

        out.append(Comparison(
            name=f"worldwide crawl, {n // 1000}k links in 5 languages", items=n, unit="links",
            ours=[CLI, "crawl", "--worldwide", "--input", *map(str, parts), "--queries", str(meta), "--out",
                  str(ours_out), "--max-per-query", str(T), "--quiet"],
            peer=[sys.executable, "-m", "bench.peer_metaclip2_script", "--input", *map(str, parts), "--metadata-dir",
                  str(meta), "--out", str(peer_out), "--t", str(T)],
            peer_name="MetaCLIP 2-style curation script (1 process)", repeats=2, setup=clean, verify=verify,
            show_wall=True,
            input=(f"{n:,} links in {PARTS} URL-list parquet parts: 60% English (real captions, Wikipedia windows), "
                   f"10% each de/fr/es/ja (demo-world sentences); {n_entries:,} entries in "
                   f"{len(SHARES) + len(IDLE_LANGS)} language lists"),
            notes=("whole command timed, start-up included; t_en = 20,000 and each language's t from English's tail "
                   "share on both sides (MetaCLIP 2's p_to_t in the peer, the strict-tail rule here). clipforge: "
                   "Beam on the FnApiRunner, one worker per core, three passes spilling to disk, captions cleaned "
                   "and URLs normalised; the peer: one process, pyarrow batches, lid.176 per batch, an automaton "
                   "per language built on first use, md5(url + text) in a set, then its balancing. Peak memory is "
                   "the whole process tree.")))
    return out
