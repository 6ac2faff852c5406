"""Near-duplicate search for the overlap analysis: 10,000 evaluation hashes against 1,000,000
shard hashes, within 7 bits (``clipforge overlap``'s default). clipforge's multi-index hashing (``schemas.phash.HashIndex``, index
build included) against the brute-force search a user would otherwise write: numpy XOR and
popcount of every pair, in blocks. Both return the same pairs (checked on every run).

Two hash distributions: uniform random bits (every 16-bit chunk value equally likely: the best
case for multi-index hashing) and skewed bits (each bit set with probability 0.3, so chunk
values crowd and candidate lists grow, as with real perceptual hashes whose bits correlate).
A quarter of the queries are stored hashes with 0 to 10 bits flipped, so pairs exist.
``clipforge overlap`` searches with 81 hashes per evaluation image (crops); the time of that
search for 10,000 images (810,000 query hashes, clipforge only: brute force would take hours)
is measured once and written in the section's text.
"""

import time

import numpy as np

from bench.harness import Comparison
from clipforge.schemas.phash import HashIndex

N_STORED, N_QUERIES, MAX_DISTANCE, PROBES = 1_000_000, 10_000, 7, 81
ABOUT = None  # set by benchmarks(): the timing of the full probe search


def _hashes(gen, n, p):
    if p == 0.5:
        return gen.integers(-(2 ** 63), 2 ** 63 - 1, size=n, dtype=np.int64)
    bits = gen.integers(0, 1000, (n, 64), dtype=np.uint16) < int(p * 1000)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64).view(np.int64)


def _queries(gen, stored, p):
    q = _hashes(gen, N_QUERIES, p).view(np.uint64)
    near = gen.choice(len(stored), N_QUERIES // 4, replace=False)
    q[: len(near)] = stored.view(np.uint64)[near]
    for i in range(len(near)):
        for bit in gen.choice(64, gen.integers(0, 11), replace=False):
            q[i] ^= np.uint64(1) << np.uint64(int(bit))
    return q.view(np.int64)


def brute_force(queries, stored, max_distance, block=256):
    s = stored.view(np.uint64)
    qi, si = [], []
    for start in range(0, len(queries), block):
        q = queries[start:start + block].view(np.uint64)
        d = np.bitwise_count(q[:, None] ^ s[None, :])
        a, b = np.nonzero(d <= max_distance)
        qi.append(a + start)
        si.append(b)
    return np.concatenate(qi), np.concatenate(si)


def _probe_search(stored, gen, p):
    """clipforge alone: 10,000 evaluation images x 81 probe hashes against the stored hashes."""
    q = np.concatenate([_queries(gen, stored, p) for _ in range(PROBES)])
    t0 = time.perf_counter()
    qi, _, _ = HashIndex(stored).search(q, MAX_DISTANCE)
    return time.perf_counter() - t0, len(q), len(qi)


def benchmarks(workdir):
    global ABOUT
    rows, probe_lines = [], []
    for label, p in (("uniform bits", 0.5), ("skewed bits (p = 0.3)", 0.3)):
        gen = np.random.default_rng(17)
        stored = _hashes(gen, N_STORED, p)
        queries = _queries(gen, stored, p)
        seconds, n_q, n_pairs = _probe_search(stored, gen, p)
        probe_lines.append(f"- {label}: {n_q:,} query hashes ({N_QUERIES:,} images x {PROBES} crops) against "
                           f"{N_STORED:,} in {seconds:.1f} s, index build included ({n_pairs:,} pairs within "
                           f"{MAX_DISTANCE} bits)")
        got = {}

        def ours(stored=stored, queries=queries, got=got):
            qi, si, _ = HashIndex(stored).search(queries, MAX_DISTANCE)
            got["ours"] = (qi, si)

        def peer(stored=stored, queries=queries, got=got):
            got["peer"] = brute_force(queries, stored, MAX_DISTANCE)

        def verify(side, got=got):
            if side == "peer" and "ours" in got:
                a, b = got["ours"], got["peer"]
                order = np.lexsort((b[1], b[0]))
                if not (np.array_equal(a[0], b[0][order]) and np.array_equal(a[1], b[1][order])):
                    raise RuntimeError("multi-index search and brute force found different pairs")

        rows.append(Comparison(
            name=f"overlap search, 10k x 1M hashes, {label}", ours=ours, peer=peer,
            peer_name="numpy brute force (XOR + popcount, blocks)", items=N_QUERIES, unit="queries",
            input=f"{N_QUERIES:,} query hashes (a quarter near stored ones) against {N_STORED:,} stored 64-bit hashes, "
                  f"within {MAX_DISTANCE} bits",
            repeats=1, verify=verify,
            notes="one process each; clipforge's time includes building the index over the 1M hashes; the same "
                  "pairs from both, checked on every run"))
    ABOUT = ("The search `clipforge overlap` runs, one process, measured when this section ran:\n\n"
             + "\n".join(probe_lines) + "\n")
    return rows
