"""The perceptual hash of the shard index's ``phash`` column, and near-duplicate search over it.

``phash(pixels)`` is the 64-bit DCT hash of Zauner's thesis as the ``imagehash`` package computes
it (``imagehash.phash``, hash size 8): the grey image shrunk to 32x32, its 2-D DCT-II
(unnormalised, as ``scipy.fftpack.dct``), the 8x8 lowest frequencies, one bit per coefficient:
above their median. The grey conversion is ITU-R 601 luma (Pillow's "L"); the shrink is
OpenCV's area averaging, so a 256 px image hashes in about 0.05 ms (imagehash: Pillow LANCZOS and
scipy, about 0.4 ms). Resizing, re-encoding, small crops and brightness changes move a few bits;
different images differ in about half. Hashes are stored as signed 64-bit integers (the bits of
the unsigned value).

``HashIndex`` finds every stored hash within a Hamming distance of each query without comparing
all pairs: multi-index hashing (Norouzi, Punjani and Fleet, CVPR 2012). The 64 bits are cut into
4 chunks of 16; two hashes at distance d <= 4r + 3 agree within r bits on at least one chunk
(pigeonhole), so each query probes, in each chunk's sorted values, the values within r bits of
its own, and only those candidates are compared in full.
"""

from itertools import combinations

import cv2
import numpy as np

HASH_BITS = 64
CHUNKS = 4
CHUNK_BITS = HASH_BITS // CHUNKS
_ROWS = np.arange(32, dtype=np.float64)


def _dct_basis(n=32, keep=8):
    """Rows of the unnormalised DCT-II (scipy.fftpack.dct, type 2, norm None): 2 cos(pi k (2i+1) / 2n)."""
    k = np.arange(keep, dtype=np.float64)[:, None]
    return 2.0 * np.cos(np.pi * k * (2 * _ROWS[None, :] + 1) / (2 * n))


_BASIS = _dct_basis()
_WEIGHTS = (1 << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)


def grey(pixels):
    """ITU-R 601 luma of an (h, w, 3) RGB array, or the array itself when already grey."""
    if pixels.ndim == 2:
        return pixels
    return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)


def phash_small(small):
    """The hash of a 32x32 grey image (the step after shrinking), as a signed 64-bit int."""
    low = (_BASIS @ np.asarray(small, dtype=np.float64) @ _BASIS.T).ravel()  # the 8x8 lowest frequencies
    middle = np.sort(low)[31:33]  # the median of 64 values (np.median is 5x slower on so few)
    bits = low > (middle[0] + middle[1]) / 2
    return int(np.sum(_WEIGHTS[bits], dtype=np.uint64).astype(np.int64))


def phash(pixels):
    """The 64-bit perceptual hash of an RGB or grey uint8 image array (any size)."""
    g = grey(pixels)
    small = cv2.resize(g, (32, 32), interpolation=cv2.INTER_AREA if min(g.shape) >= 32 else cv2.INTER_LINEAR)
    return phash_small(small)


CROP_GRID = (0.0, 0.025, 0.05)  # fractions cut from each side by ``crop_probes``


def crop_probes(pixels, grid=CROP_GRID):
    """Hashes of the image cropped by every combination of ``grid`` fractions per side (81 for
    the default grid, the uncropped image first). A copy another site cropped by up to 5% per
    side is within 1.25% per side of one of them, where the hash barely moves: searching with
    all of them finds such copies at a small distance, which one hash of the whole image does
    not (measured in the README's overlap section). The image is converted to grey and shrunk to
    at most 128 px on its shorter side once; each crop is then a small area resize."""
    g = grey(pixels)
    h, w = g.shape
    if min(h, w) > 128:
        s = 128 / min(h, w)
        g = cv2.resize(g, (max(32, round(w * s)), max(32, round(h * s))), interpolation=cv2.INTER_AREA)
        h, w = g.shape
    out = []
    for left in grid:
        for top in grid:
            for right in grid:
                for bottom in grid:
                    part = g[int(top * h):h - int(bottom * h), int(left * w):w - int(right * w)]
                    small = cv2.resize(part, (32, 32),
                                       interpolation=cv2.INTER_AREA if min(part.shape) >= 32 else cv2.INTER_LINEAR)
                    out.append(phash_small(small))
    return out


def distance(a, b):
    """Hamming distance between two hashes (signed or unsigned 64-bit ints)."""
    return ((int(a) ^ int(b)) & 0xFFFFFFFFFFFFFFFF).bit_count()


def _unsigned(hashes):
    return np.ascontiguousarray(np.asarray(hashes, dtype=np.int64)).view(np.uint64)


def _masks(radius):
    """Every 16-bit mask with at most ``radius`` bits set."""
    out = [0]
    for r in range(1, radius + 1):
        out += [sum(1 << b for b in bits) for bits in combinations(range(CHUNK_BITS), r)]
    return np.array(out, dtype=np.int64)


class HashIndex:
    """Hamming search over a fixed set of 64-bit hashes (see the module's docstring).

    Memory: the hashes, and per chunk a sorted copy of its values and the order (about 56 bytes
    per hash). ``max_candidates`` bounds the candidates compared at once.
    """

    def __init__(self, hashes, max_candidates=4_000_000):
        self.hashes = _unsigned(hashes)
        self.max_candidates = max_candidates
        self.order, self.values = [], []
        for c in range(CHUNKS):
            v = ((self.hashes >> np.uint64(CHUNK_BITS * c)) & np.uint64(0xFFFF)).astype(np.int64)
            o = np.argsort(v, kind="stable")
            self.order.append(o)
            self.values.append(v[o])

    def __len__(self):
        return len(self.hashes)

    def search(self, queries, max_distance, batch=2048):
        """(query index, stored index, distance) arrays of every pair within ``max_distance``,
        each pair once, sorted by query then stored index."""
        if not 0 <= max_distance < HASH_BITS:
            raise ValueError(f"max_distance must be 0..{HASH_BITS - 1}")
        q = _unsigned(queries)
        found = [(np.empty(0, np.int64),) * 3]
        if len(self.hashes) and len(q):
            masks = _masks(max_distance // CHUNKS)
            for start in range(0, len(q), batch):
                found.append(self._batch(q[start:start + batch], start, masks, max_distance))
        qi, di, dist = (np.concatenate(parts) for parts in zip(*found))
        order = np.lexsort((di, qi))
        return qi[order], di[order], dist[order]

    def _batch(self, q, offset, masks, max_distance):
        pairs = []
        for c in range(CHUNKS):
            qv = ((q >> np.uint64(CHUNK_BITS * c)) & np.uint64(0xFFFF)).astype(np.int64)
            keys = (qv[:, None] ^ masks[None, :]).ravel()
            lo = np.searchsorted(self.values[c], keys, side="left")
            hi = np.searchsorted(self.values[c], keys, side="right")
            counts = hi - lo
            owner = np.repeat(np.arange(len(q)), len(masks))
            hit = counts > 0
            lo, counts, owner = lo[hit], counts[hit], owner[hit]
            for part in _slices(counts, self.max_candidates):
                n = counts[part]
                starts = np.repeat(lo[part] - np.cumsum(n) + n, n) + np.arange(n.sum())
                stored = self.order[c][starts]
                who = np.repeat(owner[part], n)
                d = np.bitwise_count(q[who] ^ self.hashes[stored]).astype(np.int64)
                keep = d <= max_distance
                pairs.append(np.stack([who[keep] + offset, stored[keep], d[keep]]))
        if not pairs:
            return (np.empty(0, np.int64),) * 3
        allp = np.unique(np.concatenate(pairs, axis=1), axis=1)  # a pair may be found in several chunks
        return allp[0], allp[1], allp[2]


def _slices(counts, limit):
    """Consecutive slices of ``counts`` whose sums stay under ``limit`` (a single larger count
    gets a slice of its own)."""
    start, total = 0, 0
    for i, n in enumerate(counts.tolist()):
        if total and total + n > limit:
            yield slice(start, i)
            start, total = i, 0
        total += n
    if start < len(counts):
        yield slice(start, len(counts))
