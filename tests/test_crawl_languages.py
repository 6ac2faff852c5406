"""Languages of the crawl's pairs: with every language wanted, lid.176 runs after balancing on
the kept pairs only; the languages must be exactly what fastText gives each kept caption, and
the same as a crawl that wants languages (where lid.176 runs before matching) gives for them."""

import glob

import pyarrow as pa
import pytest
import pyarrow.parquet as pq

from clipforge.pipeline.crawl import CrawlConfig
from clipforge.pipeline.crawl_stage import expand_inputs, run
from clipforge.pipeline.langid import LanguageID
from conftest import shared_file


def _pairs(out):
    return pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(f"{out}/pairs-*.parquet"))]).sort_by("uid")


@pytest.mark.slow
def test_every_language_wanted_identifies_kept_pairs_as_fasttext_does(tmp_path):
    inputs = expand_inputs([str(shared_file("pairs/laion-style-1000.parquet")),
                            str(shared_file("web/cc-main-2020-34-slice.warc.gz"))])
    queries = ["a", "the", "of", "and", "de", "la", "in", "photo", "new"]
    every = run(CrawlConfig(inputs=inputs, queries=queries, out=str(tmp_path / "all"), langs=(), max_per_query=40,
                            seed=1), ["--direct_num_workers=2"])
    rows = _pairs(tmp_path / "all").to_pylist()
    assert len(rows) == every["kept"] > 100 and every["dropped"]["balanced_out"] > 100
    lid = LanguageID()  # the fastText library itself, one caption at a time
    for r in rows:
        lang, score = lid.predict(r["text"])
        assert (r["lang"], r["lang_score"]) == (lang, pa.scalar(score, pa.float32()).as_py()), r["text"]
    langs = every["extra"]["languages_kept"]
    assert sum(langs.values()) == every["kept"] and len(langs) > 3
    assert langs == {k: sum(r["lang"] == k for r in rows) for k in langs}

    # the same links with the kept pairs' languages named: lid.176 runs before matching there; the
    # pairs both keep carry the same language and score
    named = run(CrawlConfig(inputs=inputs, queries=queries, out=str(tmp_path / "named"), langs=tuple(langs),
                            max_per_query=40, seed=1), ["--direct_num_workers=1"])
    assert named["kept"] > 100  # (texts of other languages, all balanced out above, are lang_not_wanted here)
    both = {r["uid"]: (r["lang"], r["lang_score"]) for r in _pairs(tmp_path / "named").to_pylist()}
    common = [r for r in rows if r["uid"] in both]
    assert len(common) > 50 and all(both[r["uid"]] == (r["lang"], r["lang_score"]) for r in common)
