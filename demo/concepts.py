"""The visual concepts of the demo web and how each is drawn.

An image shows one to three copies of a shape, filled with a colour and a texture, on a
background. Everything is drawn with Pillow from a ``random.Random``, so the same seed gives
the same pixels. The concepts are few and simple enough that a tiny CLIP learns them on a CPU
in minutes, and varied enough (size, position, rotation, texture, background, count) that it
has to learn the concept rather than a template.
"""

import math

from PIL import Image, ImageDraw, ImageFilter

COLOURS = {
    "red": (214, 39, 40),
    "orange": (255, 127, 14),
    "yellow": (238, 210, 2),
    "green": (44, 160, 44),
    "blue": (31, 90, 200),
    "purple": (128, 60, 170),
    "pink": (247, 140, 190),
    "brown": (120, 72, 30),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
}

SHAPES = (
    "circle", "square", "triangle", "star", "heart", "cross",
    "ring", "diamond", "hexagon", "arrow", "crescent", "pentagon",
)

TEXTURES = ("plain", "striped", "dotted", "checkered")

BACKGROUNDS = {
    "white": (245, 245, 245),
    "grey": (150, 150, 150),
    "dark": (45, 45, 55),
    "beige": (225, 210, 180),
    "sky": (170, 210, 240),
}

COUNTS = (1, 2, 3)


def plural(shape):
    return shape + "es" if shape.endswith(("ss", "sh", "ch", "x")) else shape + "s"


def _contrast_ok(colour, background):
    a, b = COLOURS[colour], BACKGROUNDS[background]
    return sum(abs(x - y) for x, y in zip(a, b)) > 160


def sample_attributes(rng, shape=None, colour=None):
    """Draw one image's attributes; fixed ones stay fixed."""
    shape = shape or rng.choice(SHAPES)
    colour = colour or rng.choice(list(COLOURS))
    backgrounds = [b for b in BACKGROUNDS if _contrast_ok(colour, b)]
    return {
        "shape": shape,
        "colour": colour,
        "texture": rng.choices(TEXTURES, weights=(6, 2, 2, 1))[0],
        "count": rng.choices(COUNTS, weights=(6, 2, 1))[0],
        "background": rng.choice(backgrounds),
    }


def _regular(cx, cy, r, n, rot):
    return [(cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n))
            for k in range(n)]


def _rotate(points, cx, cy, rot):
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def _mask(shape, size, cx, cy, r, rot):
    """A greyscale mask of one shape centred at (cx, cy) with radius r."""
    m = Image.new("L", size, 0)
    d = ImageDraw.Draw(m)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=255)
    elif shape == "ring":
        d.ellipse(box, fill=255)
        q = r * 0.55
        d.ellipse((cx - q, cy - q, cx + q, cy + q), fill=0)
    elif shape == "square":
        d.polygon(_regular(cx, cy, r * 1.1, 4, rot + math.pi / 4), fill=255)
    elif shape == "diamond":
        pts = [(cx, cy - r), (cx + r * 0.65, cy), (cx, cy + r), (cx - r * 0.65, cy)]
        d.polygon(_rotate(pts, cx, cy, rot * 0.3), fill=255)
    elif shape == "triangle":
        d.polygon(_regular(cx, cy, r, 3, rot - math.pi / 2), fill=255)
    elif shape == "pentagon":
        d.polygon(_regular(cx, cy, r, 5, rot - math.pi / 2), fill=255)
    elif shape == "hexagon":
        d.polygon(_regular(cx, cy, r, 6, rot), fill=255)
    elif shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.42
            a = rot - math.pi / 2 + math.pi * k / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        d.polygon(pts, fill=255)
    elif shape == "cross":
        w = r * 0.36
        pts = [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
               (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
               (cx - r, cy - w), (cx - w, cy - w)]
        d.polygon(_rotate(pts, cx, cy, rot * 0.3), fill=255)
    elif shape == "heart":
        q = r * 0.5
        d.ellipse((cx - r, cy - r * 0.75, cx, cy - r * 0.75 + 2 * q), fill=255)
        d.ellipse((cx, cy - r * 0.75, cx + r, cy - r * 0.75 + 2 * q), fill=255)
        d.polygon([(cx - r * 0.97, cy - r * 0.35), (cx + r * 0.97, cy - r * 0.35), (cx, cy + r)], fill=255)
    elif shape == "arrow":
        w = r * 0.25
        pts = [(cx - r, cy - w), (cx + r * 0.15, cy - w), (cx + r * 0.15, cy - r * 0.6), (cx + r, cy),
               (cx + r * 0.15, cy + r * 0.6), (cx + r * 0.15, cy + w), (cx - r, cy + w)]
        d.polygon(_rotate(pts, cx, cy, rot), fill=255)
    elif shape == "crescent":
        d.ellipse(box, fill=255)
        off = r * 0.45
        ox, oy = cx + off * math.cos(rot), cy + off * math.sin(rot)
        d.ellipse((ox - r * 0.85, oy - r * 0.85, ox + r * 0.85, oy + r * 0.85), fill=0)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return m


def _texture(texture, size, colour, rng):
    """The fill: a flat colour or a two-tone pattern of it."""
    base = COLOURS[colour]
    img = Image.new("RGB", size, base)
    if texture == "plain":
        return img
    shade = tuple(int(c * 0.55) for c in base) if sum(base) > 200 else tuple(min(255, c + 110) for c in base)
    d = ImageDraw.Draw(img)
    step = rng.randint(6, 10)
    w, h = size
    if texture == "striped":
        for x in range(-h, w, step):
            d.polygon([(x, 0), (x + step // 2, 0), (x + step // 2 + h, h), (x + h, h)], fill=shade)
    elif texture == "dotted":
        for y in range(step // 2, h, step):
            for x in range(step // 2 + (y // step % 2) * step // 2, w, step):
                d.ellipse((x - step * 0.22, y - step * 0.22, x + step * 0.22, y + step * 0.22), fill=shade)
    elif texture == "checkered":
        for y in range(0, h, step):
            for x in range(0, w, step):
                if (x // step + y // step) % 2:
                    d.rectangle((x, y, x + step - 1, y + step - 1), fill=shade)
    return img


def draw(attrs, rng, width=None, height=None):
    """Render attributes to an RGB image (size random unless given)."""
    width = width or rng.randint(96, 200)
    height = height or max(64, int(width * rng.uniform(0.7, 1.35)))
    size = (width, height)
    bg = BACKGROUNDS[attrs["background"]]
    img = Image.new("RGB", size, bg)
    # a soft gradient and a little noise so backgrounds are not flat colours
    grad = Image.linear_gradient("L").resize(size).rotate(rng.uniform(0, 360))
    img = Image.composite(Image.new("RGB", size, tuple(max(0, c - 30) for c in bg)), img, grad.point(lambda v: v // 3))
    n = attrs["count"]
    cell = min(width / n if width >= height else width, height / n if height > width else height)
    r_max = cell * 0.42
    fill = _texture(attrs["texture"], size, attrs["colour"], rng)
    outline = Image.new("RGB", size, tuple(max(0, c - 60) for c in COLOURS[attrs["colour"]]))
    for k in range(n):
        r = r_max * rng.uniform(0.7, 1.0)
        if width >= height:
            cx = (k + 0.5) * width / n + rng.uniform(-0.05, 0.05) * width / n
            cy = height / 2 + rng.uniform(-0.1, 0.1) * height
        else:
            cx = width / 2 + rng.uniform(-0.1, 0.1) * width
            cy = (k + 0.5) * height / n + rng.uniform(-0.05, 0.05) * height / n
        m = _mask(attrs["shape"], size, cx, cy, r, rng.uniform(-0.5, 0.5))
        img.paste(outline, (0, 0), m.filter(ImageFilter.MaxFilter(3)))
        img.paste(fill, (0, 0), m)
    return img
