"""Find every query contained in a caption, with MetaCLIP's semantics, by Aho–Corasick.

Semantics (MetaCLIP's substring matching): matching is case-sensitive; the caption is padded
with one space on each side, each of the characters ``, . ; : ? ! ` `` (comma, full stop,
semicolon, colon, question mark, exclamation mark, backtick) is wrapped in spaces, and tab,
newline and carriage return become spaces; a query ``q`` matches when ``" " + q + " "``
occurs in that text. So ``red`` matches ``"a red, round thing"`` but not ``"reddish"`` nor
``"Red"``; quotes, brackets, apostrophes and hyphens are not spaced (``"red"`` in double
quotes does not match ``red``), exactly as in MetaCLIP.

Scripts written without spaces (Han, kana, Thai, Lao, Myanmar, Khmer, Tibetan:
``schemas.languages.is_no_space_char``) cannot ask for a space: an end of a query whose
character is of those scripts matches without one, as MetaCLIP 2 does. So ``東京`` matches in
``"東京タワーの夜景"``, ``iPhone`` in a Japanese text still needs a space (or wrapped punctuation)
on both sides, and ``タワー 2`` needs one after the ``2`` only. Queries of scripts written with
spaces match exactly as before.

The automaton is built once per worker from the query list.
"""

from operator import itemgetter

import ahocorasick

from clipforge.schemas.languages import needs_boundary

_second = itemgetter(1)

WRAPPED = ",.;:?!`"
SPACED = "\t\n\r"


def spaced(text):
    """The caption as matching sees it. (A chain of str.replace beats str.translate with a
    table of strings here: each replace is one C pass, and most characters are absent.)"""
    text = f" {text} "
    for c in WRAPPED:
        if c in text:
            text = text.replace(c, f" {c} ")
    for c in SPACED:
        if c in text:
            text = text.replace(c, " ")
    return text


def pattern(query):
    """What ``query`` must occur as in the spaced caption: a space before and after it, except
    beside an end character of a script written without spaces."""
    return (" " if needs_boundary(query[0]) else "") + query + (" " if needs_boundary(query[-1]) else "")


class Matcher:
    """The automaton of a query list. Queries are numbered in sorted order (``self.queries``),
    so sorted ids are the queries in sorted order; ``offset`` is added to every id (a language's
    list inside a worldwide list's id space)."""

    def __init__(self, queries, offset=0):
        self.queries = sorted(set(queries))
        self.offset = offset
        self.automaton = ahocorasick.Automaton()
        for i, q in enumerate(self.queries):
            self.automaton.add_word(pattern(q), i + offset)
        self.size = len(self.queries)
        if self.size:
            self.automaton.make_automaton()

    def match_ids(self, text):
        """Sorted list of the ids of the distinct queries contained in ``text``."""
        if not self.size:
            return []
        found = set(map(_second, self.automaton.iter(spaced(text))))
        return sorted(found) if len(found) > 1 else list(found)

    def match(self, text):
        """Sorted list of the distinct queries contained in ``text``."""
        return [self.queries[i - self.offset] for i in self.match_ids(text)]


class WorldMatcher:
    """A worldwide list: one ``Matcher`` per metadata language, built when that language's first
    text comes (a worker holds the automatons of the languages it meets). Ids run over the lists
    concatenated in language order (``names``, ``langs_of_ids``)."""

    def __init__(self, lang_queries):
        self.lists = {lang: sorted(set(qs)) for lang, qs in sorted(lang_queries.items()) if qs}
        self.offsets, n = {}, 0
        for lang, qs in self.lists.items():
            self.offsets[lang] = n
            n += len(qs)
        self.size = n
        self.names = [q for qs in self.lists.values() for q in qs]
        self._matchers = {}

    @staticmethod
    def lang_of_label(label):
        """The metadata language of a lid.176 label."""
        from clipforge.schemas.languages import lid_language

        return lid_language(label)

    def langs_of_ids(self):
        """The language of every id, as a list."""
        return [lang for lang, qs in self.lists.items() for _ in qs]

    def match_ids(self, lang, text):
        m = self._matchers.get(lang)
        if m is None:
            m = self._matchers[lang] = Matcher(self.lists[lang], self.offsets[lang])
        return m.match_ids(text)
