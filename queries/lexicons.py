"""Readers for the small sources of the query list: WordNet, pageviews, an existing list.

- WordNet: Open English WordNet's YAML sources (``members`` of each synset), WN-LMF XML
  (``Lemma/@writtenForm`` of each lexical entry, plain or gzip), or NLTK's WordNet corpus
  when it is installed. Lemmas keep their case; underscores become spaces.
- Pageviews: Wikimedia's hourly files, one ``domain_code page_title views bytes`` per line.
- MetaCLIP's ``metadata.json``: a JSON list of strings.
"""

import gzip
import io
import json
import xml.etree.ElementTree as ET

import yaml

try:
    _Loader = yaml.CSafeLoader
except AttributeError:  # libyaml missing: the pure-Python loader is slower, same result
    _Loader = yaml.SafeLoader


class LexiconError(ValueError):
    """A WordNet or metadata file that cannot be read as its format."""


def wordnet_format(path):
    name = path.lower()
    if name.endswith((".yaml", ".yml")):
        return "oewn-yaml"
    if name.endswith((".xml", ".xml.gz")):
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
        raise LexiconError(f"{source}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise LexiconError(f"{source}: not an Open English WordNet YAML file (top level is not a mapping)")
    for key, synset in doc.items():
        if not isinstance(synset, dict) or "members" not in synset:
            if isinstance(synset, dict) and "sense" in synset:  # entries-*.yaml: lemma -> pos -> senses
                yield _lemma(key)
                continue
            raise LexiconError(f"{source}: entry {key!r} has no members (not a synset file)")
        for m in synset["members"] or ():
            yield _lemma(m)


def wn_lmf_lemmas(fileobj, source="wordnet.xml"):
    """Lemmas of a WN-LMF XML lexicon, streamed."""
    try:
        for _, elem in ET.iterparse(fileobj, events=("end",)):
            tag = elem.tag.rsplit("}", 1)[-1]
            if tag == "Lemma":
                yield _lemma(elem.get("writtenForm"))
            elif tag == "LexicalEntry":
                elem.clear()
    except (ET.ParseError, EOFError, OSError) as e:
        raise LexiconError(f"{source}: not readable as WN-LMF XML ({e})") from None


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


def wordnet_lemmas(path, fileobj=None):
    """Lemmas of one WordNet source, by its format. ``fileobj`` (binary) if already open."""
    fmt = wordnet_format(path)
    if fmt == "nltk":
        yield from nltk_lemmas()
        return
    data = fileobj.read() if fileobj is not None else open(path, "rb").read()
    if path.lower().endswith(".gz") and data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if fmt == "oewn-yaml":
        yield from oewn_yaml_lemmas(data, path)
    else:
        yield from wn_lmf_lemmas(io.BytesIO(data), path)


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
    if not isinstance(doc, list) or not all(isinstance(x, str) for x in doc):
        raise LexiconError(f"{source}: expected a JSON list of strings (MetaCLIP's metadata.json)")
    return doc
