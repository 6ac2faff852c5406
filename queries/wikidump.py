"""Read MediaWiki XML dumps as a stream of articles and turn wikitext into plain prose.

``iter_pages(fileobj)`` parses the XML incrementally (memory stays flat whatever the dump
size) and yields every page with its namespace and redirect flag; the caller decides what
to keep. ``wikitext_to_prose`` uses mwparserfromhell, a maintained wikitext parser: templates,
references and other invisible tags, tables, file/image/category links and interwiki links
are removed; links keep their visible text; bold, italics and headings keep their words.
"""

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import mwparserfromhell
from mwparserfromhell.nodes import ExternalLink, Heading, HTMLEntity, Tag, Text, Wikilink

# Link targets whose text is not prose: media, categories, interlanguage and interwiki links.
_NON_PROSE_LINK = re.compile(
    r"^\s*:?\s*(file|image|media|category|wikipedia|wp|help|template|portal|special|user|talk|"
    r"[a-z]{2,3}(-[a-z]+)?)\s*:", re.IGNORECASE)
_DROP_TAGS = {"table", "ref", "references", "gallery", "math", "chem", "score", "timeline", "syntaxhighlight",
              "source", "pre", "nowiki", "templatedata", "imagemap", "graph", "mapframe", "maplink"}
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")
# What the parser leaves as text when the markup is broken (unclosed tags, stray tables).
_LEFTOVER = re.compile(r"<ref[^>]*>.*?</ref>|<[^<>\n]{1,200}>|\{\{[^{}]*\}\}|\{\||\|\}|__[A-Z]+__|\[\[|\]\]|'{2,}",
                       re.DOTALL)
_NON_PROSE_LINE = re.compile(r"^\s*(?:[|!].*|.*\|thumb\|.*|.*\|\s*bgcolor.*)$", re.MULTILINE)


@dataclass
class Page:
    title: str
    ns: int
    redirect: bool
    text: str


class DumpError(ValueError):
    """The file is not a MediaWiki XML dump (or it breaks off mid-way)."""


def _local(tag):
    return tag.rsplit("}", 1)[-1]


def iter_pages(fileobj, source="dump"):
    """Yield ``Page`` for every <page> of a MediaWiki XML dump read from a binary file object.

    Raises DumpError if the stream is not MediaWiki XML or ends before the document does
    (a truncated download); pages before the break have been yielded by then.
    """
    context = ET.iterparse(fileobj, events=("start", "end"))
    root = None
    try:
        for event, elem in context:
            if root is None:
                root = elem
                if _local(elem.tag) != "mediawiki":
                    raise DumpError(f"{source}: not a MediaWiki XML dump (root element <{_local(elem.tag)}>)")
                continue
            if event != "end" or _local(elem.tag) != "page":
                continue
            title, ns, redirect, text = "", 0, False, ""
            for child in elem:
                name = _local(child.tag)
                if name == "title":
                    title = child.text or ""
                elif name == "ns":
                    ns = int(child.text or 0)
                elif name == "redirect":
                    redirect = True
                elif name == "revision":
                    for part in child:
                        if _local(part.tag) == "text":
                            text = part.text or ""
            yield Page(title, ns, redirect or text.lstrip()[:9].upper() == "#REDIRECT", text)
            root.clear()  # drop finished pages: memory stays flat
    except ET.ParseError as e:
        raise DumpError(f"{source}: XML breaks off or is malformed ({e})") from None
    except EOFError as e:
        raise DumpError(f"{source}: compressed stream is truncated ({e})") from None
    except OSError as e:
        raise DumpError(f"{source}: cannot be read ({e})") from None


def _strip(code, out):
    """Append the visible prose of a parsed wikicode to ``out`` in one pass over its nodes."""
    for node in code.nodes:
        if isinstance(node, Text):
            out.append(node.value)
        elif isinstance(node, Wikilink):
            if not _NON_PROSE_LINK.match(str(node.title)):
                _strip(node.text if node.text is not None else node.title, out)
        elif isinstance(node, Tag):
            if str(node.tag).strip().lower() not in _DROP_TAGS and node.contents is not None:
                if node.tag in ("p", "br", "li", "dd", "dt"):
                    out.append("\n")
                _strip(node.contents, out)
        elif isinstance(node, Heading):
            out.append("\n")
            _strip(node.title, out)
            out.append("\n")
        elif isinstance(node, ExternalLink):
            if node.title is not None:
                _strip(node.title, out)
        elif isinstance(node, HTMLEntity):
            out.append(node.normalize())
        # Template, Comment, Argument and anything else: not prose


def wikitext_to_prose(text):
    """Plain prose from wikitext: what a reader of the rendered article sees as running text."""
    out = []
    _strip(mwparserfromhell.parse(text), out)
    prose = _NON_PROSE_LINE.sub("", _LEFTOVER.sub(" ", "".join(out)))
    prose = _SPACES.sub(" ", prose)
    return _BLANK_LINES.sub("\n", prose).strip()
