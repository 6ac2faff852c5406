"""Hash-partitioned temporary files: how a stage passes many records from one pass to the next
without a shuffle of per-record elements (which the local runner would hold in memory).

A pass writes its records as Arrow tables split by partition number into
``DIR/pNNNNN/NAME.parquet``; the next pass reads one partition at a time. Names are
deterministic (the work item and a flush number), so a retried bundle rewrites the same files
with the same content, on any runner. ``Fanout`` starts the next pass: it emits the partition
numbers only once every element of its input exists, spread over the workers.

MetaCLIP's curation is shaped the same way: per-shard match files, one count vector summed
over them, then per-shard sampling.
"""

import io

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems


def partition_dir(root, part):
    return FileSystems.join(root, f"p{part:05d}")


def write_table(path, table, compression="zstd"):
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=compression)
    with FileSystems.create(path) as f:
        f.write(buf.getvalue())


def read_table(path, columns=None):
    if "://" not in path:
        return pq.read_table(path, columns=columns)
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return pq.read_table(io.BytesIO(f.read()), columns=columns)


def write_partitioned(root, name, table, parts):
    """Write the rows of ``table`` to ``root/pNNNNN/name.parquet`` by their partition number
    (``parts``, one per row). Returns the number of files written."""
    if table.num_rows == 0:
        return 0
    parts = np.asarray(parts)
    order = np.argsort(parts, kind="stable")
    table = table.take(pa.array(order))
    sorted_parts = parts[order]
    bounds = np.flatnonzero(np.diff(sorted_parts)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(sorted_parts)]))
    for s, e in zip(starts, ends):
        write_table(FileSystems.join(partition_dir(root, int(sorted_parts[s])), name + ".parquet"),
                    table.slice(s, e - s), compression="lz4")
    return len(starts)


def read_partition(root, part, schema):
    """Every file of one partition, as one table (empty, with ``schema``, when there is none)."""
    found = FileSystems.match([FileSystems.join(partition_dir(root, part), "*.parquet")])[0].metadata_list
    tables = [read_table(m.path) for m in sorted(found, key=lambda m: m.path)]
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)


def delete_partition(root, part):
    d = partition_dir(root, part)
    if FileSystems.exists(d):
        FileSystems.delete([d])


class Fanout(beam.PTransform):
    """``pcoll | Fanout(n)``: the numbers 0..n-1, each once, emitted after every element of
    ``pcoll`` exists (a barrier) and grouped so that runners spread them over their workers
    (on Dask, a GroupByKey fed by one Dask partition per number)."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def expand(self, pcoll):
        done = (pcoll | "KeyAll" >> beam.Map(lambda _: (None, None))
                | "WaitForAll" >> beam.GroupByKey()
                | "Numbers" >> beam.FlatMap(lambda _, n: ((i, True) for i in range(n)), self.n))
        seeds = pcoll.pipeline | "Seeds" >> beam.Create([(i, False) for i in range(self.n)])
        return ((done, seeds) | "Both" >> beam.Flatten()
                | "ByNumber" >> beam.GroupByKey()
                | "Ready" >> beam.FlatMap(lambda kv: [kv[0]] if any(kv[1]) else []))
