"""Decode, check and resize one fetched image; encode it as the shard's JPEG.

``process(body, cfg)`` returns an ``Image`` record or a drop reason: ``image_undecodable``,
``image_too_many_pixels`` (checked from the header, before any pixel is decoded: the
decompression-bomb guard), ``image_too_small`` or ``aspect_ratio_too_large``. Decoding uses
JPEG draft mode when the image is to be shrunk by 2x or more (libjpeg scales while it
decodes), applies the EXIF orientation, and flattens transparency onto white.
"""

import hashlib
import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps

RESIZE_MODES = ("keep_ratio", "center_crop", "no")


@dataclass
class ImageConfig:
    image_size: int = 256
    resize_mode: str = "keep_ratio"  # keep_ratio: shorter side -> image_size; center_crop: square crop
    min_size: int = 32  # shorter side of the original, in pixels
    max_aspect_ratio: float = 10.0
    max_pixels: int = 50_000_000
    quality: int = 95


@dataclass
class Encoded:
    jpg: bytes
    width: int
    height: int
    original_width: int
    original_height: int
    sha256: str


def process(body, cfg):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(body))  # reads the header only
            w, h = img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "image_too_many_pixels"
    except Exception:
        return "image_undecodable"
    if w * h > cfg.max_pixels:
        return "image_too_many_pixels"
    orientation = 1
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:
        pass
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    if min(w, h) < cfg.min_size:
        return "image_too_small"
    if max(w, h) / max(1, min(w, h)) > cfg.max_aspect_ratio:
        return "aspect_ratio_too_large"
    try:
        if img.format == "JPEG" and cfg.resize_mode != "no":
            scale = cfg.image_size / min(w, h)
            if scale <= 0.5:
                img.draft("RGB", (max(1, int(img.size[0] * scale)), max(1, int(img.size[1] * scale))))
        img.load()
        img = ImageOps.exif_transpose(img)
        img = _rgb(img)
    except Exception:  # truncated or corrupt data shows up here
        return "image_undecodable"
    img = _resize(img, cfg)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=cfg.quality)
    jpg = buf.getvalue()
    return Encoded(jpg, img.width, img.height, w, h, hashlib.sha256(jpg).hexdigest())


def _rgb(img):
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return img.convert("RGB")


def _resize(img, cfg):
    """OpenCV does the resampling (several times faster than Pillow's here): area averaging
    for shrinking by more than 2x, bicubic otherwise (after JPEG draft decoding the remaining
    factor is under 2x, where bicubic does not alias)."""
    if cfg.resize_mode == "no":
        return img
    w, h = img.size
    scale = cfg.image_size / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != (w, h):
        interp = cv2.INTER_AREA if scale < 0.5 else cv2.INTER_CUBIC
        img = Image.fromarray(cv2.resize(np.asarray(img), size, interpolation=interp))
    if cfg.resize_mode == "center_crop":
        w, h = img.size
        s = cfg.image_size
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    return img


ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated body is an error, not a grey half-image
cv2.setNumThreads(1)  # the fetch threads are the parallelism; OpenCV's own pool would oversubscribe
