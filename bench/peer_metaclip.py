"""The peer for the text-stage benchmark: matching as MetaCLIP's scripts do it (pad the text,
wrap , . ; : ? ! ` in spaces with str.replace, turn tabs and newlines into spaces, iterate a
pyahocorasick automaton of " entry " strings and collect entry ids in a set), plus fastText
lid.176 called once per text, as a straightforward English-only filter would."""

import ahocorasick

from clipforge.pipeline.langid import LanguageID


def spacing(text):
    spaced = f" {text} "
    for p in (",", ".", ";", ":", "?", "!", "`"):
        spaced = spaced.replace(p, f" {p} ")
    for c in ("\t", "\n", "\r"):
        spaced = spaced.replace(c, " ")
    return spaced


class MetaCLIPStyle:
    def __init__(self, queries):
        self.queries = queries
        self.automaton = ahocorasick.Automaton()
        for i, q in enumerate(queries):
            self.automaton.add_word(f" {q} ", (i, q))
        self.automaton.make_automaton()
        self.lid = LanguageID()

    def match(self, text):
        ids = set()
        for _, (i, _q) in self.automaton.iter(spacing(text)):
            ids.add(i)
        return list(ids)

    def __call__(self, text):
        lang, score = self.lid.predict(text)
        return (lang, self.match(text)) if lang == "en" else None

    def batch(self, texts):
        """The same for a list of texts, with one lid.176 call for the list."""
        return [(lang, self.match(t)) if lang == "en" else None
                for t, (lang, _) in zip(texts, self.lid.predict_many(texts))]
