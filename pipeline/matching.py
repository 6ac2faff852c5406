"""Find every query contained in a caption, with MetaCLIP's semantics, by Aho–Corasick.

Semantics (MetaCLIP's substring matching): matching is case-sensitive; the caption is padded
with one space on each side, each of the characters ``, . ; : ? ! ` `` (comma, full stop,
semicolon, colon, question mark, exclamation mark, backtick) is wrapped in spaces, and tab,
newline and carriage return become spaces; a query ``q`` matches when ``" " + q + " "``
occurs in that text. So ``red`` matches ``"a red, round thing"`` but not ``"reddish"`` nor
``"Red"``; quotes, brackets, apostrophes and hyphens are not spaced (``"red"`` in double
quotes does not match ``red``), exactly as in MetaCLIP.

The automaton is built once per worker from the query list.
"""

from operator import itemgetter

import ahocorasick

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


class Matcher:
    """The automaton of a query list. Queries are numbered in sorted order (``self.queries``),
    so sorted ids are the queries in sorted order."""

    def __init__(self, queries):
        self.queries = sorted(set(queries))
        self.automaton = ahocorasick.Automaton()
        for i, q in enumerate(self.queries):
            self.automaton.add_word(f" {q} ", i)
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
        return [self.queries[i] for i in self.match_ids(text)]
