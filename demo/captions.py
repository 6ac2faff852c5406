"""Alt texts for the demo web's images: varied English phrasing, other languages and junk.

Each function takes an image's attributes (``concepts.sample_attributes``) and a
``random.Random`` and returns a string, so captions are as deterministic as the images.
"""

from clipforge.demo.concepts import plural

_NUMBER = {1: "one", 2: "two", 3: "three"}
_TEXTURE_ADJ = {"plain": "", "striped": "striped", "dotted": "polka-dot", "checkered": "checkered"}
_BG_PHRASE = {"white": "white", "grey": "grey", "dark": "dark", "beige": "beige", "sky": "light blue"}

_EN = (
    "a {colour} {shape}",
    "{a} {tex}{colour} {shape} on a {bg} background",
    "{count} {colour} {shapes}",
    "photo of {a} {tex}{colour} {shape}",
    "{Colour} {shape} icon",
    "close-up of a {colour} {shape} drawn on {bg} paper",
    "this {shape} is {colour}",
    "my kid's drawing: a big {colour} {shape}",
    "{tex}{shape} in {colour}",
    "simple {colour} {shape} clip art, free download",
    "{count} {tex}{shapes}, all of them {colour}",
    "a {colour} {shape} sticker for your laptop",
    "{Colour} {shape} wallpaper HD",
    "sketch of {a} {colour} {shape} against a {bg} backdrop",
    "hand-painted {tex}{colour} {shape}",
    "The {shape} is {colour} and sits on {bg}",
)

# Other languages: (shape names, colour names, templates). Templates avoid adjective
# agreement so that one word per concept is enough.
_OTHER = {
    "de": (
        dict(circle="Kreis", square="Quadrat", triangle="Dreieck", star="Stern", heart="Herz", cross="Kreuz",
             ring="Ring", diamond="Raute", hexagon="Sechseck", arrow="Pfeil", crescent="Halbmond",
             pentagon="Fünfeck"),
        dict(red="Rot", orange="Orange", yellow="Gelb", green="Grün", blue="Blau", purple="Lila", pink="Rosa",
             brown="Braun", black="Schwarz", white="Weiß"),
        ("{shape} in der Farbe {colour}", "Ein {shape}, Farbe {colour}, auf hellem Hintergrund",
         "Symbol: {shape} ({colour})"),
    ),
    "fr": (
        dict(circle="cercle", square="carré", triangle="triangle", star="étoile", heart="cœur", cross="croix",
             ring="anneau", diamond="losange", hexagon="hexagone", arrow="flèche", crescent="croissant",
             pentagon="pentagone"),
        dict(red="rouge", orange="orange", yellow="jaune", green="vert", blue="bleu", purple="violet",
             pink="rose", brown="marron", black="noir", white="blanc"),
        ("{shape} de couleur {colour}", "dessin d'un {shape} de couleur {colour} sur fond clair",
         "icône {shape}, couleur {colour}"),
    ),
    "es": (
        dict(circle="círculo", square="cuadrado", triangle="triángulo", star="estrella", heart="corazón",
             cross="cruz", ring="anillo", diamond="rombo", hexagon="hexágono", arrow="flecha",
             crescent="media luna", pentagon="pentágono"),
        dict(red="rojo", orange="naranja", yellow="amarillo", green="verde", blue="azul", purple="morado",
             pink="rosa", brown="marrón", black="negro", white="blanco"),
        ("{shape} de color {colour}", "un {shape} de color {colour} sobre fondo claro",
         "icono de {shape} en color {colour}"),
    ),
}

LANGUAGES = ("en", "de", "fr", "es")  # alts of the classic demo (the draw among them is fixed)

# Japanese, written without spaces: a share of the alts that would have been Spanish (their own
# random stream, so the rest of the world stays as it was).
_OTHER["ja"] = (
    dict(circle="円", square="四角形", triangle="三角形", star="星", heart="ハート", cross="十字", ring="輪",
         diamond="ひし形", hexagon="六角形", arrow="矢印", crescent="三日月", pentagon="五角形"),
    dict(red="赤", orange="オレンジ", yellow="黄", green="緑", blue="青", purple="紫", pink="ピンク", brown="茶",
         black="黒", white="白"),
    ("{colour}色の{shape}", "{colour}色の{shape}のイラスト", "{shape}のアイコン（{colour}色）"),
)
WORLD_LANGUAGES = LANGUAGES + ("ja",)


def words(lang):
    """(shape names, colour names) of a language other than English."""
    shapes, colours, _ = _OTHER[lang]
    return shapes, colours

# What real alt attributes are full of: file names, numbers, boilerplate.
JUNK = (
    "IMG_{n:04d}.jpg", "DSC{n:05d}", "image", "logo", "photo", "picture", "{n}", "thumbnail",
    "banner", "spacer.gif", "icon", "img{n}.png", "untitled-{n}",
)


def english(attrs, rng):
    tex = _TEXTURE_ADJ[attrs["texture"]]
    tex = tex + " " if tex and rng.random() < 0.7 else ""
    template = rng.choice(_EN)
    if attrs["count"] > 1 and "{count}" not in template and rng.random() < 0.7:
        template = rng.choice([t for t in _EN if "{count}" in t])
    first = (tex or attrs["colour"])[0]
    return template.format(
        a="an" if first in "aeiou" else "a",
        tex=tex,
        colour=attrs["colour"],
        Colour=attrs["colour"].capitalize(),
        shape=attrs["shape"],
        shapes=plural(attrs["shape"]) if attrs["count"] > 1 else attrs["shape"],
        count=_NUMBER[attrs["count"]],
        bg=_BG_PHRASE[attrs["background"]],
    )


def foreign(attrs, lang, rng):
    shapes, colours, templates = _OTHER[lang]
    return rng.choice(templates).format(shape=shapes[attrs["shape"]], colour=colours[attrs["colour"]])


def junk(rng):
    return rng.choice(JUNK).format(n=rng.randint(1, 9999))


def mojibake(text):
    """The text as it looks after UTF-8 bytes were decoded as Windows-1252 (a classic)."""
    return text.encode("utf-8").decode("cp1252", errors="replace")
