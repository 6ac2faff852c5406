"""The JSON files between stages: ``metadata.json``, ``sizes.json`` and ``*_stats.json``.

Writers are atomic (write to a temporary file, then rename) so a crash never leaves a
half-written contract file behind.
"""

import json
import os
import re
import tempfile
from collections import Counter
from pathlib import Path

from clipforge.schemas.validate import SchemaError

_REASON = re.compile(r"^[a-z][a-z0-9_]*$")
_TAR = re.compile(r"^[^/]+\.tar$")


def write_json_atomic(path, obj):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _load(path):
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise SchemaError(f"{path}: file not found") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise SchemaError(f"{path}: not valid JSON: {e}") from None


# --- metadata.json: MetaCLIP's query list, a JSON list of strings ------------------------

def validate_metadata(obj, where="metadata.json"):
    if not isinstance(obj, list):
        raise SchemaError(f"{where}: expected a JSON list of strings, got {type(obj).__name__}")
    seen = set()
    for i, q in enumerate(obj):
        if not isinstance(q, str) or not q.strip():
            raise SchemaError(f"{where}: entry {i} is not a non-empty string: {q!r}")
        if q in seen:
            raise SchemaError(f"{where}: entry {i} {q!r} appears twice")
        seen.add(q)
    return obj


def read_metadata(path):
    return validate_metadata(_load(path), str(path))


def write_metadata(path, queries):
    write_json_atomic(path, validate_metadata(list(queries), str(path)))


# --- sizes.json: tar basename -> sample count (open_clip's convention) -------------------

def validate_sizes(obj, where="sizes.json"):
    if not isinstance(obj, dict):
        raise SchemaError(f"{where}: expected a JSON object of tar name -> sample count")
    for name, n in obj.items():
        if not _TAR.match(name):
            raise SchemaError(f"{where}: key {name!r} is not a tar basename")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise SchemaError(f"{where}: count for {name} is not a non-negative integer: {n!r}")
    return obj


def read_sizes(path):
    return validate_sizes(_load(path), str(path))


def write_sizes(path, sizes):
    write_json_atomic(path, validate_sizes(dict(sorted(sizes.items())), str(path)))


# --- *_stats.json: the funnel of one stage ------------------------------------------------

class Funnel:
    """Counts where every input record of a stage ended: kept, or dropped for a reason.

    >>> f = Funnel("crawl", unit="image link")
    >>> f.add_input(3); f.keep(2); f.drop("no_query_match")
    >>> f.to_dict()["dropped"]
    {'no_query_match': 1}
    """

    def __init__(self, stage, unit="record"):
        self.stage, self.unit = stage, unit
        self.input = 0
        self.kept = 0
        self.dropped = Counter()
        self.extra = {}

    def add_input(self, n=1):
        self.input += n

    def keep(self, n=1):
        self.kept += n

    def drop(self, reason, n=1):
        if not _REASON.match(reason):
            raise ValueError(f"drop reason must be snake_case: {reason!r}")
        self.dropped[reason] += n

    def merge(self, other):
        self.input += other.input
        self.kept += other.kept
        self.dropped.update(other.dropped)
        return self

    def to_dict(self):
        return validate_stats(
            {
                "stage": self.stage,
                "unit": self.unit,
                "input": self.input,
                "kept": self.kept,
                "dropped": dict(sorted(self.dropped.items(), key=lambda kv: (-kv[1], kv[0]))),
                "extra": self.extra,
            },
            f"{self.stage} funnel",
        )

    def write(self, path):
        write_json_atomic(path, self.to_dict())


def write_stats(path, stats):
    """A stage's ``*_stats.json``: checked first (``validate_stats``: the funnel adds up), then
    written atomically, a local path with ``write_json_atomic``, a filesystem URL (gs://, s3://,
    ...) through Beam's FileSystems as a temporary file renamed into place."""
    validate_stats(stats, str(path))
    path = str(path)
    if "://" not in path:
        write_json_atomic(path, stats)
        return
    from apache_beam.io.filesystems import FileSystems

    tmp = path + ".tmp"
    with FileSystems.create(tmp) as f:
        f.write((json.dumps(stats, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))
    FileSystems.rename([tmp], [path])


def validate_stats(obj, where="stats"):
    if not isinstance(obj, dict):
        raise SchemaError(f"{where}: expected a JSON object")
    for key in ("stage", "unit", "input", "kept", "dropped"):
        if key not in obj:
            raise SchemaError(f"{where}: missing field {key!r}")
    for key in ("input", "kept"):
        n = obj[key]
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise SchemaError(f"{where}: {key} is not a non-negative integer: {n!r}")
    if not isinstance(obj["dropped"], dict):
        raise SchemaError(f"{where}: dropped must map reason -> count")
    for reason, n in obj["dropped"].items():
        if not _REASON.match(reason):
            raise SchemaError(f"{where}: drop reason {reason!r} is not snake_case")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise SchemaError(f"{where}: count for {reason} is not a non-negative integer: {n!r}")
    total = obj["kept"] + sum(obj["dropped"].values())
    if total != obj["input"]:
        raise SchemaError(
            f"{where}: funnel does not add up: kept {obj['kept']} + dropped "
            f"{total - obj['kept']} = {total}, input {obj['input']}"
        )
    if "extra" in obj and not isinstance(obj["extra"], dict):
        raise SchemaError(f"{where}: extra must be an object")
    return obj


def read_stats(path):
    return validate_stats(_load(path), str(path))
