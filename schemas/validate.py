"""Validation of tables, parquet files and shard samples against the contracts.

Every check fails with ``SchemaError`` and a one-line message naming where (file, row,
field) and what is wrong, so a stage can print it and exit, and a test can match it.
"""

import hashlib
import json
import re
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipforge.errors import UserError
from clipforge.schemas.records import INPUT_FORMATS, QUERY_SOURCES, SHARD_INDEX, SHARD_SAMPLE

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY = re.compile(r"^[^./\\]+$")
_URL = re.compile(r"^https?://[^/\s?#]+", re.IGNORECASE)


class SchemaError(UserError, ValueError):
    """A record or file does not follow its contract."""


def _where(where, row=None, field=None):
    parts = [p for p in (where, None if row is None else f"row {row}", field) if p]
    return ": ".join([", ".join(parts)]) if parts else "record"


def _compatible(actual, expected):
    if actual.equals(expected):
        return True
    if pa.types.is_string(expected) or pa.types.is_large_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual)
    if pa.types.is_list(expected) or pa.types.is_large_list(expected):
        return (pa.types.is_list(actual) or pa.types.is_large_list(actual)) and _compatible(
            actual.value_type, expected.value_type
        )
    return False


def conform(table, schema, where=""):
    """Return ``table`` with exactly ``schema``'s columns, in order, cast to its types.

    Missing columns, incompatible types or values that do not fit raise SchemaError.
    Extra columns are dropped: use this when writing a contract file.
    """
    missing = [f.name for f in schema if f.name not in table.column_names and not _optional(f)]
    if missing:
        raise SchemaError(f"{_where(where)}: missing column(s) {', '.join(missing)} "
                          f"(contract {schema.metadata.get(b'contract', b'?').decode()})")
    arrays = []
    for f in schema:
        if f.name not in table.column_names:  # an optional field a file from an earlier version lacks
            arrays.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        if not _compatible(col.type, f.type) and not pa.types.is_null(col.type):
            raise SchemaError(f"{_where(where, field=f.name)}: type {col.type}, expected {f.type}")
        try:
            arrays.append(col.cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise SchemaError(f"{_where(where, field=f.name)}: cannot cast to {f.type}: {e}") from None
    return pa.Table.from_arrays(arrays, schema=schema)


def _optional(field):
    return (field.metadata or {}).get(b"optional") == b"1"


def _first_bad(mask):
    """Index of the first true value of a boolean array (nulls count as false), or None."""
    idx = pc.indices_nonzero(pc.fill_null(mask, False))
    return None if len(idx) == 0 else idx[0].as_py()


def _check_values(col, f, where, offset):
    checks = (f.metadata or {}).get(b"checks", b"").decode().split(",")
    for check in filter(None, checks):
        valid = pc.is_valid(col)
        if check == "nonempty":
            bad = pc.and_(valid, pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0))
            msg = "empty string"
        elif check == "http_url":
            bad = pc.and_(valid, pc.invert(pc.match_substring_regex(col, _URL.pattern, ignore_case=True)))
            msg = "not an absolute http(s) URL"
        elif check == "positive":
            bad = pc.and_(valid, pc.less_equal(col, 0))
            msg = "not positive"
        elif check == "unit":
            bad = pc.and_(valid, pc.or_(pc.less(col, 0), pc.greater(col, 1)))
            msg = "outside [0, 1]"
        elif check == "hex64":
            bad = pc.and_(valid, pc.invert(pc.match_substring_regex(col, _HEX64.pattern)))
            msg = "not 64 lowercase hex digits"
        elif check == "key":
            bad = pc.and_(valid, pc.invert(pc.match_substring_regex(col, _KEY.pattern)))
            msg = "not a WebDataset key (no dots or slashes allowed)"
        elif check in ("query_source", "input_format"):
            allowed = QUERY_SOURCES if check == "query_source" else INPUT_FORMATS
            bad = pc.and_(valid, pc.invert(pc.is_in(col, pa.array(allowed))))
            msg = f"not one of {', '.join(allowed)}"
        else:
            raise AssertionError(f"unknown check {check!r} on field {f.name}")
        i = _first_bad(bad)
        if i is not None:
            raise SchemaError(f"{_where(where, offset + i, f.name)}: {msg}: {col[i].as_py()!r}")


def validate_table(table, schema, where="", offset=0):
    """Check a pyarrow table (or record batch) against a contract; return it conformed.

    ``offset`` is added to row numbers in messages (for tables read in batches).
    """
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    table = conform(table, schema, where)
    if table.num_rows == 0:  # nothing to check (and some kernels dislike zero-chunk columns)
        return table
    for f in schema:
        col = table.column(f.name)
        if not f.nullable and col.null_count:
            i = _first_bad(pc.is_null(col))
            raise SchemaError(f"{_where(where, offset + i, f.name)}: null in a required field")
        if pa.types.is_list(f.type) and col.null_count < len(col):
            # list items must not be null or empty either
            flat = pc.list_flatten(col)
            if flat.null_count or (len(flat) and _first_bad(pc.equal(pc.utf8_length(flat), 0)) is not None):
                raise SchemaError(f"{_where(where, field=f.name)}: list holds a null or empty item")
        _check_values(col, f, where, offset)
    if schema.metadata.get(b"contract") == b"curated_pair":
        empty = _first_bad(pc.equal(pc.list_value_length(table.column("queries")), 0))
        if empty is not None:
            raise SchemaError(f"{_where(where, offset + empty, 'queries')}: a curated pair matches no query")
    return table


def validate_records(rows, schema, where=""):
    """Check a list of dicts against a contract; return them as a conformed table."""
    names = {f.name for f in schema if not _optional(f)}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise SchemaError(f"{_where(where, i)}: not a mapping but {type(row).__name__}")
        missing = names - row.keys()
        if missing:
            raise SchemaError(f"{_where(where, i)}: missing field(s) {', '.join(sorted(missing))}")
    columns = []
    for f in schema:
        values = [r.get(f.name) for r in rows]
        try:
            columns.append(pa.array(values, f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            for i, v in enumerate(values):  # name the first value that does not fit
                try:
                    pa.array([v], f.type)
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
                    raise SchemaError(f"{_where(where, i, f.name)}: {v!r} is not a {f.type}") from None
            raise
    return validate_table(pa.Table.from_arrays(columns, schema=schema), schema, where)


def validate_parquet(path, schema, batch_size=65536):
    """Stream a parquet file through ``validate_table``; return its row count."""
    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise SchemaError(f"{path}: not a readable parquet file: {e}") from None
    rows = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        validate_table(batch, schema, str(path), offset=rows)
        rows += batch.num_rows
    if pf.metadata.num_rows == 0:
        conform(pf.schema_arrow.empty_table(), schema, str(path))
    return rows


def validate_sample(sample, where=""):
    """Check one WebDataset sample, a dict of extension -> bytes plus ``__key__``.

    Returns the decoded KEY.json as a dict.
    """
    key = sample.get("__key__")
    where = where or f"sample {key}"
    for ext in ("jpg", "txt", "json"):
        if ext not in sample:
            raise SchemaError(f"{where}: missing {key}.{ext}")
    try:
        meta = json.loads(sample["json"])
        text = sample["txt"].decode("utf-8")
    except (ValueError, UnicodeDecodeError) as e:
        raise SchemaError(f"{where}: unreadable json or txt: {e}") from None
    validate_records([meta], SHARD_SAMPLE, where)
    if meta["key"] != key:
        raise SchemaError(f"{where}: json key {meta['key']!r} differs from the tar member key {key!r}")
    if meta["text"] != text:
        raise SchemaError(f"{where}: txt differs from json text")
    jpg = sample["jpg"]
    if not jpg.startswith(b"\xff\xd8"):
        raise SchemaError(f"{where}: {key}.jpg is not a JPEG")
    if hashlib.sha256(jpg).hexdigest() != meta["sha256"]:
        raise SchemaError(f"{where}: sha256 in json does not match {key}.jpg")
    return meta


def read_tar_samples(path):
    """Yield samples (``__key__`` plus extension -> bytes) from a WebDataset tar, in order.

    Uses the convention webdataset and open_clip rely on: the key is the member name
    up to its first dot, and a sample's members are adjacent.
    """
    current = None
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name.rsplit("/", 1)[-1]
            if "." not in name:
                raise SchemaError(f"{path}: member {member.name!r} has no extension")
            key, ext = name.split(".", 1)
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key}
            if ext in current:
                raise SchemaError(f"{path}: duplicate member {member.name!r}")
            current[ext] = tar.extractfile(member).read()
    if current is not None:
        yield current


SAMPLE_FIELDS = [f.name for f in SHARD_SAMPLE] + ["shard", "jpg_bytes"]


def validate_shard_dir(shard_dir):
    """Check a whole shard directory: tars, their index parquets and sizes.json.

    Returns the total number of samples. Keys must be unique across shards.
    """
    from clipforge.schemas.files import read_sizes

    shard_dir = Path(shard_dir)
    sizes = read_sizes(shard_dir / "sizes.json")
    tars = sorted(p.name for p in shard_dir.glob("*.tar"))
    if sorted(sizes) != tars:
        raise SchemaError(f"{shard_dir}/sizes.json lists {sorted(sizes)} but the folder holds {tars}")
    seen = set()
    total = 0
    for name in tars:
        metas = []
        for sample in read_tar_samples(shard_dir / name):
            meta = validate_sample(sample, f"{name}: sample {sample['__key__']}")
            if meta["key"] in seen:
                raise SchemaError(f"{name}: key {meta['key']} appears twice in the shard set")
            seen.add(meta["key"])
            meta.update(shard=name, jpg_bytes=len(sample["jpg"]))
            metas.append(meta)
        if len(metas) != sizes[name]:
            raise SchemaError(f"{name}: holds {len(metas)} samples, sizes.json says {sizes[name]}")
        index = shard_dir / (name[: -len(".tar")] + ".parquet")
        if not index.exists():
            raise SchemaError(f"{name}: index {index.name} is missing")
        table = validate_table(pq.read_table(index), SHARD_INDEX, str(index))
        listed = [{k: r[k] for k in SAMPLE_FIELDS} for r in table.to_pylist() if r["status"] == "success"]
        if listed != [{k: m[k] for k in SAMPLE_FIELDS} for m in metas]:
            raise SchemaError(f"{index.name} does not list exactly the samples of {name}, in order")
        total += len(metas)
    return total

