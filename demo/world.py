"""Generate the demo web: a deterministic, offline world of pages, images and text sources.

``generate(WorldConfig(out, seed, size, port))`` writes::

    OUT/manifest.json      what is where, counts, the messy cases, sha256 of every file
    OUT/routes.json        special server behaviours by path (read by demo.server)
    OUT/truth.parquet      ground truth of every <img> on every page (for tests and reports)
    OUT/site/              what the server serves: index.html, pages/, img/, mirror/, x/
    OUT/crawl/             demo-00000.warc.gz, demo-00000.warc.wat.gz, urls.parquet
    OUT/wiki/              demowiki-pages-articles.xml.bz2
    OUT/pageviews/         pageviews-20260101-HH0000.gz
    OUT/wordnet/           noun.demo.yaml (Open English WordNet YAML)
    OUT/heldout/shape/<shape>/*.jpg, OUT/heldout/colour/<colour>/*.jpg   zero-shot test sets

Like the web CLIP's paper measured, the demo web holds a few of its own test images: from each
held-out class, ``planted_per_class`` images are also published on the pages (site/img/planted/),
slightly cropped, resized, brightened or darkened and recompressed, with English alt texts.
``manifest.json`` lists them under "planted"; ``clipforge overlap`` should find each one that
reaches the shards.

Every URL in the world is ``http://127.0.0.1:PORT/...``: the port is part of the world, so
the same seed, size and port give the same bytes.
"""

import hashlib
import html
import io
import json
import os
import random
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageChops

from clipforge.demo import captions, concepts, corpora, messy
from clipforge.demo.archives import Capture, write_warc_and_wat
from clipforge.errors import MissingInput

GENERATOR_VERSION = 3  # 2: the planted overlap; 3: Japanese alts, and worldwide/ (de, fr, es, ja sources)


@dataclass
class WorldConfig:
    out: Path
    seed: int = 0
    size: int = 16000  # distinct images on the web (the demo's, chain.DEMO_WORLD_SIZE)
    port: int = 0  # 0: pick a free loopback port now and record it
    heldout_per_class: int = 20
    planted_per_class: int = 1  # held-out images per class also published on the web, altered


def free_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _encode(img, fmt, rng):
    buf = io.BytesIO()
    if fmt == "png_alpha":
        # transparent background: the shape stays, the rest is alpha 0
        diff = ImageChops.difference(img, Image.new("RGB", img.size, img.getpixel((0, 0)))).convert("L")
        rgba = img.convert("RGBA")
        rgba.putalpha(diff.point(lambda v: 0 if v < 24 else 255))
        rgba.save(buf, "PNG", optimize=False)
        return buf.getvalue(), "png"
    if fmt == "png":
        img.save(buf, "PNG")
        return buf.getvalue(), "png"
    if fmt == "webp":
        img.save(buf, "WEBP", quality=80, method=0)
        return buf.getvalue(), "webp"
    if fmt == "jpeg_exif":
        # stored rotated; EXIF orientation 6 says "turn 90 degrees clockwise to view"
        exif = Image.Exif()
        exif[0x0112] = 6
        img.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=85, exif=exif.tobytes())
        return buf.getvalue(), "jpg"
    img.save(buf, "JPEG", quality=rng.choice((75, 85, 92)))
    return buf.getvalue(), "jpg"


def _republish(img, rng):
    """What another site makes of a picture: cropped by up to 4% a side, resized 0.6-1.4x,
    brightness within 6%, JPEG quality 70-90."""
    from PIL import ImageEnhance

    w, h = img.size
    left, top, right, bottom = (int(rng.uniform(0, 0.04) * v) for v in (w, h, w, h))
    img = img.crop((left, top, w - right, h - bottom))
    f = rng.uniform(0.6, 1.4)
    img = img.resize((max(16, round(img.width * f)), max(16, round(img.height * f))), Image.Resampling.BICUBIC)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.94, 1.06))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=rng.randint(70, 90))
    return buf.getvalue()


class _Writer:
    """Writes files under a root and remembers their sha256 for the manifest."""

    def __init__(self, root):
        self.root = Path(root)
        self.hashes = {}

    def write(self, rel, data):
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.hashes[rel] = hashlib.sha256(data).hexdigest()


def _caption(attrs, rng, rng_ja):
    """(alt text or None, how it is written: alt/title/none, language label)."""
    r = rng.random()
    if r < 0.06:
        return captions.junk(rng), "alt", "junk"
    if r < 0.18:
        lang = rng.choice(captions.LANGUAGES[1:])
        if lang == "es" and rng_ja.random() < 0.5:
            return captions.foreign(attrs, "ja", rng_ja), "alt", "ja"
        return captions.foreign(attrs, lang, rng), "alt", lang
    text = captions.english(attrs, rng)
    if r < 0.20:
        return captions.mojibake(text + " – free clip art"), "alt", "en"
    if r < 0.22:
        return text, "title", "en"  # no alt, only a title attribute
    if r < 0.23:
        return None, "none", None  # an <img> with no text at all
    return text, "alt", "en"


def _src(url_path, style, base_url, has_base):
    if has_base and url_path.startswith("/img/"):
        return url_path[len("/img/"):]
    if style == "absolute":
        return base_url + url_path
    if style == "protocol":
        return "//" + base_url.split("://", 1)[1] + url_path
    if style == "relative":
        return ".." + url_path
    return url_path  # root-relative


def _img_tag(src, text, attr, w, h):
    parts = [f'src="{html.escape(src)}"']
    if attr in ("alt", "title"):
        parts.append(f'{attr}="{html.escape(text)}"')
    parts.append(f'width="{w}" height="{h}"')
    return f"<img {' '.join(parts)}>"


def generate(cfg):
    """Write the world to ``cfg.out`` (atomically: built beside it, then renamed). Returns the manifest."""
    out = Path(cfg.out)
    if cfg.size < 20:
        raise ValueError("size must be at least 20 images")
    port = cfg.port or free_port()
    base = f"http://127.0.0.1:{port}"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        manifest = _generate(cfg, tmp, port, base)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _generate(cfg, root, port, base):
    w = _Writer(root)
    rng_img = random.Random(f"{cfg.seed}:images")
    rng_txt = random.Random(f"{cfg.seed}:captions")
    rng_page = random.Random(f"{cfg.seed}:pages")
    rng_ja = random.Random(f"{cfg.seed}:ja")
    truth = []

    # 0. held-out labelled images for zero-shot evaluation (a separate random stream), written
    #    in step 7; a few of them are published on the web too, altered (the planted overlap)
    rng_held = random.Random(f"{cfg.seed}:heldout")
    heldout = []  # (relative path, class set, attrs, image, bytes)
    for kind, classes, key in (("shape", concepts.SHAPES, "shape"), ("colour", concepts.COLOURS, "colour")):
        for name in classes:
            for j in range(cfg.heldout_per_class):
                attrs = concepts.sample_attributes(rng_held, **{key: name})
                img = concepts.draw(attrs, rng_held)
                data, _ = _encode(img, "jpeg", rng_held)
                heldout.append((f"heldout/{kind}/{name}/{j:03d}.jpg", kind, attrs, img, data))

    # 1. images
    images = []  # (id, url path, attrs, width, height)
    formats = ("jpeg",) * 85 + ("png",) * 4 + ("png_alpha",) * 4 + ("webp",) * 4 + ("jpeg_exif",) * 3
    for i in range(cfg.size):
        attrs = concepts.sample_attributes(rng_img)
        img = concepts.draw(attrs, rng_img)
        data, ext = _encode(img, rng_img.choice(formats), rng_img)
        rel = f"img/{i // 1000:02d}/{i:05d}.{ext}"
        w.write(f"site/{rel}", data)
        images.append((i, "/" + rel, attrs, img.width, img.height))

    rng_plant = random.Random(f"{cfg.seed}:plant")
    planted = {}  # image id -> held-out relative path
    by_class = {}
    for rel, kind, attrs, img, _ in heldout:
        by_class.setdefault(rel.rsplit("/", 1)[0], []).append((rel, attrs, img))
    for members in by_class.values():
        for rel, attrs, img in rng_plant.sample(members, min(cfg.planted_per_class, len(members))):
            i = cfg.size + len(planted)
            data = _republish(img, rng_plant)
            path = f"/img/planted/{i:05d}.jpg"
            w.write(f"site{path}", data)
            planted[i] = (rel, path, attrs, *Image.open(io.BytesIO(data)).size)

    # 2. the same image under other URLs: a mirror path and a cache-busting query string
    occurrences = []  # (image id, url path, kind)
    for i, path, attrs, iw, ih in images:
        occurrences.append((i, path, "image"))
        r = rng_page.random()
        if r < 0.03:
            mirror = "/mirror/" + path.rsplit("/", 1)[1]
            w.write("site" + mirror, w.root.joinpath("site" + path).read_bytes())
            occurrences.append((i, mirror, "duplicate"))
        elif r < 0.05:
            occurrences.append((i, path + "?v=2", "duplicate"))

    # 3. messy cases, each linked once with an ordinary English alt
    sample = concepts.draw(concepts.sample_attributes(rng_img, shape="circle", colour="red"), rng_img, 160, 120)
    cases = messy.cases(rng_img, sample)
    routes = {}
    for case in cases:
        for rel, data in case["files"].items():
            w.write(f"site/{rel}", data)
        if case["route"]:
            routes[case["path"]] = case["route"]
    messy_links = [c for c in cases if c["name"] not in ("redirect_hop", "redirect_loop_b")]

    # 4. pages
    rng_page.shuffle(occurrences)
    by_id = {i: (attrs, iw, ih) for i, _, attrs, iw, ih in images}
    pages, k = [], 0
    while k < len(occurrences):
        n = rng_page.randint(3, 8)
        pages.append(occurrences[k:k + n])
        k += n
    for case in messy_links:
        rng_page.choice(pages).append((None, case["path"], case["name"]))
    for i, (_, path, attrs, iw, ih) in planted.items():  # their own random stream: the rest stays as it was
        by_id[i] = (attrs, iw, ih)
        page = rng_plant.choice(pages)
        page.insert(rng_plant.randrange(len(page) + 1), (i, path, "planted_overlap"))
    captures = []
    page_headers = {}
    for p, items in enumerate(pages):
        page_path = f"/pages/p{p:05d}.html"
        page_url = base + page_path
        charset = rng_page.choices(("utf-8", "windows-1252", "iso-8859-1"), weights=(8, 1, 1))[0]
        declare = rng_page.choice(("meta", "header", "both"))
        has_base = rng_page.random() < 0.15
        body, links = [], []
        for img_id, url_path, kind in items:
            if img_id is None:
                attrs = concepts.sample_attributes(rng_txt)
                text, attr, lang = captions.english(attrs, rng_txt), "alt", "en"
                iw, ih = 160, 120
            elif img_id in planted:  # a held-out image on the web: an ordinary English alt
                attrs, iw, ih = by_id[img_id]
                text, attr, lang = captions.english(attrs, rng_plant), "alt", "en"
            else:
                attrs, iw, ih = by_id[img_id]
                text, attr, lang = _caption(attrs, rng_txt, rng_ja)
            style = (rng_plant if img_id in planted else rng_page).choice(("absolute", "root", "relative", "protocol"))
            src = _src(url_path, style, base, has_base)
            if text is not None and charset != "utf-8":
                text = text.encode(charset, errors="ignore").decode(charset)
            body.append(f"<figure>{_img_tag(src, text, attr, iw, ih)}</figure>")
            link = {"path": "IMG@/src", "url": src}
            if attr in ("alt", "title"):
                link[attr] = text
            links.append(link)
            truth.append({
                "page_url": page_url, "url": base + url_path, "src": src, "text": text, "text_attr": attr,
                "lang": lang, "kind": kind, "image_id": img_id,
                **({k: attrs[k] for k in ("shape", "colour", "texture", "count", "background")}),
            })
        if rng_page.random() < 0.1:
            body.append('<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" alt="a red circle pixel">')
            links.append({"path": "IMG@/src", "url": "data:image/gif;base64,R0lGODlhAQABAAAAACw=",
                          "alt": "a red circle pixel"})
        nav = f'<a href="p{(p + 1) % len(pages):05d}.html">next gallery</a>'
        links.append({"path": "A@/href", "url": f"p{(p + 1) % len(pages):05d}.html", "text": "next gallery"})
        title = f"Gallery {p}: shapes and colours"
        head = []
        if declare in ("meta", "both"):
            head.append(f'<meta charset="{charset}">')
        head.append(f"<title>{title}</title>")
        if has_base:
            head.append(f'<base href="{base}/img/">')
        doc = ("<!DOCTYPE html>\n<html><head>" + "".join(head) + "</head>\n<body>\n"
               f"<h1>{title}</h1>\n<p>Pictures from our collection.</p>\n" + "\n".join(body) +
               f"\n<p>{nav}</p>\n</body></html>\n")
        data = doc.encode(charset, errors="xmlcharrefreplace")
        w.write("site" + page_path, data)
        ctype = "text/html" + (f"; charset={charset}" if declare in ("header", "both") else "")
        page_headers[page_path] = ctype
        captures.append(Capture(page_url, 200, [("Content-Type", ctype)], data, title=title,
                                base=f"{base}/img/" if has_base else None,
                                metas=[{"charset": charset}] if declare != "header" else [], links=links))
    for page_path, ctype in page_headers.items():
        if ctype != "text/html; charset=utf-8":
            routes[page_path] = {"kind": "file", "file": page_path.lstrip("/"), "content_type": ctype}

    index = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>clipforge demo web</title></head><body>\n" + \
        "\n".join(f'<a href="pages/p{p:05d}.html">gallery {p}</a><br>' for p in range(len(pages))) + "\n</body></html>\n"
    w.write("site/index.html", index.encode())
    robots = b"User-agent: *\nAllow: /\n"
    w.write("site/robots.txt", robots)
    captures.insert(0, Capture(base + "/index.html", 200, [("Content-Type", "text/html; charset=utf-8")],
                               index.encode(), title="clipforge demo web"))
    captures.append(Capture(base + "/robots.txt", 200, [("Content-Type", "text/plain")], robots))
    captures.append(Capture(base + "/pages/gone.html", 404, [("Content-Type", "text/html")], b"<h1>Not Found</h1>"))

    # 5. archives and the URL list
    warc, wat = write_warc_and_wat(captures, "demo-00000.warc.gz", cfg.seed)
    w.write("crawl/demo-00000.warc.gz", warc)
    w.write("crawl/demo-00000.warc.wat.gz", wat)
    rows = [t for t in truth if t["text"] is not None]
    urls = pa.table({"url": [t["url"] for t in rows], "caption": [t["text"] for t in rows],
                     "page_url": [t["page_url"] for t in rows]})
    buf = io.BytesIO()
    pq.write_table(urls, buf)
    w.write("crawl/urls.parquet", buf.getvalue())
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(truth), buf)
    w.write("truth.parquet", buf.getvalue())

    # 6. text sources for the queries stage
    rng_wiki = random.Random(f"{cfg.seed}:wiki")
    dump, n_articles = corpora.wiki_dump(rng_wiki, sentences_per_article=max(12, cfg.size // 8))
    w.write("wiki/demowiki-pages-articles.xml.bz2", dump)
    for name, data in corpora.pageviews(rng_wiki).items():
        w.write(f"pageviews/{name}", data)
    w.write("wordnet/noun.demo.yaml", corpora.wordnet_yaml())
    # ... and the same concepts in German, French, Spanish and Japanese (worldwide curation)
    rng_world = random.Random(f"{cfg.seed}:worldwide")
    world_articles = {}
    for lang in corpora.WORLD_WIKIS:
        dump, world_articles[lang] = corpora.wiki_dump_lang(rng_world, lang, max(12, cfg.size // 8))
        w.write(f"worldwide/wiki/{lang}wiki-demo-pages-articles.xml.bz2", dump)
    for name, data in corpora.pageviews_world(rng_world).items():
        w.write(f"worldwide/pageviews/{name}", data)
    w.write("worldwide/wordnet/omw-demo.xml", corpora.wordnet_lmf())

    # 7. the held-out labelled images (made in step 0)
    for rel, _, _, _, data in heldout:
        w.write(rel, data)

    w.write("routes.json", json.dumps(routes, indent=1, sort_keys=True).encode())
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "size": cfg.size,
        "port": port,
        "base_url": base,
        "counts": {
            "images": cfg.size,
            "pages": len(pages),
            "img_tags": len(truth),
            "captures": len(captures),
            "wiki_articles": n_articles,
            "worldwide_wiki_articles": world_articles,
            "heldout_shape": len(concepts.SHAPES) * cfg.heldout_per_class,
            "heldout_colour": len(concepts.COLOURS) * cfg.heldout_per_class,
            "planted": len(planted),
        },
        "planted": [{"heldout": v[0], "url": base + v[1]} for _, v in sorted(planted.items())],
        "inputs": {
            "warc": "crawl/demo-00000.warc.gz",
            "wat": "crawl/demo-00000.warc.wat.gz",
            "urls": "crawl/urls.parquet",
            "wiki": "wiki/demowiki-pages-articles.xml.bz2",
            "pageviews": "pageviews/*.gz",
            "wordnet": "wordnet/noun.demo.yaml",
            "worldwide_wiki": "worldwide/wiki/*.bz2",
            "worldwide_pageviews": "worldwide/pageviews/*.gz",
            "worldwide_wordnet": "worldwide/wordnet/omw-demo.xml",
            "heldout_shape": "heldout/shape",
            "heldout_colour": "heldout/colour",
        },
        "messy": [{"name": c["name"], "url": base + c["path"], "expect": c["expect"]} for c in cases],
        "files": dict(sorted(w.hashes.items())),
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def load_manifest(world_dir):
    path = Path(world_dir) / "manifest.json"
    if not path.exists():
        raise MissingInput(f"{world_dir} is not a demo world (no manifest.json); "
                           f"create one with `clipforge demo generate --out {world_dir}`")
    return json.loads(path.read_text())
