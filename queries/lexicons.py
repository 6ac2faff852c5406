"""Readers for the small sources of the query list: WordNet, pageviews, an existing list.

- WordNet: Open English WordNet's YAML sources (``members`` of each synset; a file is parsed
  whole, so one larger than ``MAX_WORDNET_YAML_BYTES`` is refused), WN-LMF XML
  (``Lemma/@writtenForm`` of each lexical entry, plain or compressed, streamed through expat:
  memory stays flat, a file that declares entities, nests too deep or inflates past its
  decompression budget is refused), or NLTK's WordNet corpus when it is installed. Lemmas keep
  their case; underscores become spaces. Every error is a one-line LexiconError.
- Pageviews: Wikimedia's hourly files, one ``domain_code page_title views bytes`` per line.
- MetaCLIP's ``metadata.json``: a JSON list of strings.
"""

import json
import xml.parsers.expat as expat

import yaml

from clipforge.errors import UserError
from clipforge.limits import MAX_METADATA_JSON_BYTES, MAX_WORDNET_YAML_BYTES, MAX_XML_DEPTH, MAX_XML_TOKEN_BYTES
from clipforge.queries.inflate import CHUNK, READ_ERRORS, OverBudget, compression, open_input

try:
    _Loader = yaml.CSafeLoader
except AttributeError:  # libyaml missing: the pure-Python loader is slower, same result
    _Loader = yaml.SafeLoader


class LexiconError(UserError, ValueError):
    """A WordNet or metadata file that cannot be read as its format."""


_COMPRESSED = (".gz", ".bz2", ".xz", ".lzma", ".zst", ".deflate")


def wordnet_format(path):
    name = path.lower()
    if name.endswith((".yaml", ".yml")):
        return "oewn-yaml"
    if name.endswith(".xml") or (name.endswith(_COMPRESSED) and name.rsplit(".", 1)[0].endswith(".xml")):
        return "wn-lmf"
    if name == "nltk":
        return "nltk"
    raise LexiconError(f"{path}: unknown WordNet format (expected .yaml/.yml, .xml/.xml.gz, or 'nltk')")


def _lemma(s):
    return s.replace("_", " ") if isinstance(s, str) else None


def oewn_yaml_lemmas(data, source="wordnet.yaml"):
    """Lemmas of one Open English WordNet YAML lexicographer file (bytes)."""
    try:
        doc = yaml.load(data, Loader=_Loader)
    except yaml.YAMLError as e:
        raise LexiconError(f"{source}: not valid YAML ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    if not isinstance(doc, dict):
        raise LexiconError(f"{source}: not an Open English WordNet YAML file (top level is not a mapping)")
    for key, synset in doc.items():
        if not isinstance(synset, dict) or "members" not in synset:
            if isinstance(synset, dict) and "sense" in synset:  # entries-*.yaml: lemma -> pos -> senses
                yield _lemma(key)
                continue
            raise LexiconError(f"{source}: entry {str(key)[:200]!r} has no members (not a synset file)")
        members = synset["members"] or ()
        if not isinstance(members, list):
            raise LexiconError(f"{source}: entry {str(key)[:200]!r} has members that are not a list")
        for m in members:
            yield _lemma(m)


class _Refused(Exception):
    pass


def wn_lmf_lemmas(fileobj, source="wordnet.xml", with_lang=False):
    """Lemmas of a WN-LMF XML lexicon read from a binary file object, streamed through expat
    (only Lexicon and Lemma elements are looked at, nothing is kept). With ``with_lang``:
    (language, lemma) pairs, the language being the enclosing Lexicon's ``language`` attribute
    as written (None when it has none). Entity declarations, nesting past MAX_XML_DEPTH and
    tokens longer than MAX_XML_TOKEN_BYTES are refused."""
    parser = expat.ParserCreate(namespace_separator="}")
    found, state = [], {"depth": 0, "mark": 0, "lang": None}

    def start(name, attrs):
        state["mark"] = parser.CurrentByteIndex
        state["depth"] += 1
        if state["depth"] > MAX_XML_DEPTH:
            raise _Refused(f"elements nest deeper than {MAX_XML_DEPTH}")
        local = name.rsplit("}", 1)[-1]
        if local == "Lemma":
            lemma = _lemma(attrs.get("writtenForm"))
            found.append((state["lang"], lemma) if with_lang else lemma)
        elif local in ("Lexicon", "LexiconExtension"):
            state["lang"] = attrs.get("language")

    def end(name):
        state["mark"] = parser.CurrentByteIndex
        state["depth"] -= 1

    def other(*_):
        state["mark"] = parser.CurrentByteIndex

    def entity(*_):
        raise _Refused("declares an XML entity")

    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = parser.CommentHandler = parser.ProcessingInstructionHandler = other
    parser.EntityDeclHandler = entity
    parser.buffer_text = True
    fed = 0
    try:
        while True:
            chunk = fileobj.read(CHUNK)
            parser.Parse(chunk, not chunk)
            yield from found
            found.clear()
            if not chunk:
                return
            fed += len(chunk)
            if fed - state["mark"] > MAX_XML_TOKEN_BYTES:
                raise _Refused(f"an XML tag or comment runs past {MAX_XML_TOKEN_BYTES:,} bytes")
    except _Refused as e:
        raise LexiconError(f"{source}: refused as WN-LMF XML ({e})") from None
    except OverBudget as e:
        raise LexiconError(f"{source}: {e}") from None
    except (expat.ExpatError, *READ_ERRORS) as e:
        raise LexiconError(f"{source}: not readable as WN-LMF XML ({type(e).__name__}: {e})") from None


def nltk_lemmas():
    try:
        from nltk.corpus import wordnet as wn

        synsets = wn.all_synsets()
        first = next(synsets)
    except ImportError:
        raise LexiconError("--wordnet nltk: the nltk package is not installed (pip install nltk)") from None
    except LookupError:
        raise LexiconError("--wordnet nltk: NLTK's wordnet corpus is not downloaded "
                           "(python -m nltk.downloader wordnet)") from None
    for synset in (first, *synsets):
        for name in synset.lemma_names():
            yield _lemma(name)


def wordnet_lemmas(path, with_lang=False):
    """Lemmas of one WordNet source (a file name or URL, or "nltk"), by its format. With
    ``with_lang``: (language, lemma) pairs, the language as the source names it (WN-LMF: each
    Lexicon's ``language`` attribute; Open English WordNet's YAML and NLTK's: "en")."""
    fmt = wordnet_format(path)
    if fmt == "nltk":
        yield from ((("en", x) for x in nltk_lemmas()) if with_lang else nltk_lemmas())
        return
    kind = compression(path)
    if kind == "gz" and _head(path, 2) != b"\x1f\x8b":
        kind = ""  # a .gz name on a file that is not gzip: read as it is
    try:
        stream, _ = open_input(path, kind)
    except READ_ERRORS as e:
        raise LexiconError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    with stream:
        if fmt == "wn-lmf":
            yield from wn_lmf_lemmas(stream, path, with_lang)
            return
        try:
            data = stream.read(MAX_WORDNET_YAML_BYTES + 1)
        except OverBudget as e:
            raise LexiconError(f"{path}: {e}") from None
        except READ_ERRORS as e:
            raise LexiconError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    if len(data) > MAX_WORDNET_YAML_BYTES:
        raise LexiconError(f"{path}: larger than {MAX_WORDNET_YAML_BYTES:,} bytes (refused: an Open English "
                           "WordNet YAML source file is a few MB; it is parsed whole)")
    lemmas = oewn_yaml_lemmas(data, path)
    yield from ((("en", x) for x in lemmas) if with_lang else lemmas)


def _head(path, n):
    try:
        stream, _ = open_input(path, "")
        with stream:
            return stream.read(n)
    except READ_ERRORS as e:
        raise LexiconError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None


def pageview_fields(line):
    """(domain code, title, views) of a pageview line; raises ValueError if malformed."""
    parts = line.rstrip("\r\n").split(" ")
    if len(parts) != 4:
        raise ValueError(f"expected 4 space-separated fields, got {len(parts)}")
    return parts[0], parts[1], int(parts[2])


def parse_pageview_line(line, domains):
    """(title, views) for a line of an English Wikipedia domain, else None; raises ValueError if malformed."""
    parts = line.rstrip("\r\n").split(" ")
    if len(parts) != 4:
        raise ValueError(f"expected 4 space-separated fields, got {len(parts)}")
    domain, title, views = parts[0], parts[1], int(parts[2])
    if domain not in domains:
        return None
    return title, views


def metadata_entries(data, source="metadata.json"):
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise LexiconError(f"{source}: not valid JSON ({e})") from None
    except RecursionError:
        raise LexiconError(f"{source}: not a metadata.json (JSON nested too deeply)") from None
    if not isinstance(doc, list) or not all(isinstance(x, str) for x in doc):
        raise LexiconError(f"{source}: expected a JSON list of strings (MetaCLIP's metadata.json)")
    return doc


def read_metadata_file(path):
    """The entries of a metadata.json file (a name or URL), read up to MAX_METADATA_JSON_BYTES."""
    try:
        stream, _ = open_input(path, "")
        with stream:
            data = stream.read(MAX_METADATA_JSON_BYTES + 1)
    except READ_ERRORS as e:
        raise LexiconError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    if len(data) > MAX_METADATA_JSON_BYTES:
        raise LexiconError(f"{path}: larger than {MAX_METADATA_JSON_BYTES:,} bytes (refused: MetaCLIP's list of "
                           "500,000 entries is ~10 MB)")
    return metadata_entries(data, path)
