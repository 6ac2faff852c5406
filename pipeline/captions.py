"""Clean an image's text and decide whether it can be a caption at all.

``clean(text)`` returns ``(caption, None)`` or ``(None, reason)`` where reason is one of
``no_text``, ``text_too_short``, ``text_too_long``, ``text_file_name``, ``text_number`` or
``text_boilerplate``. Cleaning: HTML entities unescaped, mojibake repaired with ftfy (only
for non-ASCII text: ASCII cannot be mojibake), Unicode NFC, control and zero-width
characters and bidirectional controls removed, whitespace collapsed. A raw text over
``RAW_FACTOR`` times the longest caption is too long before any cleaning.
"""

import html
import re
import unicodedata

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

