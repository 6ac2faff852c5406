"""The data contracts: each schema and validator accepts good records and names bad ones."""

import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from clipforge.schemas import CANDIDATE_PAIR, CURATED_PAIR, QUERY, SHARD_INDEX, SHARD_SAMPLE, SchemaError
from clipforge.schemas.files import (
    Funnel,
    read_metadata,
    read_sizes,
    read_stats,
    validate_metadata,
    validate_sizes,
    validate_stats,
    write_metadata,
    write_sizes,
)
from clipforge.schemas.validate import (
    conform,
    read_tar_samples,
    validate_parquet,
    validate_records,
    validate_sample,
    validate_shard_dir,
    validate_table,
)

from conftest import shared_file


def curated(**kw):
    row = dict(uid="u1", url="http://127.0.0.1:8000/img/1.jpg", text="a red circle", page_url=None,
               lang="en", lang_score=0.93, queries=["red", "circle"], input_format="wat",
               source_file="demo.wat.gz", keep_prob=1.0)
    row.update(kw)
    return row


def jpeg_bytes(colour="red", size=(32, 24)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def sample_meta(key, jpg, text="a red square"):
    return dict(key=key, uid="uid" + key, url=f"http://127.0.0.1:1/{key}.jpg", text=text, page_url=None,
                lang="en", queries=["red"], original_width=64, original_height=48, width=32, height=24,
                sha256=hashlib.sha256(jpg).hexdigest())


# --- tables ---------------------------------------------------------------------------------

def test_good_records_pass_every_schema():
    validate_records([dict(query="red circle", source="bigram", count=12, pmi=7.5),
                      dict(query="Circle", source="title", count=300, pmi=None)], QUERY)
    validate_records([dict(url="http://x/a.jpg", text="", page_url="http://x/", text_attr="alt",
                           input_format="warc", source_file="a.warc.gz")], CANDIDATE_PAIR)
    t = validate_records([curated(), curated(uid="u2", page_url="https://127.0.0.1/p.html")], CURATED_PAIR)
    assert t.schema == CURATED_PAIR and t.num_rows == 2
    jpg = jpeg_bytes()
    validate_records([sample_meta("000000000", jpg)], SHARD_SAMPLE)
    validate_records([dict(sample_meta("000000000", jpg), shard="000000.tar", jpg_bytes=len(jpg), status="success",
                           error=None)], SHARD_INDEX)
    failed = dict(sample_meta("000000001", jpg), shard="000000.tar", jpg_bytes=None, status="http_404",
                  error="HTTP 404", original_width=None, original_height=None, width=None, height=None, sha256=None)
    validate_records([failed], SHARD_INDEX)


@pytest.mark.parametrize("bad, message", [
    (dict(url="ftp://x/a.jpg"), "row 1, url: not an absolute http(s) URL"),
    (dict(url="/img/a.jpg"), "not an absolute http(s) URL"),
    (dict(text="   "), "row 1, text: empty string"),
    (dict(lang_score=1.5), "lang_score: outside [0, 1]"),
    (dict(queries=[]), "row 1, queries: a curated pair matches no query"),
    (dict(queries=["red", ""]), "queries: list holds a null or empty item"),
    (dict(uid=None), "row 1, uid: null in a required field"),
    (dict(input_format="html"), "input_format: not one of wat, warc, urllist"),
])
def test_bad_curated_pairs_are_named(bad, message):
    with pytest.raises(SchemaError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        validate_records([curated(), curated(**bad)], CURATED_PAIR, "pairs-0.parquet")


def test_missing_field_and_wrong_type():
    row = curated()
    del row["lang"]
    with pytest.raises(SchemaError, match="row 0: missing field\\(s\\) lang"):
        validate_records([row], CURATED_PAIR)
    with pytest.raises(SchemaError, match="row 0, lang_score: 'high' is not a float"):
        validate_records([curated(lang_score="high")], CURATED_PAIR)
    table = pa.table({"uid": ["a"], "url": [1]})
    with pytest.raises(SchemaError, match="missing column\\(s\\) text, page_url"):
        conform(table, CURATED_PAIR, "x.parquet")


def test_query_source_and_key_checks():
    with pytest.raises(SchemaError, match="source: not one of wordnet"):
        validate_records([dict(query="red", source="reddit", count=None, pmi=None)], QUERY)
    jpg = jpeg_bytes()
    with pytest.raises(SchemaError, match="not a WebDataset key"):
        validate_records([sample_meta("a.b", jpg)], SHARD_SAMPLE)
    with pytest.raises(SchemaError, match="sha256: not 64 lowercase hex digits"):
        validate_records([dict(sample_meta("k1", jpg), sha256="ABC")], SHARD_SAMPLE)
    with pytest.raises(SchemaError, match="width: not positive"):
        validate_records([dict(sample_meta("k1", jpg), width=0)], SHARD_SAMPLE)


def test_conform_drops_extras_and_casts(tmp_path):
    t = pa.table({"query": pa.array(["red"], pa.large_string()), "source": ["unigram"],
                  "count": pa.array([5], pa.int32()), "pmi": pa.array([None], pa.null()), "extra": [1]})
    out = conform(t, QUERY)
    assert out.schema == QUERY and out.column_names == ["query", "source", "count", "pmi", "lang"]
    assert out.column("lang").null_count == 1  # an optional column a v1 table lacks reads as nulls
    pq.write_table(out, tmp_path / "q.parquet")
    assert validate_parquet(tmp_path / "q.parquet", QUERY) == 1


def test_validate_parquet_streams_and_reports_the_global_row(tmp_path):
    rows = [curated(uid=f"u{i}") for i in range(10)]
    rows[7]["text"] = ""
    pq.write_table(pa.Table.from_pylist(rows, schema=CURATED_PAIR), tmp_path / "p.parquet", row_group_size=3)
    with pytest.raises(SchemaError, match="row 7, text: empty string"):
        validate_parquet(tmp_path / "p.parquet", CURATED_PAIR, batch_size=3)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(SchemaError, match="not a readable parquet file"):
        validate_parquet(tmp_path / "junk.parquet", CURATED_PAIR)


def test_real_laion_style_list_conforms_to_candidate_columns():
    """A real LAION-style URL list maps onto the contract's URL/text columns."""
    t = pq.read_table(shared_file("pairs/laion-style-1000.parquet"))
    t = t.rename_columns([{"URL": "url", "TEXT": "text"}.get(c, c) for c in t.column_names])
    n = t.num_rows
    t = t.append_column("page_url", pa.nulls(n, pa.string()))
    t = t.append_column("text_attr", pa.array(["caption"] * n))
    t = t.append_column("input_format", pa.array(["urllist"] * n))
    t = t.append_column("source_file", pa.array(["laion-style-1000.parquet"] * n))
    t = t.filter(pa.compute.is_valid(t["text"]))
    out = validate_table(t, CANDIDATE_PAIR, "laion-style-1000.parquet")
    assert out.num_rows > 900


# --- JSON files ---------------------------------------------------------------------------

def test_metadata_json_roundtrip_and_errors(tmp_path):
    write_metadata(tmp_path / "metadata.json", ["red", "Circle", "polka dot"])
    assert read_metadata(tmp_path / "metadata.json") == ["red", "Circle", "polka dot"]
    with pytest.raises(SchemaError, match="expected a JSON list"):
        validate_metadata({"red": 1})
    with pytest.raises(SchemaError, match="entry 1 'red' appears twice"):
        validate_metadata(["red", "red"])
    with pytest.raises(SchemaError, match="entry 0 is not a non-empty string"):
        validate_metadata([" "])
    (tmp_path / "bad.json").write_text("[1,")
    with pytest.raises(SchemaError, match="bad.json: not valid JSON"):
        read_metadata(tmp_path / "bad.json")
    with pytest.raises(SchemaError, match="file not found"):
        read_metadata(tmp_path / "none.json")


def test_sizes_json(tmp_path):
    write_sizes(tmp_path / "sizes.json", {"000001.tar": 3, "000000.tar": 10})
    assert list(read_sizes(tmp_path / "sizes.json")) == ["000000.tar", "000001.tar"]
    for bad, msg in [({"000000.tar": -1}, "not a non-negative integer"), ({"a/b.tar": 1}, "not a tar basename"),
                     ({"x.zip": 1}, "not a tar basename"), ([], "expected a JSON object"),
                     ({"000000.tar": True}, "not a non-negative integer")]:
        with pytest.raises(SchemaError, match=msg):
            validate_sizes(bad)


def test_funnel_adds_up_and_rejects_leaks(tmp_path):
    f = Funnel("crawl", unit="image link")
    f.add_input(10)
    f.keep(6)
    f.drop("no_query_match", 3)
    f.drop("lang_not_wanted")
    other = Funnel("crawl")
    other.add_input(2)
    other.drop("no_query_match", 2)
    f.merge(other)
    f.write(tmp_path / "crawl_stats.json")
    stats = read_stats(tmp_path / "crawl_stats.json")
    assert stats["input"] == 12 and stats["kept"] == 6
    assert stats["dropped"] == {"no_query_match": 5, "lang_not_wanted": 1}
    assert list(stats["dropped"]) == ["no_query_match", "lang_not_wanted"]  # largest first
    leak = Funnel("shard")
    leak.add_input(5)
    leak.keep(4)
    with pytest.raises(SchemaError, match="funnel does not add up: kept 4 \\+ dropped 0 = 4, input 5"):
        leak.to_dict()
    with pytest.raises(ValueError, match="snake_case"):
        f.drop("Bad Reason")
    with pytest.raises(SchemaError, match="missing field 'kept'"):
        validate_stats({"stage": "x", "unit": "r", "input": 0, "dropped": {}})
    with pytest.raises(SchemaError, match="drop reason 'Not-Found' is not snake_case"):
        validate_stats({"stage": "x", "unit": "r", "input": 1, "kept": 0, "dropped": {"Not-Found": 1}})


# --- shards ---------------------------------------------------------------------------------

def write_shard(dir_, name, samples, index=True):
    metas = []
    with wds.TarWriter(str(dir_ / name)) as sink:
        for key, text, colour in samples:
            jpg = jpeg_bytes(colour)
            meta = sample_meta(key, jpg, text)
            sink.write({"__key__": key, "jpg": jpg, "txt": text, "json": json.dumps(meta).encode()})
            metas.append(dict(meta, shard=name, jpg_bytes=len(jpg), status="success", error=None))
    if index:
        pq.write_table(pa.Table.from_pylist(metas, schema=SHARD_INDEX), dir_ / name.replace(".tar", ".parquet"))
    return metas


def test_shard_dir_valid_and_loads_with_webdataset(tmp_path):
    write_shard(tmp_path, "000000.tar", [("000000000", "a red square", "red"), ("000000001", "a blue one", "blue")])
    write_shard(tmp_path, "000001.tar", [("000010000", "green", "green")])
    write_sizes(tmp_path / "sizes.json", {"000000.tar": 2, "000001.tar": 1})
    assert validate_shard_dir(tmp_path) == 3
    ds = wds.WebDataset(str(tmp_path / "00000{0..1}.tar"), shardshuffle=False).decode("pil").to_tuple("jpg", "txt")
    got = [(img.size, txt) for img, txt in ds]
    assert got == [((32, 24), "a red square"), ((32, 24), "a blue one"), ((32, 24), "green")]


def test_shard_dir_errors(tmp_path):
    write_shard(tmp_path, "000000.tar", [("000000000", "a red square", "red")])
    write_sizes(tmp_path / "sizes.json", {"000000.tar": 2})
    with pytest.raises(SchemaError, match="holds 1 samples, sizes.json says 2"):
        validate_shard_dir(tmp_path)
    write_sizes(tmp_path / "sizes.json", {"000000.tar": 1, "000001.tar": 1})
    with pytest.raises(SchemaError, match="sizes.json lists"):
        validate_shard_dir(tmp_path)
    write_sizes(tmp_path / "sizes.json", {"000000.tar": 1})
    (tmp_path / "000000.parquet").unlink()
    with pytest.raises(SchemaError, match="index 000000.parquet is missing"):
        validate_shard_dir(tmp_path)
    write_shard(tmp_path, "000000.tar", [("000000000", "a red square", "red")])
    other = write_shard(tmp_path / "..", "other.tar", [("000000005", "x", "red")], index=False)
    pq.write_table(pa.Table.from_pylist([dict(other[0], shard="000000.tar")], schema=SHARD_INDEX),
                   tmp_path / "000000.parquet")
    with pytest.raises(SchemaError, match="does not list exactly the samples"):
        validate_shard_dir(tmp_path)


def test_sample_checks():
    jpg = jpeg_bytes()
    meta = sample_meta("000000000", jpg, "a red square")
    good = {"__key__": "000000000", "jpg": jpg, "txt": b"a red square", "json": json.dumps(meta).encode()}
    assert validate_sample(good)["key"] == "000000000"
    with pytest.raises(SchemaError, match="missing 000000000.txt"):
        validate_sample({k: v for k, v in good.items() if k != "txt"})
    with pytest.raises(SchemaError, match="txt differs from json text"):
        validate_sample(dict(good, txt=b"other"))
    with pytest.raises(SchemaError, match="sha256 in json does not match"):
        validate_sample(dict(good, jpg=jpeg_bytes("blue")))
    with pytest.raises(SchemaError, match="is not a JPEG"):
        validate_sample(dict(good, jpg=b"\x89PNG...."))
    with pytest.raises(SchemaError, match="differs from the tar member key"):
        validate_sample(dict(good, __key__="000000001"))


def test_read_tar_samples_groups_members(tmp_path):
    write_shard(tmp_path, "s.tar", [("a1", "one", "red"), ("a2", "two", "blue")], index=False)
    samples = list(read_tar_samples(tmp_path / "s.tar"))
    assert [s["__key__"] for s in samples] == ["a1", "a2"]
    assert sorted(samples[0]) == ["__key__", "jpg", "json", "txt"]


def test_tar_sink_writes_what_webdataset_reads(tmp_path):
    """The stdlib shard writer against webdataset's own reader (the trainer's) and its writer's layout."""
    from clipforge.schemas.tars import TarSink
    samples = [{"__key__": f"000000{i:06d}", "jpg": bytes([i]) * (i * 700 + 1), "txt": f"caption {i} é",
                "json": json.dumps({"i": i}).encode()} for i in range(5)]
    ours, theirs = tmp_path / "ours.tar", tmp_path / "theirs.tar"
    with TarSink(str(ours)) as sink:
        for s in samples:
            sink.write(s)
    with wds.TarWriter(str(theirs)) as sink:
        for s in samples:
            sink.write(s)
    import tarfile
    names = lambda p: [m.name for m in tarfile.open(p)]  # noqa: E731
    assert names(ours) == names(theirs)
    got = list(wds.WebDataset(str(ours), shardshuffle=False))
    assert [g["__key__"] for g in got] == [s["__key__"] for s in samples]
    for g, s in zip(got, samples):
        assert g["jpg"] == s["jpg"] and g["txt"].decode() == s["txt"] and json.loads(g["json"]) == json.loads(s["json"])
    assert [m.mode for m in tarfile.open(ours)] == [m.mode for m in tarfile.open(theirs)]


@pytest.mark.parametrize("bad", [{"__key__": "a.b", "jpg": b"x"}, {"__key__": "", "jpg": b"x"},
                                 {"__key__": "k", "jpg": 3}])
def test_tar_sink_refuses_bad_samples(tmp_path, bad):
    from clipforge.schemas.tars import TarSink
    with TarSink(str(tmp_path / "x.tar")) as sink, pytest.raises(ValueError):
        sink.write(bad)


def test_an_index_from_before_the_phash_column_reads_with_nulls():
    """Version 2 shard indexes have no phash column: an optional field reads as nulls; a
    required one missing is still an error, and a phash of the wrong type is refused."""
    row = {f.name: None for f in SHARD_INDEX}
    row.update(key="000000000000", uid="u", url="http://a/x.jpg", text="t", status="http_404", shard="000000.tar")
    old = pa.table({k: [v] for k, v in row.items() if k != "phash"})
    got = conform(old, SHARD_INDEX)
    assert got.column("phash").to_pylist() == [None] and got.schema == SHARD_INDEX
    with pytest.raises(SchemaError, match="missing column"):
        conform(old.drop_columns(["uid"]), SHARD_INDEX)
    with pytest.raises(SchemaError, match="phash"):
        conform(old.append_column("phash", pa.array(["abc"])), SHARD_INDEX)
    del row["phash"]
    assert validate_records([row], SHARD_INDEX).column("phash").null_count == 1
