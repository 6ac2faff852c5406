"""The demo world's text sources for the queries stage.

- a MediaWiki XML dump (``.xml.bz2``) of articles about the concepts, with the markup real
  dumps carry (templates, links, files, tables, references, categories), redirects and
  pages outside the article namespace;
- Wikimedia hourly pageview files (``domain title views bytes``, gzip);
- a lexicon in Open English WordNet's YAML source format;
- for worldwide curation, the same concepts in German, French, Spanish and Japanese: a dump per
  language (``<dbname>dewiki</dbname>``, ...), pageviews under each language's project code,
  and a WN-LMF file with one lexicon per language.

All output is a pure function of the ``random.Random`` passed in.
"""

import bz2
import gzip
import io
from xml.sax.saxutils import escape

import yaml

from clipforge.demo import captions
from clipforge.demo.concepts import COLOURS, SHAPES, TEXTURES, plural

_FILLER = (
    "In geometry and design the {w} appears in many forms.",
    "Artists and children often draw a {w} when they learn to paint.",
    "A {w} can be found on flags, signs and packaging around the world.",
    "Historians trace the use of the {w} back to early pottery.",
    "Many logos use a {w} because it is easy to recognise.",
    "The {w} is one of the first things a child learns to name.",
    "Modern printers reproduce a {w} with great accuracy.",
    "Designers pick a {w} to draw the eye of the reader.",
)

_MARKUP = (
    "A '''{w}''' is described in the [[{W}|{w}]] article.{ref}",
    "The {w} is often shown in [[{c} (color)|{c}]] on a [[poster]].",
    "{{{{Infobox {w}|name={W}|image={W}.svg}}}}The {w} is a common symbol.",
    "[[File:{c} {w}.svg|thumb|A {c} {w}]] A {c} {w} is shown here.",
    "Studies of the {w} and the colour {c} have been published.<ref>{{{{cite book |title={W} and {c} |year=1999}}}}</ref>",
    "The ''{w}'' pattern, also called a [[polka dot]] design when dotted, is popular.",
)

_TABLE = """{{| class="wikitable"
! Shape !! Colour !! Count
|-
| {W} || {c} || {n}
|-
| {W2} || {c2} || {n2}
|}}"""

_BIGRAMS = ("polka dot", "crescent moon", "traffic light", "stop sign", "hot pink", "navy blue")


def _sentence(rng, word):
    c = rng.choice(list(COLOURS))
    if rng.random() < 0.3:
        t = rng.choice(_MARKUP)
        ref = "<ref>{{cite web |url=http://127.0.0.1/ref |title=%s}}</ref>" % word.title() if rng.random() < 0.3 else ""
        return t.format(w=word, W=word.capitalize(), c=c, ref=ref)
    if rng.random() < 0.25:
        b = rng.choice(_BIGRAMS)
        return f"A {word} next to a {b} is a {c} {word} in many pictures."
    return rng.choice(_FILLER).format(w=word) + f" Some {plural(word) if word in SHAPES else word} are {c}."


def _article(rng, title, topic, sentences):
    parts = [f"{{{{Short description|{title} as a visual concept}}}}"]
    parts.append(" ".join(_sentence(rng, topic) for _ in range(max(1, sentences // 3))))
    parts.append("== History ==")
    parts.append(" ".join(_sentence(rng, rng.choice((topic,) + SHAPES)) for _ in range(max(1, sentences // 3))))
    parts.append(_TABLE.format(W=topic.capitalize(), c=rng.choice(list(COLOURS)), n=rng.randint(1, 9),
                               W2=rng.choice(SHAPES).capitalize(), c2=rng.choice(list(COLOURS)), n2=rng.randint(1, 9)))
    parts.append("== In art ==")
    parts.append(" ".join(_sentence(rng, rng.choice((topic,) + tuple(COLOURS))) for _ in range(max(1, sentences // 3))))
    parts.append("== References ==\n{{Reflist}}")
    parts.append(f"[[Category:Visual concepts]]\n[[Category:{topic.capitalize()}]]")
    return "\n\n".join(parts)


def _page(title, ns, page_id, text, redirect=None):
    red = f'\n    <redirect title="{escape(redirect)}" />' if redirect else ""
    return (
        f"  <page>\n    <title>{escape(title)}</title>\n    <ns>{ns}</ns>\n    <id>{page_id}</id>{red}\n"
        f"    <revision>\n      <id>{page_id * 10}</id>\n      <timestamp>2026-01-01T00:00:00Z</timestamp>\n"
        f"      <contributor>\n        <username>Demo</username>\n        <id>1</id>\n      </contributor>\n"
        f"      <model>wikitext</model>\n      <format>text/x-wiki</format>\n"
        f'      <text bytes="{len(text.encode())}" xml:space="preserve">{escape(text)}</text>\n'
        f"    </revision>\n  </page>\n"
    )


_HEADER = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">
  <siteinfo>
    <sitename>Demo Wikipedia</sitename>
    <dbname>enwiki</dbname>
    <generator>clipforge demo</generator>
    <case>first-letter</case>
    <namespaces>
      <namespace key="0" case="first-letter" />
      <namespace key="1" case="first-letter">Talk</namespace>
      <namespace key="6" case="first-letter">File</namespace>
      <namespace key="10" case="first-letter">Template</namespace>
      <namespace key="14" case="first-letter">Category</namespace>
    </namespaces>
  </siteinfo>
"""


def article_titles():
    """Titles of the demo wiki's articles (namespace 0, not redirects)."""
    topics = list(SHAPES) + list(COLOURS) + [t for t in TEXTURES if t != "plain"]
    return [t.capitalize() for t in topics] + ["Polka dot", "Crescent moon", "Traffic light", "Clip art"]


def wiki_dump(rng, sentences_per_article):
    """The dump as bytes (bz2-compressed MediaWiki XML) and the number of articles in it."""
    out = io.StringIO()
    out.write(_HEADER)
    page_id = 10
    titles = article_titles()
    for title in titles:
        page_id += 1
        topic = title.lower().split()[-1] if title.lower() not in SHAPES + tuple(COLOURS) else title.lower()
        out.write(_page(title, 0, page_id, _article(rng, title, topic, sentences_per_article)))
        if rng.random() < 0.3:
            page_id += 1
            out.write(_page(plural(title), 0, page_id, f"#REDIRECT [[{title}]]\n\n{{{{R from plural}}}}", title))
        if rng.random() < 0.4:
            page_id += 1
            out.write(_page(f"Talk:{title}", 1, page_id, f"== Merge? ==\nShould {title} merge with Shape? ~~~~"))
    page_id += 1
    out.write(_page("Category:Visual concepts", 14, page_id, "Articles about [[shape]]s and [[colour]]s."))
    page_id += 1
    out.write(_page("Template:Infobox shape", 10, page_id, "{{{name}}} <includeonly>[[Category:Shapes]]</includeonly>"))
    out.write("</mediawiki>\n")
    return bz2.compress(out.getvalue().encode("utf-8"), 9), len(titles)


def _gzip_lines(lines):
    """Lines as a reproducible gzip file (no name, no time in the header)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(("\n".join(lines) + "\n").encode("utf-8"))
    return buf.getvalue()


def pageviews(rng, hours=2):
    """Hourly pageview files as ``{filename: gzip bytes}``."""
    titles = [t.replace(" ", "_") for t in article_titles()]
    extra = ["Main_Page", "Special:Search", "File:Red_circle.svg", "Talk:Circle", "Obscure_shape_article",
             "Rarely_read_page"]
    files = {}
    for h in range(hours):
        lines = []
        for t in titles + extra:
            low = t in ("Obscure_shape_article", "Rarely_read_page")
            lines.append(f"en {t} {rng.randint(1, 20) if low else rng.randint(40, 400)} 0")
            if low:
                continue
            if rng.random() < 0.3:
                lines.append(f"en.m {t} {rng.randint(1, 50)} 0")
            if rng.random() < 0.2:
                lines.append(f"de {t} {rng.randint(1, 50)} 0")
        files[f"pageviews-20260101-{h:02d}0000.gz"] = _gzip_lines(lines)
    return files


def wordnet_yaml():
    """A small lexicon in Open English WordNet's YAML source format (one lexicographer file)."""
    entries = {}
    lemmas = [[s] for s in SHAPES] + [["polka dot", "dot"], ["crescent moon", "crescent"],
                                      ["five-pointed star"], ["Star of David"], ["checkerboard", "checker board"]]
    lemmas += [[c] for c in COLOURS] + [["stripe", "band"]]
    for i, members in enumerate(lemmas):
        entries[f"{90000000 + i * 7:08d}-n"] = {
            "definition": [f"a visual concept of the demo world: {members[0]}"],
            "ili": f"i9{i:05d}",
            "members": members,
            "partOfSpeech": "n",
        }
    return yaml.safe_dump(entries, sort_keys=True, allow_unicode=True).encode("utf-8")


# --- the same concepts in other languages ---------------------------------------------------------

WORLD_WIKIS = ("de", "fr", "es", "ja")
# Sentences that need no agreement: {s} a shape name, {c} a colour name, {o} another shape name.
_WORLD_SENTENCES = {
    "de": ("Die Form {s} erscheint auf vielen Flaggen und Schildern.", "Kinder zeichnen oft die Form {s} in der Farbe {c}.",
           "Die Farbe {c} ist auf vielen Bildern zu sehen.", "Neben der Form {s} steht oft die Form {o}.",
           "Das Symbol {s} ist leicht zu erkennen.", "Viele Logos zeigen die Form {s} in {c}."),
    "fr": ("La forme {s} apparaît sur de nombreux drapeaux.", "Les enfants dessinent souvent un {s} de couleur {c}.",
           "La couleur {c} se voit sur de nombreuses images.", "À côté du {s} on trouve souvent un {o}.",
           "Le symbole {s} est facile à reconnaître.", "Beaucoup de logos montrent un {s} {c}."),
    "es": ("La forma {s} aparece en muchas banderas.", "Los niños dibujan a menudo un {s} de color {c}.",
           "El color {c} se ve en muchas imágenes.", "Junto al {s} suele haber un {o}.",
           "El símbolo {s} es fácil de reconocer.", "Muchos logotipos muestran un {s} de color {c}."),
    "ja": ("{s}は多くの旗や標識に描かれている。", "子供たちはよく{c}色の{s}を描く。", "{c}色は多くの絵に使われている。",
           "{s}の隣にはよく{o}がある。", "{s}の記号は見分けやすい。", "多くのロゴが{c}色の{s}を使っている。"),
}
_WORLD_TITLES = {"de": "Hauptseite", "fr": "Accueil", "es": "Portada", "ja": "メインページ"}


def _world_header(lang):
    return _HEADER.replace('xml:lang="en"', f'xml:lang="{lang}"').replace(
        "<dbname>enwiki</dbname>", f"<dbname>{lang}wiki</dbname>").replace("Demo Wikipedia", f"Demo Wikipedia ({lang})")


def wiki_dump_lang(rng, lang, sentences_per_article):
    """A dump of ``lang`` (bz2 MediaWiki XML bytes) with an article per shape and colour, and
    the number of articles."""
    shapes, colours = captions.words(lang)
    templates = _WORLD_SENTENCES[lang]
    join = "" if lang == "ja" else " "
    out = io.StringIO()
    out.write(_world_header(lang))
    page_id = 10
    topics = [(name, "shape") for name in shapes.values()] + [(name, "colour") for name in colours.values()]
    for title, kind in topics:
        page_id += 1
        body = []
        for _ in range(sentences_per_article):
            s = title if kind == "shape" else rng.choice(list(shapes.values()))
            c = title if kind == "colour" else rng.choice(list(colours.values()))
            body.append(rng.choice(templates).format(s=s, c=c, o=rng.choice(list(shapes.values()))))
        bold = "'" * 3
        text = f"{bold}{title}{bold}{join}" + join.join(body) + f"\n\n[[Category:{title}]]"
        out.write(_page(title, 0, page_id, text))
        if rng.random() < 0.3:
            page_id += 1
            out.write(_page(f"Talk:{title}", 1, page_id, "?"))
    out.write("</mediawiki>\n")
    return bz2.compress(out.getvalue().encode("utf-8"), 9), len(topics)


def pageviews_world(rng, hours=2):
    """Hourly pageview files with every language's articles under its project codes (de, de.m),
    and lines of other projects (Wiktionary, Commons) that name no Wikipedia."""
    files = {}
    for h in range(hours):
        lines = []
        for lang in WORLD_WIKIS:
            shapes, colours = captions.words(lang)
            for t in list(shapes.values()) + list(colours.values()) + [_WORLD_TITLES[lang]]:
                t = t.replace(" ", "_")
                lines.append(f"{lang} {t} {rng.randint(40, 400)} 0")
                if rng.random() < 0.4:
                    lines.append(f"{lang}.m {t} {rng.randint(1, 80)} 0")
                if rng.random() < 0.2:
                    lines.append(f"{lang}.d {t} {rng.randint(100, 900)} 0")  # Wiktionary: not a title
            lines.append(f"{lang} Spezial:Suche {rng.randint(100, 900)} 0")
        lines.append(f"commons.m File:Demo.svg {rng.randint(100, 900)} 0")
        files[f"pageviews-20260101-{h:02d}0000.gz"] = _gzip_lines(lines)
    return files


def wordnet_lmf():
    """A WN-LMF file with one lexicon per language: the shapes and colours as synsets."""
    from xml.sax.saxutils import quoteattr

    parts = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<LexicalResource xmlns:dc="https://globalwordnet.github.io/schemas/dc/">']
    for lang in WORLD_WIKIS:
        shapes, colours = captions.words(lang)
        parts.append(f'  <Lexicon id="demo-{lang}" label="Demo wordnet ({lang})" language="{lang}" '
                     'email="demo@127.0.0.1" license="CC0" version="1.0">')
        names = list(shapes.items()) + list(colours.items())
        for i, (concept, word) in enumerate(names):
            parts.append(f'    <LexicalEntry id="demo-{lang}-{i}"><Lemma writtenForm={quoteattr(word)} '
                         f'partOfSpeech="n"/><Sense id="demo-{lang}-{i}-s" synset="demo-{lang}-{concept}"/>'
                         '</LexicalEntry>')
        for concept, _ in names:
            parts.append(f'    <Synset id="demo-{lang}-{concept}" partOfSpeech="n"/>')
        parts.append("  </Lexicon>")
    parts.append("</LexicalResource>")
    return ("\n".join(parts) + "\n").encode("utf-8")
