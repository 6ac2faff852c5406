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
