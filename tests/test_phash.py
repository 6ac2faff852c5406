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


def textured_photo(rng, w, h):
    """A photo-like image: a lit gradient, overlapping shapes, blur and sensor-like noise."""
    gen = np.random.default_rng(rng.randrange(1 << 30))
    xs, ys = np.linspace(0, 1, w)[None, :, None], np.linspace(0, 1, h)[:, None, None]
    base = xs * gen.uniform(-120, 120, 3) + ys * gen.uniform(-120, 120, 3) + gen.uniform(60, 200, 3)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(4, 14)):
        x, y, r = rng.randrange(w), rng.randrange(h), rng.randrange(8, max(9, w // 3))
        fill = tuple(rng.randrange(256) for _ in range(3))
        kind = rng.random()
        if kind < 0.4:
            d.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif kind < 0.7:
            d.rectangle((x - r, y - r // 2, x + r, y + r // 2), fill=fill)
        else:
            d.polygon([(x + rng.randint(-r, r), y + rng.randint(-r, r)) for _ in range(rng.randint(3, 6))], fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(1, 3)))
    noise = gen.normal(0, rng.uniform(4, 14), (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))


def web_copy(img, rng):
    """What another site makes of a photo: cropped up to 5% per side, resized 0.5-2x, brightness
    within 10%, JPEG quality 60-95."""
    from PIL import ImageEnhance
    w, h = img.size
    left, top, right, bottom = (int(rng.uniform(0, 0.05) * s) for s in (w, h, w, h))
    img = img.crop((left, top, w - right, h - bottom))
    f = rng.uniform(0.5, 2.0)
    img = img.resize((max(8, int(img.width * f)), max(8, int(img.height * f))), Image.Resampling.BICUBIC)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.9, 1.1))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=rng.randint(60, 95))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def as_stored(img):
    """The shard stage's copy: shorter side 256 px, bilinear."""
    w, h = img.size
    s = 256 / min(w, h)
    return np.asarray(img.resize((round(w * s), round(h * s)), Image.Resampling.BILINEAR))


@pytest.mark.slow
def test_copies_are_found_and_distinct_photos_are_not():
    """The overlap search's promise at its defaults: evaluation photos probed with crops find at
    least 95% of their web copies among stored images (hash within the distance, pixels alike),
    and no evaluation photo is matched with any of 2,000 other photos."""
    from clipforge.schemas.phash import crop_probes
    from clipforge.trainer.overlap import DEFAULT_MAX_DISTANCE as D
    from clipforge.trainer.overlap import DEFAULT_MIN_SIMILARITY, probe_crop, similarity
    rng = random.Random(1)
    evals = [np.asarray(textured_photo(rng, rng.randint(120, 260), rng.randint(120, 260))) for _ in range(300)]
    others = [as_stored(textured_photo(rng, rng.randint(120, 260), rng.randint(120, 260))) for _ in range(2000)]
    copies = [as_stored(web_copy(Image.fromarray(e), rng)) for e in evals]
    probes = np.array([crop_probes(e) for e in evals], dtype=np.int64)
    per = probes.shape[1]

    def matches(stored, distance):
        qi, si, _ = HashIndex(np.array([phash(x) for x in stored])).search(probes.ravel(), distance)
        return {(q // per, s) for q, s in zip(qi.tolist(), si.tolist())
                if similarity(probe_crop(evals[q // per], q % per), stored[s]) >= DEFAULT_MIN_SIMILARITY}

    found = {q for q, s in matches(copies, D) if q == s}
    assert len(found) >= 0.95 * len(evals), len(found)
    assert matches(others, D) == set()  # no false match
    # even with a looser hash, where the hash alone pairs distinct photos, the pixel check rejects them
    assert len(HashIndex(np.array([phash(x) for x in others])).search(probes.ravel(), 10)[0]) > 0
    assert matches(others, 10) == set()
