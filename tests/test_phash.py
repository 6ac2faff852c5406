"""The perceptual hash against imagehash (the reference implementation of the same hash), and
the multi-index Hamming search against brute force."""

import io
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from clipforge.schemas.phash import HashIndex, distance, phash, phash_small

imagehash = pytest.importorskip("imagehash")


def photo_like(rng, w, h):
    img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    d = ImageDraw.Draw(img)
    for _ in range(10):
        x, y, r = rng.randrange(w), rng.randrange(h), rng.randrange(10, max(11, w // 3))
        d.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    img = img.filter(ImageFilter.GaussianBlur(3))
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))


def test_phash_equals_imagehash_on_the_same_32x32_grey():
    rng = random.Random(3)
    for i in range(60):
        img = photo_like(rng, rng.randint(64, 400), rng.randint(64, 400))
        if i % 3 == 0:  # some go through JPEG, as the web's do
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=70)
            img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        theirs = int(str(imagehash.phash(img)), 16)
        small = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.LANCZOS))
        assert phash_small(small) & (2 ** 64 - 1) == theirs


def test_phash_of_a_resized_copy_is_close_and_of_another_image_is_far():
    rng = random.Random(5)
    a, b = photo_like(rng, 400, 300), photo_like(rng, 400, 300)
    ha = phash(np.asarray(a))
    assert distance(ha, phash(np.asarray(a.resize((200, 150), Image.Resampling.BILINEAR)))) <= 4
    assert distance(ha, phash(np.asarray(a.convert("L")))) <= 4  # grey input is hashed as its luma
    assert distance(ha, phash(np.asarray(b))) >= 16
    assert -(2 ** 63) <= ha < 2 ** 63  # stored as a signed 64-bit integer


def _brute(queries, stored, d):
    q = np.asarray(queries, dtype=np.int64).view(np.uint64)
    s = np.asarray(stored, dtype=np.int64).view(np.uint64)
    dist = np.bitwise_count(q[:, None] ^ s[None, :])
    qi, si = np.nonzero(dist <= d)
    return qi, si, dist[qi, si]


@pytest.mark.parametrize("max_distance", [0, 3, 5, 8, 11])
def test_index_finds_exactly_what_brute_force_finds(max_distance):
    gen = np.random.default_rng(max_distance)
    stored = gen.integers(-(2 ** 63), 2 ** 63 - 1, size=3000, dtype=np.int64)
    # queries: random ones, and stored ones with 0..14 random bits flipped (some within reach)
    near = stored[gen.integers(0, len(stored), 400)].copy().view(np.uint64)
    for i in range(len(near)):
        for bit in gen.choice(64, gen.integers(0, 15), replace=False):
            near[i] ^= np.uint64(1) << np.uint64(bit)
    queries = np.concatenate([gen.integers(-(2 ** 63), 2 ** 63 - 1, 200, dtype=np.int64), near.view(np.int64)])
    stored[:5] = stored[5]  # repeated values in a bucket
    got = HashIndex(stored, max_candidates=5_000).search(queries, max_distance, batch=97)
    want = _brute(queries, stored, max_distance)
    for g, w in zip(got, want):
        assert np.array_equal(g, w)
    assert len(got[0]) > 0


def test_index_edges():
    idx = HashIndex(np.array([0, -1], dtype=np.int64))
    qi, si, d = idx.search(np.array([0, -1, 1], dtype=np.int64), 1)
    assert list(zip(qi, si, d)) == [(0, 0, 0), (1, 1, 0), (2, 0, 1)]
    assert len(HashIndex(np.array([], dtype=np.int64)).search(np.array([1]), 5)[0]) == 0
    with pytest.raises(ValueError):
        idx.search(np.array([0]), 64)
