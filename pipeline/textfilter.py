"""The crawl's text stage, a plain object: image links in, curated pairs or drop reasons out.

For each link: URL check, caption cleaning (``captions``), language identification (lid.176)
and query matching (``matching``). ``filter_batch`` works a batch at a time: each distinct raw
text of the batch is judged once, lid.176 runs over the batch's new texts in one call, and the
outcome of the last ``cache_size`` distinct raw texts is remembered (web alt texts repeat a
lot: site boilerplate, product names, templated captions). Matched queries are ids into
``self.queries`` (the query list, sorted), in increasing order.
"""

import re

from clipforge.pipeline import balance, captions
from clipforge.pipeline.langid import LanguageID
from clipforge.pipeline.matching import Matcher

# An absolute http(s) URL with a host and no whitespace; anything else is dropped.
_HTTP = re.compile(r"^https?:", re.IGNORECASE)
_URL = re.compile(r"^https?://(?:[^\s/?#@]*@)?(?:[^\s/?#:@\[\]]+|\[[0-9A-Fa-f:.]+\])(?::\d*)?(?:[/?#]\S*)?$",
                  re.IGNORECASE)


def url_problem(url):
    """None for a usable image URL, else the drop reason."""
    if _URL.match(url):
        return None
    return "bad_url_scheme" if not _HTTP.match(url) else "invalid_url"


class TextFilter:
    def __init__(self, queries, langs=("en",), min_lang_score=0.0, min_chars=captions.MIN_CHARS,
                 max_chars=captions.MAX_CHARS, cache_size=200_000):
        self.langs, self.min_lang_score = frozenset(langs), min_lang_score
        self.min_chars, self.max_chars = min_chars, max_chars
        self.lid = LanguageID()
        self.matcher = Matcher(queries)
        self.queries = self.matcher.queries
        self.cache, self.cache_size = {}, cache_size

    def judge_texts(self, raws):
        """{raw text: outcome} for distinct raw texts, where outcome is ``(None, reason)`` for a
        dropped text and ``(text, lang, score, query ids)`` otherwise (ids empty: no match;
        None: not a wanted language)."""
        out, todo, cleaned = {}, [], []
        for raw in raws:
            text, reason = captions.clean(raw, self.min_chars, self.max_chars)
            if reason:
                out[raw] = (None, reason)
            else:
                todo.append(raw)
                cleaned.append(text)
        if cleaned:
            match = self.matcher.match_ids
            langs, min_score = self.langs, self.min_lang_score
            for raw, text, (lang, score) in zip(todo, cleaned, self.lid.predict_many(cleaned)):
                wanted = (not langs or lang in langs) and score >= min_score
                out[raw] = (text, lang, score, match(text) if wanted else None)
        return out

    def filter_batch(self, urls, texts):
        """One entry per link: a drop reason (str) or ``(uid, text, lang, score, query ids)``."""
        cache = self.cache
        url_ok = _URL.match
        ok = [url_ok(url) is not None for url in urls]
        known, new = {}, []
        for raw, good in zip(texts, ok):
            if not good or raw in known:
                continue
            hit = cache.get(raw)
            if hit is None:
                known[raw] = None
                new.append(raw)
            else:
                known[raw] = hit
        if new:
            judged = self.judge_texts(new)
            known.update(judged)
            if len(cache) + len(judged) > self.cache_size:
                cache.clear()
            cache.update(judged)
        out = []
        uid = balance.uid
        for url, raw, good in zip(urls, texts, ok):
            if not good:
                out.append(url_problem(url))
                continue
            k = known[raw]
            if k[0] is None:
                out.append(k[1])
            elif k[3] is None:
                out.append("lang_not_wanted")
            elif not k[3]:
                out.append("no_query_match")
            else:
                out.append((uid(url, k[0]), k[0], k[1], k[2], k[3]))
        return out

    def __call__(self, c):
        """One candidate dict -> a curated pair dict (queries as strings), or a drop reason."""
        got = self.filter_batch([c["url"]], [c["text"]])[0]
        if isinstance(got, str):
            return got
        pair_uid, text, lang, score, ids = got
        return {"uid": pair_uid, "url": c["url"], "text": text, "page_url": c["page_url"], "lang": lang,
                "lang_score": score, "queries": [self.queries[i] for i in ids], "input_format": c["input_format"],
                "source_file": c["source_file"]}
