"""The crawl's text stage, a plain object: image links in, curated pairs or drop reasons out.

For each link: URL check, caption cleaning (``captions``; Arrow compute for plain ASCII texts),
language identification (lid.176) and query matching (``matching``). ``filter_arrow`` works on
a batch of links as Arrow columns: the URL check runs vectorised, each distinct raw text of the
batch is judged once (lid.176 over the batch's new texts in one call), and the outcome of the
last ``cache_size`` distinct raw texts is remembered (web alt texts repeat a lot: site
boilerplate, product names, templated captions). Only the pair id (a hash) is computed link by
link, and only for links that are kept. Matched queries are ids into ``self.queries`` (the
query list, sorted), in increasing order.

Worldwide (``lang_queries``: one list per metadata language), lid.176 runs on every cleaned
text first; its label, mapped to a metadata language (``schemas.languages.metadata_lang``),
selects that language's list, and the ids are into the concatenation of the lists in language
order (``matching.WorldMatcher``). A text of a language without a list is
``lang_without_list``.
"""

import hashlib
import re
from urllib.parse import urlsplit

import idna
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clipforge import limits
from clipforge.pipeline import captions
from clipforge.pipeline.langid import LanguageID
from clipforge.pipeline.matching import Matcher, WorldMatcher
from clipforge.schemas import pairs as pair_ids

# An absolute http(s) URL with a host and no whitespace; anything else is dropped. Written once
# for Python's re and once for RE2 (pyarrow): on ASCII text they accept exactly the same strings
# (the white space class is spelled out: RE2's \s lacks \v and \x1c-\x1f, Python's has them).
# A host has no control characters and at most limits.MAX_HOST_CHARS characters; a URL at most
# limits.MAX_URL_CHARS. A host that is not ASCII must be a valid internationalised name (IDNA,
# UTS #46), the form a browser would resolve.
_WS = r"\t\n\x0b\x0c\r\x1c-\x1f "
_HOST_MAX = limits.MAX_HOST_CHARS
_URL_ASCII = (rf"^(?i:https?)://(?:[^{_WS}/?#@]*@)?(?:[^{_WS}\x00-\x08\x0e-\x1b\x7f/?#:@\[\]]{{1,{_HOST_MAX}}}"
              rf"|\[[0-9A-Fa-f:.]{{1,{_HOST_MAX}}}\])(?::[0-9]*)?(?:[/?#][^{_WS}]*)?$")
_URL = re.compile(rf"^https?://(?:[^\s/?#@]*@)?(?P<host>[^\s\x00-\x08\x0e-\x1b\x7f/?#:@\[\]]{{1,{_HOST_MAX}}}"
                  rf"|\[[0-9A-Fa-f:.]{{1,{_HOST_MAX}}}\])(?::\d*)?(?:[/?#]\S*)?\Z", re.IGNORECASE)
_HTTP = re.compile(r"^https?:", re.IGNORECASE)

# Outcome codes of a link, in funnel order.
OK = 0
REASONS = ("kept", "bad_url_scheme", "invalid_url", "no_text", "text_too_short", "text_too_long", "text_number",
           "text_file_name", "text_boilerplate", "lang_not_wanted", "lang_without_list", "no_query_match")
_CODE = {r: i for i, r in enumerate(REASONS)}


def url_problem(url):
    """None for a usable image URL, else the drop reason."""
    m = _URL.match(url) if len(url) <= limits.MAX_URL_CHARS else None
    if m:
        host = m.group("host")
        if host.isascii():
            return None
        try:
            idna.encode(host.rstrip("."), uts46=True)
            urlsplit(url)          # what pairs.uid parses (NFKC check of the netloc)
            return None
        except (idna.IDNAError, UnicodeError, ValueError):
            return "invalid_url"
    return "bad_url_scheme" if not _HTTP.match(url) else "invalid_url"


def url_codes(urls):
    """Outcome code of the URL check for each URL of an Arrow string array (null: invalid)."""
    urls = pc.fill_null(urls, "")
    ascii_ = pc.string_is_ascii(urls).to_numpy(zero_copy_only=False)
    ok = pc.match_substring_regex(urls, _URL_ASCII).to_numpy(zero_copy_only=False)
    ok &= pc.less_equal(pc.utf8_length(urls), limits.MAX_URL_CHARS).to_numpy(zero_copy_only=False)
    codes = np.where(ok, OK, -1).astype(np.int8)
    for i in np.flatnonzero(~ok | ~ascii_):  # failures get their reason; non-ASCII URLs, Python's check
        problem = url_problem(urls[i].as_py())
        codes[i] = OK if problem is None else _CODE[problem]
    return codes


def _cache_key(raw):
    if len(raw) <= 64:
        return raw
    return hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class TextFilter:
    def __init__(self, queries, langs=("en",), min_lang_score=0.0, min_chars=captions.MIN_CHARS,
                 max_chars=captions.MAX_CHARS, cache_size=200_000, identify_later=False, lang_queries=None):
        """``identify_later``: when every language is wanted (no ``langs``, no minimum score), the
        language decides nothing here, so leave it unset (lang and score None) for the caller to
        identify on the pairs it keeps (the crawl does so after balancing: ``LanguageID.predict_arrow``).
        ``lang_queries``: {metadata language: queries}, a worldwide list (``queries`` unused);
        ``langs`` then names metadata languages."""
        self.langs, self.min_lang_score = frozenset(langs), min_lang_score
        self.world = WorldMatcher(lang_queries) if lang_queries is not None else None
        self.identify_later = identify_later and not langs and min_lang_score <= 0 and self.world is None
        self.min_chars, self.max_chars = min_chars, max_chars
        self.lid = LanguageID()
        self.matcher = Matcher(queries) if self.world is None else None
        self.queries = self.matcher.queries if self.world is None else self.world.names
        self.cache, self.cache_size = {}, cache_size

    def judge_texts(self, raws):
        """{raw text: outcome} for distinct raw texts: ``(code, text, lang, score, query ids)``,
        where code is OK or the reason the text cannot give a pair."""
        out, todo, cleaned = {}, [], []
        for raw, (text, reason) in zip(raws, captions.clean_many(raws, self.min_chars, self.max_chars)):
            if reason:
                out[raw] = (_CODE[reason], None, None, None, None)
            else:
                todo.append(raw)
                cleaned.append(text)
        if not cleaned:
            return out
        if self.world is not None:
            return self._judge_worldwide(todo, cleaned, out)
        match = self.matcher.match_ids
        langs, min_score = self.langs, self.min_lang_score
        not_wanted, no_match = _CODE["lang_not_wanted"], _CODE["no_query_match"]
        if not langs and min_score <= 0:
            # Every language is wanted, so the language only matters for texts that match: lid.176
            # (most of the cost) runs on those alone, and the outcomes are the same.
            ids = [match(text) for text in cleaned]
            for raw, text, i in zip(todo, cleaned, ids):
                if not i:
                    out[raw] = (no_match, text, None, None, i)
            matched = [(r, t, i) for r, t, i in zip(todo, cleaned, ids) if i]
            if self.identify_later:
                for raw, text, i in matched:
                    out[raw] = (OK, text, None, None, i)
                return out
            for (raw, text, i), (lang, score) in zip(matched, self.lid.predict_many([t for _, t, _ in matched])):
                out[raw] = (OK, text, lang, score, i)
            return out
        for raw, text, (lang, score) in zip(todo, cleaned, self.lid.predict_many(cleaned)):
            if (langs and lang not in langs) or score < min_score:
                out[raw] = (not_wanted, text, lang, score, None)
            else:
                ids = match(text)
                out[raw] = (OK if ids else no_match, text, lang, score, ids)
        return out

    def _judge_worldwide(self, todo, cleaned, out):
        """Outcomes of cleaned texts against the list of each one's language."""
        langs, min_score, world = self.langs, self.min_lang_score, self.world
        not_wanted, no_list, no_match = _CODE["lang_not_wanted"], _CODE["lang_without_list"], _CODE["no_query_match"]
        for raw, text, (lang, score) in zip(todo, cleaned, self.lid.predict_many(cleaned)):
            meta = world.lang_of_label(lang)
            if (langs and meta not in langs) or score < min_score:
                out[raw] = (not_wanted, text, lang, score, None)
            elif meta not in world.lists:
                out[raw] = (no_list, text, lang, score, None)
            else:
                ids = world.match_ids(meta, text)
                out[raw] = (OK if ids else no_match, text, lang, score, ids)
        return out

    def _outcomes(self, raws):
        """Outcomes of distinct raw texts, from the cache or judged now (and remembered).

        The cache holds only texts that pass the raw length check (no longer than
        ``captions.RAW_FACTOR * max_chars``), keyed by the text itself when short and by a
        16-byte hash otherwise: a page of 10 MB alts leaves nothing behind."""
        cache = self.cache
        keys = [raw if len(raw) <= 64 else _cache_key(raw) for raw in raws]
        got = [cache.get(k) for k in keys]
        new = [(raw, k) for raw, k, g in zip(raws, keys, got) if g is None]
        if new:
            judged = self.judge_texts([raw for raw, _ in new])
            got = [g if g is not None else judged[raw] for raw, g in zip(raws, got)]
            longest = captions.RAW_FACTOR * self.max_chars
            remember = {k: judged[raw] for raw, k in new if len(raw) <= longest}
            if len(cache) + len(remember) > self.cache_size:
                cache.clear()
            cache.update(remember)
        return got

    def filter_arrow(self, urls, texts, by_lang=None):
        """A batch of links as Arrow string arrays -> (outcome code per link, and for the kept
        links, in order: their indices and Arrow arrays uid, text, lang, lang_score, qids).
        ``by_lang``: a Counter that gets, for every link whose text was identified, one count
        under (metadata language, outcome code)."""
        codes = url_codes(urls)
        texts = pc.fill_null(texts, "")
        encoded = pc.dictionary_encode(texts).combine_chunks() if isinstance(texts, pa.ChunkedArray) \
            else pc.dictionary_encode(texts)
        index = encoded.indices.to_numpy(zero_copy_only=False)
        distinct = encoded.dictionary.to_pylist()
        used = np.zeros(len(distinct), dtype=bool)
        used[index[codes == OK]] = True  # texts of links whose URL passed
        todo = np.flatnonzero(used)
        outcomes = self._outcomes([distinct[i] for i in todo])
        text_code = np.full(len(distinct), OK, dtype=np.int8)
        text_code[todo] = [o[0] for o in outcomes]
        if by_lang is not None and len(todo):
            links = np.bincount(index[codes == OK], minlength=len(distinct))
            lang_of = self.world.lang_of_label if self.world is not None else (lambda label: label)
            for i, o in zip(todo, outcomes):
                if o[2] is not None:
                    by_lang[(lang_of(o[2]), o[0])] += int(links[i])
        codes = np.where(codes == OK, text_code[index], codes)
        kept = np.flatnonzero(codes == OK)
        slot = np.full(len(distinct), -1, dtype=np.int64)
        good = [(i, o) for i, o in zip(todo, outcomes) if o[0] == OK]
        slot[[i for i, _ in good]] = np.arange(len(good))
        rows = slot[index[kept]]
        cleaned = pa.array([o[1] for _, o in good], pa.string()).take(rows)
        langs = pa.array([o[2] for _, o in good], pa.string()).take(rows)
        scores = pa.array([o[3] for _, o in good], pa.float32()).take(rows)
        qids = pa.array([o[4] for _, o in good], pa.list_(pa.int32())).take(rows)
        uids = pa.array(pair_ids.uids_arrow(urls.take(kept), cleaned), pa.string())
        return codes, kept, uids, cleaned, langs, scores, qids

    def filter_batch(self, urls, texts):
        """Lists of URLs and raw texts -> one entry per link: a drop reason (str) or
        ``(uid, text, lang, score, query ids)``."""
        codes, kept, uids, cleaned, langs, scores, qids = self.filter_arrow(pa.array(urls, pa.string()),
                                                                            pa.array(texts, pa.string()))
        out = [REASONS[c] for c in codes]
        for k, u, t, la, s, q in zip(kept, uids.to_pylist(), cleaned.to_pylist(), langs.to_pylist(),
                                     scores.to_pylist(), qids.to_pylist()):
            out[k] = (u, t, la, s, q)
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
