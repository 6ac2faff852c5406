"""Language codes between stages: one code per query list, whatever named the language.

A worldwide query list has one list per *metadata language*, named by its Wikipedia language
code (``de``, ``ja``, ``zh``, ``cbk_zam``). Four other vocabularies name languages on the way in,
and ``metadata_lang`` maps each onto that one:

- ``lid``: fastText lid.176's labels, which the crawl gives every alt text (``yue`` Cantonese,
  ``cbk`` Chavacano, ...). Variants whose Wikipedias MetaCLIP 2 merges are merged here too:
  Cantonese and Classical Chinese into ``zh``.
- ``wiki``: a Wikipedia's language code or database name (``dewiki``, ``zh_yuewiki``,
  ``be-tarask``), as dumps and pageview files name it. Simple English joins ``en``.
- ``pageviews``: a pageview file's project code (``de``, ``de.m``, ``de.wikipedia``,
  ``ja.m.wikipedia``); other projects (``de.b`` Wikibooks, ``commons.m``) are no language.
- ``wordnet``: a WN-LMF lexicon's ``language`` attribute: BCP 47, or ISO 639-3 in older Open
  Multilingual WordNet releases (``arb``, ``cmn``, ``zsm``, ``nob``).

``NO_SPACE``: the languages written without spaces between words (MetaCLIP 2's list, plus
Dzongkha's script sharing Tibetan's). Matching cannot ask for a space beside a character of
those scripts (``needs_boundary``), and their bigrams are joined without a space.
"""

import functools
import re

NO_SPACE = frozenset({"bo", "dz", "ja", "km", "lo", "my", "th", "zh"})

# Codes that differ between vocabularies; any other code maps to itself (lower case, "-" as "_").
_MERGED = {"simple": "en", "zh_yue": "zh", "zh_classical": "zh", "yue": "zh", "lzh": "zh",
           "be_tarask": "be", "be_x_old": "be", "nds_nl": "nds", "cbk": "cbk_zam",
           "iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro"}
# WN-LMF lexicons of the Open Multilingual WordNet name languages by ISO 639-3 (some releases)
# or BCP 47 with a region or script (all releases): the Wikipedia codes of those.
_WORDNET = {"arb": "ar", "cmn": "zh", "qcn": "zh", "zsm": "ms", "ind": "id", "nob": "no", "nno": "nn",
            "als": "sq", "ell": "el", "eng": "en", "fin": "fi", "fra": "fr", "deu": "de", "spa": "es",
            "jpn": "ja", "tha": "th", "ita": "it", "por": "pt", "pol": "pl", "nld": "nl", "swe": "sv",
            "dan": "da", "cat": "ca", "eus": "eu", "glg": "gl", "heb": "he", "hrv": "hr", "isl": "is",
            "lit": "lt", "slk": "sk", "slv": "sl", "bul": "bg", "ron": "ro", "rus": "ru", "kor": "ko"}
_PROJECT = re.compile(r"^([a-z][a-z0-9_-]*?)(?:\.m)?(?:\.(wikipedia|[a-z]))?$")
_CODE = re.compile(r"^[a-z][a-z0-9_]{1,31}$")


def _normal(code):
    return code.strip().lower().replace("-", "_")


def metadata_lang(code, vocabulary="wiki"):
    """The metadata language of ``code`` in ``vocabulary`` (lid, wiki, pageviews, wordnet), or
    None when the code names no language (another Wikimedia project, a malformed code)."""
    if not isinstance(code, str):
        return None
    code = _normal(code)
    if vocabulary == "pageviews":
        m = _PROJECT.match(code)
        if not m or m.group(2) not in (None, "wikipedia"):
            return None  # de.b (Wikibooks), de.d (Wiktionary), ...
        code = m.group(1)
        if code in ("commons", "meta", "species", "incubator", "wikidata", "www", "mediawiki", "outreach"):
            return None
    elif vocabulary == "wordnet":
        code = code.split("_")[0] if code.split("_")[0] in _WORDNET or len(code.split("_")[0]) == 2 else code
        code = _WORDNET.get(code, code)
    elif vocabulary == "wiki":
        code = code[:-4] if code.endswith("wiki") and len(code) > 4 else code
    elif vocabulary != "lid":
        raise ValueError(f"unknown language vocabulary {vocabulary!r}")
    code = _MERGED.get(code, code)
    return code if _CODE.match(code) else None


@functools.lru_cache(maxsize=4096)
def lid_language(label):
    """The metadata language of a lid.176 label, "und" for a label that names none (cached: it
    runs for every identified link)."""
    return metadata_lang(label, "lid") or "und"


def is_no_space_char(ch):
    """True for a character of a script written without spaces between words (Han, kana,
    Thai, Lao, Myanmar, Khmer, Tibetan) or of their punctuation (CJK full stops and brackets)."""
    o = ord(ch)
    if o < 0x0E00:  # Latin, Greek, Cyrillic, Arabic, Indic...: the common case, answered first
        return False
    return (0x2E80 <= o <= 0x2FDF or 0x2FF0 <= o <= 0x2FFF  # radicals, ideographic description
            or 0x3001 <= o <= 0x302D or 0x3030 <= o <= 0x303F  # CJK punctuation (not its space, Hangul marks)
            or 0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF  # hiragana, katakana
            or 0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF
            or 0xFF01 <= o <= 0xFF9F or 0xFFE0 <= o <= 0xFFEE  # fullwidth forms, halfwidth kana (not Hangul)
            or 0x1AFF0 <= o <= 0x1B16F  # kana supplements and extensions
            or 0x20000 <= o <= 0x3134F  # CJK extensions B-G
            or 0x0E00 <= o <= 0x0EFF  # Thai, Lao
            or 0x0F00 <= o <= 0x0FFF  # Tibetan
            or 0x1000 <= o <= 0x109F or 0xAA60 <= o <= 0xAA7F or 0xA9E0 <= o <= 0xA9FF  # Myanmar
            or 0x1780 <= o <= 0x17FF or 0x19E0 <= o <= 0x19FF)  # Khmer


def needs_boundary(ch):
    """Whether matching asks for a space (or wrapped punctuation) beside this end character of
    an entry: yes for scripts written with spaces, no for those without (``is_no_space_char``)."""
    return not is_no_space_char(ch)
