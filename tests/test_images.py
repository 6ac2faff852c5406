"""The image step of the shard stage against Pillow, the reference decoder.

JPEGs in RGB or grey go through libjpeg-turbo's scaled decoding; the output must be what a
high-quality resize of Pillow's full decode (EXIF orientation applied by
``ImageOps.exif_transpose``, LANCZOS, same size) gives, up to resampling differences, for every
orientation and colour mode; other images and damaged JPEGs take Pillow's path."""

import io
import math
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from clipforge.pipeline import images
from clipforge.pipeline.images import ImageConfig, process


def _scene(w, h, seed):
    rng = random.Random(seed)
    img = Image.new("RGB", (w, h), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    d = ImageDraw.Draw(img)
    for _ in range(10):
        x, y, r = rng.randrange(w), rng.randrange(h), rng.randrange(10, max(11, min(w, h) // 2))
        d.ellipse((x - r, y - r, x + r, y + r), fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    d.text((w // 3, h // 3), "F", fill=(0, 0, 0))  # not symmetric: a wrong flip shows
    return img.filter(ImageFilter.GaussianBlur(2))


def _jpeg(img, orientation=1, quality=90):
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    img.save(buf, "JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


def _reference(body, size, crop=None):
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(body))).convert("RGB").resize(size, Image.LANCZOS)
    if crop:
        w, h = size
        left, top = (w - crop) // 2, (h - crop) // 2
        img = img.crop((left, top, left + crop, top + crop))
    return np.asarray(img, dtype=np.float64)


def _psnr(a, b):
    return 10 * math.log10(255 ** 2 / np.mean((a - b) ** 2))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_turbo_path_matches_pillow_for_every_orientation(orientation):
    body = _jpeg(_scene(900, 500, orientation), orientation)
    out = process(body, ImageConfig(image_size=128))
    w, h = (500, 900) if orientation in (5, 6, 7, 8) else (900, 500)
    size = (round(w * 128 / min(w, h)), round(h * 128 / min(w, h)))
    assert (out.original_width, out.original_height, out.width, out.height) == (w, h, *size)
    got = np.asarray(Image.open(io.BytesIO(out.jpg)).convert("RGB"), dtype=np.float64)
    assert _psnr(got, _reference(body, size)) > 30
    # and every other orientation's transform would be far off: the check can tell them apart
    wrong = np.asarray(ImageOps.mirror(Image.open(io.BytesIO(out.jpg))).convert("RGB"), dtype=np.float64)
    assert _psnr(wrong, _reference(body, size)) < 25


def test_turbo_path_grey_centre_crop_and_upscale():
    grey = _scene(700, 420, 1).convert("L")
    body = _jpeg(grey)
    assert Image.open(io.BytesIO(body)).mode == "L"
    out = process(body, ImageConfig(image_size=200, resize_mode="center_crop"))
    assert (out.width, out.height) == (200, 200)
    got = np.asarray(Image.open(io.BytesIO(out.jpg)).convert("RGB"), dtype=np.float64)
    assert got.shape == (200, 200, 3) and _psnr(got, _reference(body, (333, 200), crop=200)) > 30
    small = _jpeg(_scene(120, 90, 2))  # upscaled: decoded at full size
    up = process(small, ImageConfig(image_size=180))
    assert (up.width, up.height) == (240, 180)


def test_damaged_and_other_jpegs_take_pillows_path():
    body = _jpeg(_scene(600, 400, 3))
    assert images._turbo_decode(body[: len(body) // 2], (600, 400), 0.5, 1) is None  # truncated: refused
    assert process(body[: len(body) // 2], ImageConfig()) == "image_undecodable"
    buf = io.BytesIO()
    _scene(600, 400, 4).convert("CMYK").save(buf, "JPEG", quality=90)
    cmyk = process(buf.getvalue(), ImageConfig(image_size=100))  # libjpeg-turbo's path does not take CMYK
    assert (cmyk.width, cmyk.height) == (150, 100)


def test_the_stored_image_carries_its_perceptual_hash():
    """Both paths (libjpeg-turbo and Pillow) hash the pixels they store: the hash of the stored
    JPEG, decoded again, is within a few bits."""
    from clipforge.schemas.phash import distance, phash
    rng = random.Random(11)
    img = Image.new("RGB", (640, 480), (30, 90, 160))
    d = ImageDraw.Draw(img)
    for _ in range(8):
        x, y, r = rng.randrange(640), rng.randrange(480), rng.randrange(20, 150)
        d.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        out = process(buf.getvalue(), ImageConfig(image_size=128))
        again = np.asarray(Image.open(io.BytesIO(out.jpg)).convert("RGB"))
        assert out.phash is not None and distance(out.phash, phash(again)) <= 4, fmt
