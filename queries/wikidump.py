"""Read MediaWiki XML dumps as a stream of articles and turn wikitext into plain prose.

``iter_pages(fileobj)`` parses the XML with expat in chunks and keeps only the text of the
fields it reads (title, namespace, the revision's text), each up to its cap, so memory stays
flat whatever the dump holds: a page whose text passes ``max_page_chars`` is read to its end
without being kept and comes out with ``skip = "page_too_large"``. A file that declares a DTD
or entities, nests past ``MAX_XML_DEPTH`` or holds an XML token (a tag, a comment) longer than
``MAX_XML_TOKEN_BYTES`` is refused (DumpError). ``wikitext_to_prose`` uses mwparserfromhell, a
maintained wikitext parser: templates, references and other invisible tags, tables,
file/image/category links and interwiki links are removed; links keep their visible text; bold,
italics and headings keep their words. Its memory and time follow the markup, so callers cap
``markup_cost`` first and run it in a capped child process (``prose_worker``).
"""

import re
import xml.parsers.expat as expat
from dataclasses import dataclass

import mwparserfromhell
from mwparserfromhell.nodes import ExternalLink, Heading, HTMLEntity, Tag, Text, Wikilink

from clipforge.errors import UserError
from clipforge.limits import MAX_WIKI_FIELD_CHARS, MAX_WIKI_PAGE_CHARS, MAX_XML_DEPTH, MAX_XML_TOKEN_BYTES
from clipforge.queries.inflate import CHUNK, READ_ERRORS, OverBudget

# Link targets whose text is not prose: media, categories, interlanguage and interwiki links.
_NON_PROSE_LINK = re.compile(
    r"^\s*:?\s*(file|image|media|category|wikipedia|wp|help|template|portal|special|user|talk|"
    r"[a-z]{2,3}(-[a-z]+)?)\s*:", re.IGNORECASE)
_DROP_TAGS = {"table", "ref", "references", "gallery", "math", "chem", "score", "timeline", "syntaxhighlight",
              "source", "pre", "nowiki", "templatedata", "imagemap", "graph", "mapframe", "maplink"}
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")
# What the parser leaves as text when the markup is broken (unclosed tags, stray tables). Every
# pattern runs in linear time: a <ref> scan stops at the next <ref, no quantifier spans lines
# where another could start.
_LEFTOVER = re.compile(r"<ref[^<>]*>(?:(?!</?ref).)*?</ref>|<[^<>\n]{1,200}>|\{\{[^{}]*\}\}|\{\||\|\}|"
                       r"__[A-Z]+__|\[\[|\]\]|'{2,}", re.DOTALL)
_NON_PROSE_LINE = re.compile(r"^[ \t]*[|!].*$|^.*\|thumb\|.*$|^.*\|[ \t]*bgcolor.*$", re.MULTILINE)
# Characters that open, close or separate wikitext markup (and line starts, where lists,
# headings and rules begin): what mwparserfromhell turns into nodes.
_MARKUP_CHARS = "[]{}<>|'=&\n"


@dataclass
class Page:
    title: str
    ns: int
    redirect: bool
    text: str
    skip: str = ""  # why the page cannot be read ("page_too_large", "page_malformed"); its text is then ""


class DumpError(UserError, ValueError):
    """The file is not a MediaWiki XML dump, breaks off mid-way, or is refused. ``reason``:
    not_a_dump, malformed, truncated, unreadable, over_decompression_budget or refused."""

    def __init__(self, message, reason="malformed"):
        super().__init__(message)
        self.reason = reason


class PageError(ValueError):
    """A page whose wikitext the parser cannot turn into prose; ``reason`` is page_unparsable or
    (from the prose worker) page_parse_too_costly."""

    def __init__(self, message, reason="page_unparsable"):
        super().__init__(message)
        self.reason = reason


def _local(tag):
    return tag.rsplit("}", 1)[-1]


class _DumpParser:
    """expat handlers that collect finished pages in ``pages``; ``mark`` is the byte offset of
    the last event (what expat holds beyond it is one unfinished token)."""

    def __init__(self, source, max_page_chars):
        self.source, self.max_page_chars = source, max_page_chars
        p = self.parser = expat.ParserCreate(namespace_separator="}")
        p.buffer_text = True
        p.buffer_size = 1 << 16
        p.StartElementHandler = self._start
        p.EndElementHandler = self._end
        p.CharacterDataHandler = self._data
        p.CommentHandler = p.ProcessingInstructionHandler = self._other
        p.StartDoctypeDeclHandler = self._doctype
        p.EntityDeclHandler = self._entity
        self.stack, self.pages, self.mark = [], [], 0
        self.parts = None  # the text pieces of the field being read, or None between fields
        self.fields, self.redirect = {}, False

    def feed(self, data, final=False):
        self.parser.Parse(data, final)

    def _other(self, *_):
        self.mark = self.parser.CurrentByteIndex

    def _doctype(self, *_):
        raise DumpError(f"{self.source}: declares a DTD (refused: a dump has none, and its entities could expand)",
                        "refused")

    def _entity(self, *_):
        raise DumpError(f"{self.source}: declares an XML entity (refused)", "refused")

    def _start(self, name, attrs):
        self.mark = self.parser.CurrentByteIndex
        stack = self.stack
        if len(stack) >= MAX_XML_DEPTH:
            raise DumpError(f"{self.source}: elements nest deeper than {MAX_XML_DEPTH}", "refused")
        local = _local(name)
        if not stack and local != "mediawiki":
            raise DumpError(f"{self.source}: not a MediaWiki XML dump (root element <{local}>)", "not_a_dump")
        stack.append(local)
        if len(stack) == 2 and local == "page":
            self.fields, self.redirect = {}, False
        elif len(stack) < 3 or stack[1] != "page":
            return
        elif len(stack) == 3 and local in ("title", "ns"):
            self._field(MAX_WIKI_FIELD_CHARS)
        elif len(stack) == 3 and local == "redirect":
            self.redirect = True
        elif len(stack) == 4 and local == "text" and stack[2] == "revision":
            self._field(self.max_page_chars)

    def _field(self, cap):
        self.parts, self.size, self.cap, self.over, self.head = [], 0, cap, False, ""
        self.field_depth = len(self.stack)

    def _data(self, data):
        self.mark = self.parser.CurrentByteIndex
        if self.parts is None:
            return
        if len(self.head) < 16:
            self.head += data[:16]
        if self.over:
            return
        self.size += len(data)
        if self.size > self.cap:
            self.over, self.parts = True, []  # read on to the field's end, keeping nothing
        else:
            self.parts.append(data)

    def _end(self, name):
        self.mark = self.parser.CurrentByteIndex
        local = self.stack.pop()
        if self.parts is not None:
            if len(self.stack) < self.field_depth:  # the field ends (text inside elements in it is kept)
                self.fields[local] = (None if self.over else "".join(self.parts), self.head)
                self.parts = None
        elif len(self.stack) == 1 and local == "page":
            self._finish_page()

    def _finish_page(self):
        title, _ = self.fields.get("title", ("", ""))
        ns_text, _ = self.fields.get("ns", ("", ""))
        text, head = self.fields.get("text", ("", ""))
        skip, ns = "", 0
        if title is None or ns_text is None:
            skip = "page_malformed"
        else:
            try:
                ns = int(ns_text or 0)
            except ValueError:
                skip = "page_malformed"
        if not skip and text is None:
            skip = "page_too_large"
        redirect = self.redirect or head.lstrip()[:9].upper() == "#REDIRECT"
        self.pages.append(Page(title or "", ns, redirect, "" if skip else text, skip))


def iter_pages(fileobj, source="dump", max_page_chars=MAX_WIKI_PAGE_CHARS):
    """Yield ``Page`` for every <page> of a MediaWiki XML dump read from a binary file object.

    A page whose text is longer than ``max_page_chars`` characters, or whose title or namespace
    is unreadable, comes out with ``skip`` set and no text. Raises DumpError if the stream is
    not MediaWiki XML, is refused, or ends before the document does (a truncated download);
    pages before the break have been yielded by then.
    """
    parser = _DumpParser(source, max_page_chars)
    fed = 0
    while True:
        try:
            chunk = fileobj.read(CHUNK)
        except OverBudget as e:
            raise DumpError(f"{source}: {e}", "over_decompression_budget") from None
        except EOFError as e:
            raise DumpError(f"{source}: compressed stream is truncated ({e})", "truncated") from None
        except READ_ERRORS as e:
            raise DumpError(f"{source}: cannot be read ({e})", "unreadable") from None
        error = None
        try:
            parser.feed(chunk, final=not chunk)
        except expat.ExpatError as e:
            error = DumpError(f"{source}: XML breaks off or is malformed ({e})", "malformed")
        except DumpError as e:
            error = e
        yield from parser.pages
        parser.pages.clear()
        if error is not None:
            raise error
        if not chunk:
            return
        fed += len(chunk)
        if fed - parser.mark > MAX_XML_TOKEN_BYTES:
            raise DumpError(f"{source}: an XML tag or comment runs past {MAX_XML_TOKEN_BYTES:,} bytes (refused)",
                            "refused")


def markup_cost(text):
    """The markup characters of a wikitext: what the wikitext parser's memory and time follow."""
    return sum(map(text.count, _MARKUP_CHARS)) + text.count("://")


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
    """Plain prose from wikitext: what a reader of the rendered article sees as running text.
    Raises PageError when the parser fails on it (callers count the page and go on)."""
    try:
        code = mwparserfromhell.parse(text)
    except Exception as e:  # noqa: BLE001 - a third-party parser on a stranger's text
        raise PageError(f"wikitext parser failed: {type(e).__name__}: {e}") from None
    out = []
    try:
        _strip(code, out)
    except RecursionError:
        raise PageError("wikitext nests too deeply") from None
    prose = _NON_PROSE_LINE.sub("", _LEFTOVER.sub(" ", "".join(out)))
    prose = _SPACES.sub(" ", prose)
    return _BLANK_LINES.sub("\n", prose).strip()
