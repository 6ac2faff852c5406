r"""Clean an image's text and decide whether it can be a caption at all.

``clean(text)`` returns ``(caption, None)`` or ``(None, reason)`` where reason is one of
``no_text``, ``text_too_short``, ``text_too_long``, ``text_file_name``, ``text_number`` or
``text_boilerplate``. Cleaning: HTML entities unescaped, mojibake repaired with ftfy (only
for non-ASCII text: ASCII cannot be mojibake), Unicode NFC, control and zero-width
characters and bidirectional controls removed, whitespace collapsed. A raw text over
``RAW_FACTOR`` times the longest caption is too long before any cleaning.

``clean_many(texts)`` gives the same outcome for a list of texts: plain ASCII texts (no ``&``,
so no entity can bring other characters in) are cleaned and judged by Arrow compute (RE2) in
one pass, every other text by ``clean``. On cleaned ASCII text the two regex engines agree on
every rule: the only white space left is single spaces (RE2's ``\s`` lacks ``\v`` and
``\x1c-\x1f``, which cleaning has turned into spaces), ``\d`` and ``\w`` are ASCII classes in
both, and no text ends in a new line (Python's ``$`` also matches before one).
"""

import html
import re
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import ftfy
from ftfy.badness import is_bad

MIN_CHARS = 3
MAX_CHARS = 1024
# A raw text longer than RAW_FACTOR * max_chars is text_too_long without being cleaned: no
# amount of entity or white space collapse makes a caption of it, and cleaning it costs time.
RAW_FACTOR = 8

# Zero-width characters, the soft hyphen, and bidirectional controls (marks, embeddings,
# overrides, isolates): invisible, and the overrides can make a caption display reversed.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u200e\u200f\u061c"
                                    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"), None)
_SPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FILE_NAME = re.compile(
    r"^[^\s/\\]*\.(?:jpe?g|png|gif|webp|bmp|svg|tiff?|heic|heif|avif|ico|jfif)$"
    r"|^(?:img|dsc|dscn|dscf|dcim|pxl|sam|gopr|mvimg|screenshot|photo|image|file)[\s_-]*\d[\w-]*$",
    re.IGNORECASE)
_NUMBER = re.compile(r"^[\d\s.,:;/#+%×x()-]+$", re.IGNORECASE)
_BOILERPLATE = re.compile(
    r"^(?:an?\s+)?(?:image|images|img|logo|photo|photos|picture|pic|icon|thumbnail|thumb|banner|spacer|"
    r"placeholder|untitled|default|avatar|button|blank|null|none|undefined|alt|alt text|image description|"
    r"loading|advertisement|ad|profile picture|header|footer|background)"
    r"(?:[\s_-]*\d+)?$", re.IGNORECASE)


def normalise(text):
    """The cleaned text, before any judgement on it."""
    if "&" in text:
        text = html.unescape(text)
    if not text.isascii():
        if is_bad(text):  # ftfy's own quick test for mojibake; fixing is the slow part
            text = ftfy.fix_text(text, normalization="NFC")
        else:
            text = unicodedata.normalize("NFC", text)
        text = text.translate(_INVISIBLE)
    if not text.isprintable():  # tabs, newlines, control characters and other rare ones
        text = _CONTROL.sub(" ", text)
    # str.split() splits on exactly the characters re's \s matches in str patterns (both use
    # str.isspace), so this is _SPACE.sub(" ", text).strip() without the regex engine
    return " ".join(text.split())


def judge(text, min_chars=MIN_CHARS, max_chars=MAX_CHARS):
    """None if ``text`` (already normalised) can be a caption, else the drop reason."""
    if not text:
        return "no_text"
    if len(text) < min_chars:
        return "text_too_short"
    if len(text) > max_chars:
        return "text_too_long"
    if _NUMBER.match(text):
        return "text_number"
    if _FILE_NAME.match(text):
        return "text_file_name"
    if _BOILERPLATE.match(text.strip(" .:-_|")):
        return "text_boilerplate"
    return None


def clean(text, min_chars=MIN_CHARS, max_chars=MAX_CHARS):
    if text and len(text) > RAW_FACTOR * max_chars:
        return None, "text_too_long"
    text = normalise(text or "")
    reason = judge(text, min_chars, max_chars)
    return (None, reason) if reason else (text, None)



# --- the same for many texts at once ----------------------------------------------------------

REASONS = ("no_text", "text_too_short", "text_too_long", "text_number", "text_file_name", "text_boilerplate")
# In ASCII text every character from NUL to space, and DEL, is either white space or a control
# character that normalise() turns into one: a run of them becomes one space.
_ASCII_GAPS = r"[\x00-\x20\x7f]+"
_BOILERPLATE_STRIP = " .:-_|"


def _re2(pattern):
    return "(?i)" + pattern.pattern


def clean_many(texts, min_chars=MIN_CHARS, max_chars=MAX_CHARS):
    """``[clean(t, min_chars, max_chars) for t in texts]`` for a list of str, computed with
    Arrow compute for the plain ASCII ones: a list of ``(caption, None)`` or ``(None, reason)``."""
    out = [None] * len(texts)
    if not texts:
        return out
    arr = pa.array(texts, pa.string())
    fast = pc.and_(pc.string_is_ascii(arr), pc.invert(pc.match_substring(arr, "&")))
    fast = pc.and_(fast, pc.less_equal(pc.binary_length(arr), RAW_FACTOR * max_chars))
    fast_np = fast.to_numpy(zero_copy_only=False)
    for i in np.flatnonzero(~fast_np).tolist():
        out[i] = clean(texts[i], min_chars, max_chars)
    idx = np.flatnonzero(fast_np)
    if not len(idx):
        return out
    sub = arr.take(pa.array(idx))
    cleaned = pc.utf8_trim(pc.replace_substring_regex(sub, _ASCII_GAPS, " "), " ")
    n = pc.binary_length(cleaned).to_numpy(zero_copy_only=False)
    number = pc.match_substring_regex(cleaned, _re2(_NUMBER)).to_numpy(zero_copy_only=False)
    file_name = pc.match_substring_regex(cleaned, _re2(_FILE_NAME)).to_numpy(zero_copy_only=False)
    boiler = pc.match_substring_regex(pc.utf8_trim(cleaned, _BOILERPLATE_STRIP),
                                      _re2(_BOILERPLATE)).to_numpy(zero_copy_only=False)
    code = np.select([n == 0, n < min_chars, n > max_chars, number, file_name, boiler],
                     [0, 1, 2, 3, 4, 5], default=-1)
    for i, c, t in zip(idx.tolist(), code.tolist(), cleaned.to_pylist()):
        out[i] = (t, None) if c < 0 else (None, REASONS[c])
    return out
