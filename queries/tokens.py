"""Words and bigrams of running text, as the query list counts them.

A *word* is a maximal run of letters, digits and marks that contains at least one letter,
with inner apostrophes or hyphens kept (``don't``, ``anti-statism``, ``Lennon–McCartney``
is two words: the en dash is not a joiner). Case is kept: ``Apple`` and ``apple`` are
different entries, as in MetaCLIP.

A *bigram* is two words adjacent within one segment; segments end at line breaks and at
the sentence and clause punctuation ``. ! ? ; : ( ) [ ] { } " , …`` so that ``Paris. The``
is never a bigram. Numbers are not words, and the words on either side of one are not a
bigram either.
"""

import re
import unicodedata

_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
_SEGMENT = re.compile(r"[\n.!?;:()\[\]{}\"“”«»,…]+")
_HAS_LETTER = re.compile(r"[^\W\d_]")


def words(segment):
    return [w for w in _WORD.findall(segment) if _HAS_LETTER.search(w)]


def segments(text):
    return [s for s in _SEGMENT.split(text) if s.strip()]


def unigrams(text):
    """Every word of the text, in order."""
    out = []
    for seg in segments(text):
        out.extend(words(seg))
    return out


def bigrams(text):
    """Every pair of adjacent words within a segment, as 'a b' strings."""
    out = []
    for seg in segments(text):
        ws = _WORD.findall(seg)  # a run without letters (a number) still separates its neighbours
        out.extend(f"{a} {b}" for a, b in zip(ws, ws[1:]) if _HAS_LETTER.search(a) and _HAS_LETTER.search(b))
    return out


def clean_entry(entry):
    """An entry as it goes into the list, or None when it is empty or a single punctuation mark.

    Whitespace is collapsed and trimmed; nothing else changes (case included).
    """
    if entry is None:
        return None
    entry = " ".join(entry.split())
    if not entry:
        return None
    if len(entry) == 1 and unicodedata.category(entry)[0] in "PS":
        return None
    return entry


# --- languages written without spaces ------------------------------------------------------
# Chinese, Japanese, Thai, Khmer, Lao and Myanmar are segmented by ICU's word BreakIterator
# (dictionary-based for those scripts; PyICU). A word is a segment ICU tags as letters, kana or
# ideographs; a number (tagged as one) separates its neighbours as above; two words are a
# bigram when ICU puts no other segment (a space, punctuation) between them, and a bigram is
# written joined, without a space ("東京" + "タワー" -> "東京タワー"). Tibetan and Dzongkha
# (ICU has no dictionary for them) are split into syllables at the tsheg and at shad and other
# punctuation; a syllable with a letter is a word, two syllables are a bigram when exactly one
# tsheg stands between them, and a bigram is written with its tsheg, as the language writes it.
# Every other language keeps the rules above.

ICU_LANGS = frozenset({"ja", "zh", "th", "km", "lo", "my"})
TSHEG_LANGS = frozenset({"bo", "dz"})
TSHEGS = ("\u0f0b", "\u0f0c")
_breakers = {}


def _icu():
    try:
        import icu
    except ImportError:
        raise RuntimeError("segmenting Chinese, Japanese, Thai, Khmer, Lao or Myanmar text needs PyICU "
                           "(pip install pyicu; it builds against libicu-dev)") from None
    return icu


def _breaker(lang):
    b = _breakers.get(lang)
    if b is None:
        icu = _icu()
        b = _breakers[lang] = icu.BreakIterator.createWordInstance(icu.Locale(lang))
    return b


def icu_segments(text, lang):
    """ICU's word segments of ``text`` as (segment, kind): kind "w" (letters, kana or
    ideographs), "n" (a number) or None (spaces, punctuation, symbols)."""
    icu = _icu()
    us = icu.UnicodeString(text)
    b = _breaker(lang)
    b.setText(us)
    out, start = [], b.first()
    for end in b:
        status = b.getRuleStatus()
        kind = "w" if status >= 200 else "n" if status >= 100 else None
        out.append((str(us[start:end]), kind))
        start = end
    return out


_TIB_SYLLABLE = None


def tsheg_segments(text):
    """Tibetan syllables of ``text`` as (syllable, kind, gap): kind "w" (has a letter), "n", and
    the text between the previous syllable and this one."""
    global _TIB_SYLLABLE
    if _TIB_SYLLABLE is None:
        import regex

        _TIB_SYLLABLE = regex.compile(r"[^\p{P}\p{Z}\p{C}\p{S}]+")
    out, prev = [], 0
    for m in _TIB_SYLLABLE.finditer(text):
        s = m.group()
        kind = "w" if _HAS_LETTER.search(s) or any(unicodedata.category(c)[0] == "L" for c in s) else "n"
        out.append((s, kind, text[prev:m.start()]))
        prev = m.end()
    return out


def join_bigram(a, b, lang=None):
    """A bigram as the list writes it: with a space, joined (no-space scripts) or with its tsheg."""
    if lang in ICU_LANGS:
        return a + b
    if lang in TSHEG_LANGS:
        return a + "\u0f0b" + b
    return f"{a} {b}"


def words_and_pairs(text, lang=None):
    """(unigrams, bigram pairs (a, b)) of ``text`` under ``lang``'s rules, in one pass."""
    if lang in ICU_LANGS:
        segs = icu_segments(text, lang)
        uni = [s for s, k in segs if k == "w"]
        pairs = [(a, b) for (a, ka), (b, kb) in zip(segs, segs[1:]) if ka == "w" and kb == "w"]
        return uni, pairs
    if lang in TSHEG_LANGS:
        segs = tsheg_segments(text)
        uni = [s for s, k, _ in segs if k == "w"]
        pairs = [(a, b) for (a, ka, _), (b, kb, gap) in zip(segs, segs[1:]) if ka == kb == "w" and gap in TSHEGS]
        return uni, pairs
    uni, pairs = [], []
    for seg in segments(text):
        ws = _WORD.findall(seg)
        letters = [bool(_HAS_LETTER.search(w)) for w in ws]
        uni.extend(w for w, has in zip(ws, letters) if has)
        pairs.extend((a, b) for a, b, ha, hb in zip(ws, ws[1:], letters, letters[1:]) if ha and hb)
    return uni, pairs
