"""CLIP/MetaCLIP balancing, and the pick of one pair per uid (``schemas.pairs`` defines the uid).

Balancing keeps a pair with probability

    p = 1 - prod over its matched queries q of (1 - min(1, t / count(q)))

where count(q) is the number of (deduplicated) pairs matching q and t the per-query cap:
a pair of a tail query (count <= t) is always kept, a pair whose only query is a head query
is kept with probability t / count. The draw is a hash of the seed and the uid, so the same
input gives the same output on any runner and any number of workers.

Worldwide (MetaCLIP 2), each language has its own t. English's t (the ``--max-per-query``
given, CLIP's 20,000, MetaCLIP 2's 170,000 at its scale) fixes the *tail share*

    p = sum of c(q) over English queries with c(q) < t_en  /  sum of c(q) over English queries

(the fraction of English matches that belong to tail queries), and each other language gets
the t at which its own tail share is nearest p:

    t_lang = argmin over t in T of | tail_share_lang(t) - p |,   T = the language's distinct
             counts and (largest count + 1); ties go to the larger t (more pairs kept).

tail_share only changes at a count, so T holds every value worth trying; ``language_threshold``
finds it with one sort and a cumulative sum. MetaCLIP 2's ``p_to_t`` takes the count whose
inclusive cumulative share is nearest p; this uses the strict ``<`` of the definition of p on
both sides, so a language whose counts equal English's gets t_en's tail share exactly.
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


def tail_share(counts, t):
    """The fraction of all matches that belong to queries matched fewer than ``t`` times
    (queries without a match count for nothing); 1.0 when there are no matches."""
    import numpy as np

    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return float(counts[counts < t].sum() / total) if total > 0 else 1.0


def language_threshold(counts, p):
    """The t whose tail share of ``counts`` is nearest ``p`` (see the module's docstring);
    None when the language has no match."""
    import numpy as np

    c = np.sort(np.asarray(counts, dtype=np.int64)[np.asarray(counts) > 0])
    if not len(c):
        return None
    candidates, first = np.unique(c, return_index=True)  # t = candidates[k]: the tail is c[:first[k]]
    cum = np.concatenate(([0], np.cumsum(c, dtype=np.float64)))
    shares = np.append(cum[first], cum[-1]) / cum[-1]
    ts = np.append(candidates, c[-1] + 1)
    gap = np.abs(shares - p)
    best = np.flatnonzero(gap <= gap.min() + 1e-12)[-1]  # the larger t on a tie
    return int(ts[best])


def language_thresholds(counts, langs, t_en, reference="en"):
    """{language: t} for a worldwide list: ``counts`` the match count of every query id,
    ``langs`` the language of every id (an array of codes). The reference language gets
    ``t_en``; every other language the t of the same tail share. Returns (thresholds, p);
    without a reference-language match every language gets ``t_en`` (p None)."""
    import numpy as np

    counts = np.asarray(counts)
    groups = language_groups(langs)
    present = sorted(lang for lang, ids in groups.items() if (counts[ids] > 0).any())
    if reference not in present:
        return {lang: int(t_en) for lang in present}, None
    p = tail_share(counts[groups[reference]], t_en)
    return {lang: int(t_en) if lang == reference else language_threshold(counts[groups[lang]], p)
            for lang in present}, p


def language_groups(langs):
    """{language: the ids of its queries} of an array of per-id languages, in one sort (a
    comparison per language would cost languages x ids)."""
    import numpy as np

    names, inverse = np.unique(np.asarray(langs, dtype=object).astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(names) + 1))
    return {str(name): order[bounds[i]:bounds[i + 1]] for i, name in enumerate(names)}


def keep_probabilities(offsets, ids, counts, t):
    """``keep_probability`` for every pair of a batch at once: pair i matched the query ids
    ``ids[offsets[i]:offsets[i+1]]`` (at least one); ``counts`` is indexed by query id, and so
    is ``t`` when it is an array (a threshold per query: worldwide balancing)."""
    import numpy as np

    if len(offsets) <= 1:
        return np.zeros(0)
    if np.ndim(t):
        t = t[ids]
    factor = 1.0 - np.minimum(1.0, t / counts[ids])
    return 1.0 - np.multiply.reduceat(factor, offsets[:-1])


def draws(seed, uids):
    """``draw(seed, uid)`` for a list of uids, as a NumPy array."""
    import numpy as np

    blake = hashlib.blake2b
    prefix = f"{seed}:"
    return np.array([int.from_bytes(blake(f"{prefix}{u}".encode(), digest_size=8).digest(), "big")
                     for u in uids], dtype=np.float64) / 2**64
