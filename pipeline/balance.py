"""CLIP/MetaCLIP balancing, and the pick of one pair per uid (``schemas.pairs`` defines the uid).

Balancing keeps a pair with probability

    p = 1 - prod over its matched queries q of (1 - min(1, t / count(q)))

where count(q) is the number of (deduplicated) pairs matching q and t the per-query cap:
a pair of a tail query (count <= t) is always kept, a pair whose only query is a head query
is kept with probability t / count. The draw is a hash of the seed and the uid, so the same
input gives the same output on any runner and any number of workers.
"""

import hashlib

def keep_probability(queries, counts, t):
    drop = 1.0
    for q in queries:
        drop *= 1.0 - min(1.0, t / counts[q])
    return 1.0 - drop


def draw(seed, pair_uid):
    """A uniform number in [0, 1) determined by the seed and the uid."""
    h = hashlib.blake2b(f"{seed}:{pair_uid}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


# --- the same, a partition of pairs at a time (Arrow tables, NumPy) ---------------------------

def first_per_uid(table, format_order):
    """``table`` sorted by uid, with a boolean column ``_first`` marking the one pair kept of
    each uid: the first by (input format in ``format_order``, source file, page URL)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    order = pa.array([format_order[f] for f in table.column("input_format").to_pylist()], pa.int8())
    keyed = table.append_column("_format", order).append_column(
        "_page", pc.fill_null(table.column("page_url"), ""))
    keyed = keyed.sort_by([("uid", "ascending"), ("_format", "ascending"), ("source_file", "ascending"),
                           ("_page", "ascending")])
    uids = keyed.column("uid").combine_chunks()
    n = len(uids)
    first = np.ones(n, dtype=bool)
    if n > 1:
        first[1:] = pc.not_equal(uids.slice(1), uids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    return keyed.drop_columns(["_format", "_page"]).append_column("_first", pa.array(first))


def keep_probabilities(offsets, ids, counts, t):
    """``keep_probability`` for every pair of a batch at once: pair i matched the query ids
    ``ids[offsets[i]:offsets[i+1]]`` (at least one); ``counts`` is indexed by query id."""
    import numpy as np

    if len(offsets) <= 1:
        return np.zeros(0)
    factor = 1.0 - np.minimum(1.0, t / counts[ids])
    return 1.0 - np.multiply.reduceat(factor, offsets[:-1])


def draws(seed, uids):
    """``draw(seed, uid)`` for a list of uids, as a NumPy array."""
    import numpy as np

    blake = hashlib.blake2b
    prefix = f"{seed}:"
    return np.array([int.from_bytes(blake(f"{prefix}{u}".encode(), digest_size=8).digest(), "big")
                     for u in uids], dtype=np.float64) / 2**64
