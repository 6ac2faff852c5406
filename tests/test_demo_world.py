"""The demo world generator: determinism, internal consistency, and every input format readable
by the libraries real users read them with."""

import bz2
import gzip
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from urllib.parse import urljoin

import mwparserfromhell
import pyarrow.parquet as pq
import pytest
import yaml
from fastwarc.warc import ArchiveIterator as FastIterator
from fastwarc.warc import WarcRecordType
from PIL import Image, ImageOps
from selectolax.lexbor import LexborHTMLParser as HTMLParser
from warcio.archiveiterator import ArchiveIterator

from clipforge.demo import concepts
from clipforge.demo.world import WorldConfig, generate, load_manifest

from conftest import shared_file


def tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = generate(WorldConfig(out=tmp_path / "a", seed=3, size=40, port=18001, heldout_per_class=2))
    b = generate(WorldConfig(out=tmp_path / "b", seed=3, size=40, port=18001, heldout_per_class=2))
    c = generate(WorldConfig(out=tmp_path / "c", seed=4, size=40, port=18001, heldout_per_class=2))
    ta, tb, tc = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b"), tree_bytes(tmp_path / "c")
    assert ta == tb and a == b
    assert ta["site/img/00/00000.jpg" if "site/img/00/00000.jpg" in ta else sorted(ta)[0]]
    assert ta["crawl/demo-00000.warc.gz"] != tc["crawl/demo-00000.warc.gz"]
    assert ta["truth.parquet"] != tc["truth.parquet"]
    assert not list(tmp_path.glob("*.tmp-*")), "the temporary build directory was left behind"


def test_manifest_lists_every_file_with_its_hash(world_dir):
    import hashlib

    m = load_manifest(world_dir)
    on_disk = {k: hashlib.sha256(v).hexdigest() for k, v in tree_bytes(world_dir).items() if k != "manifest.json"}
    assert on_disk == m["files"]
    assert m["base_url"] == f"http://127.0.0.1:{m['port']}"
    for rel in m["inputs"].values():
        assert list(world_dir.glob(rel)), rel


def pages(world_dir):
    return sorted((world_dir / "site" / "pages").glob("p*.html"))


def decode_page(path):
    raw = path.read_bytes()
    m = re.search(rb'<meta charset="([^"]+)"', raw)
    # the header-only pages are looked up in routes.json, as a client would read the header
    routes = json.loads((path.parents[2] / "routes.json").read_text())
    header = routes.get("/pages/" + path.name, {}).get("content_type", "")
    charset = m.group(1).decode() if m else (header.split("charset=")[-1] if "charset=" in header else "utf-8")
    return raw.decode(charset)


def test_pages_hold_the_truth_and_every_src_resolves(world_dir):
    m = load_manifest(world_dir)
    truth = pq.read_table(world_dir / "truth.parquet").to_pylist()
    by_page = defaultdict(list)
    for t in truth:
        by_page[t["page_url"]].append(t)
    styles = Counter()
    for path in pages(world_dir):
        page_url = f"{m['base_url']}/pages/{path.name}"
        tree = HTMLParser(decode_page(path))
        base = tree.css_first("base")
        base_url = urljoin(page_url, base.attributes["href"]) if base else page_url
        imgs = [i for i in tree.css("img") if not i.attributes["src"].startswith("data:")]
        expected = by_page[page_url]
        assert len(imgs) == len(expected), path.name
        for img, t in zip(imgs, expected):
            src = img.attributes["src"]
            assert src == t["src"]
            assert urljoin(base_url, src) == t["url"], (path.name, src)
            text = img.attributes.get("alt") if t["text_attr"] == "alt" else img.attributes.get("title")
            assert text == t["text"]
            styles["base" if base else "absolute" if src.startswith("http") else
                   "protocol" if src.startswith("//") else "root" if src.startswith("/") else "relative"] += 1
    assert set(styles) == {"base", "absolute", "protocol", "root", "relative"}, styles
    langs = Counter(t["lang"] for t in truth)
    assert {"en", "de", "fr", "es", "junk", None} <= set(langs)
    assert Counter(t["text_attr"] for t in truth).keys() == {"alt", "title", "none"}
    assert any("â€" in (t["text"] or "") for t in truth), "no mojibake alt in the world"
    kinds = Counter(t["kind"] for t in truth)
    assert kinds["duplicate"] > 0 and all(kinds[c["name"]] == 1 for c in m["messy"]
                                          if c["name"] not in ("redirect_hop", "redirect_loop_b"))
    assert any(i.attributes["src"].startswith("data:") for p in pages(world_dir)
               for i in HTMLParser(decode_page(p)).css("img"))


def test_non_utf8_pages_declare_their_charset(world_dir):
    routes = json.loads((world_dir / "routes.json").read_text())
    seen = Counter()
    for path in pages(world_dir):
        raw = path.read_bytes()
        meta = re.search(rb'<meta charset="([^"]+)"', raw)
        header = routes.get("/pages/" + path.name, {}).get("content_type", "text/html; charset=utf-8")
        assert meta or "charset=" in header, path.name
        seen[(meta.group(1).decode() if meta else header.split("charset=")[1])] += 1
    assert len(seen) >= 2, seen


def warc_records(path, lib):
    out = []
    with open(path, "rb") as f:
        if lib == "warcio":
            for rec in ArchiveIterator(f):
                out.append((rec.rec_type, rec.rec_headers.get_header("WARC-Target-URI"),
                            rec.http_headers.get_statuscode() if rec.http_headers else None,
                            rec.content_stream().read()))
        else:
            for rec in FastIterator(f, parse_http=True):
                kind = next(name for name in ("response", "request", "warcinfo", "metadata")
                            if rec.record_type == getattr(WarcRecordType, name))
                status = str(rec.http_headers.status_code) if rec.http_headers else None
                out.append((kind, rec.headers.get("WARC-Target-URI"), status, rec.reader.read()))
    return out


@pytest.mark.parametrize("lib", ["warcio", "fastwarc"])
def test_warc_opens_and_holds_the_served_pages(world_dir, demo_server, lib):
    import requests

    m = load_manifest(world_dir)
    recs = warc_records(world_dir / m["inputs"]["warc"], lib)
    assert recs[0][0] == "warcinfo"
    responses = [r for r in recs if r[0] == "response"]
    assert len(responses) == m["counts"]["captures"]
    assert sum(r[0] == "request" for r in recs) == len(responses)
    with requests.Session() as s:
        for kind, uri, status, body in responses:
            got = s.get(uri, timeout=5)
            assert str(got.status_code) == status, uri
            if status == "200":
                assert got.content == body, uri


@pytest.mark.parametrize("lib", ["warcio", "fastwarc"])
def test_wat_links_match_the_pages(world_dir, lib):
    m = load_manifest(world_dir)
    truth = pq.read_table(world_dir / "truth.parquet").to_pylist()
    recs = warc_records(world_dir / m["inputs"]["wat"], lib)
    assert recs[0][0] == "warcinfo"
    metas = [json.loads(r[3]) for r in recs if r[0] == "metadata"]
    assert len(metas) == 2 * m["counts"]["captures"]
    pages_seen = 0
    for env in metas:
        payload = env["Envelope"]["Payload-Metadata"]
        uri = env["Envelope"]["WARC-Header-Metadata"]["WARC-Target-URI"]
        if "HTTP-Response-Metadata" not in payload:
            assert "HTTP-Request-Metadata" in payload
            continue
        links = payload["HTTP-Response-Metadata"]["HTML-Metadata"]["Links"]
        imgs = [(l["url"], l.get("alt", l.get("title"))) for l in links
                if l["path"] == "IMG@/src" and not l["url"].startswith("data:")]
        expected = [(t["src"], t["text"]) for t in truth if t["page_url"] == uri]
        assert imgs == expected, uri
        pages_seen += bool(expected)
    assert pages_seen == m["counts"]["pages"]
    # relative srcs stay relative, as in Common Crawl's WAT files
    assert any(not url.startswith(("http", "//")) for env in metas
               for l in env["Envelope"]["Payload-Metadata"].get("HTTP-Response-Metadata", {})
               .get("HTML-Metadata", {}).get("Links", []) for url in [l["url"]])


def test_url_list_is_img2dataset_input(world_dir):
    m = load_manifest(world_dir)
    t = pq.read_table(world_dir / "crawl" / "urls.parquet")
    assert t.column_names == ["url", "caption", "page_url"]
    rows = t.to_pylist()
    truth = [r for r in pq.read_table(world_dir / "truth.parquet").to_pylist() if r["text"] is not None]
    assert len(rows) == len(truth)
    assert all(r["url"].startswith(m["base_url"] + "/") for r in rows)


def test_wiki_dump_is_mediawiki_xml_with_real_markup(world_dir):
    data = bz2.decompress((world_dir / "wiki" / "demowiki-pages-articles.xml.bz2").read_bytes())
    ns = {"mw": "http://www.mediawiki.org/xml/export-0.10/"}
    root = ET.fromstring(data)
    pages_ = root.findall("mw:page", ns)
    articles = [p for p in pages_ if p.findtext("mw:ns", namespaces=ns) == "0" and p.find("mw:redirect", ns) is None]
    redirects = [p for p in pages_ if p.find("mw:redirect", ns) is not None]
    other_ns = [p for p in pages_ if p.findtext("mw:ns", namespaces=ns) != "0"]
    assert len(articles) == load_manifest(world_dir)["counts"]["wiki_articles"]
    assert redirects and other_ns
    text = "\n".join(p.find("mw:revision/mw:text", ns).text for p in articles)
    for markup in ("{{", "[[", "<ref>", "{|", "[[Category:", "[[File:", "'''", "== "):
        assert markup in text, markup
    prose = mwparserfromhell.parse(text).strip_code()
    words = Counter(re.findall(r"[A-Za-z]+", prose))
    for word in list(concepts.SHAPES) + list(concepts.COLOURS):
        assert words[word] >= 10, (word, words[word])


def test_wiki_dump_has_the_same_shape_as_a_real_dump(world_dir):
    real = bz2.open(shared_file("wiki/enwiki-pages-articles-excerpt.xml.bz2")).read(4000).decode()
    ours = bz2.decompress((world_dir / "wiki" / "demowiki-pages-articles.xml.bz2").read_bytes()).decode()
    for tag in ("<mediawiki", "<siteinfo>", "<namespaces>", "<page>", "<title>", "<ns>", "<revision>", "<text"):
        assert tag in real and tag in ours


def test_pageviews_are_wikimedia_hourly_files(world_dir):
    totals = Counter()
    files = sorted((world_dir / "pageviews").glob("pageviews-*.gz"))
    assert len(files) >= 2
    for f in files:
        for line in gzip.open(f, "rt", encoding="utf-8"):
            domain, title, views, size = line.rstrip("\n").split(" ")
            # Wikimedia's pageview files leave the response-size field at 0
            assert int(views) > 0 and size == "0" and " " not in title
            if domain == "en":
                totals[title] += int(views)
    assert totals["Circle"] >= 70 and totals["Obscure_shape_article"] < 70
    assert any(":" in t for t in totals) and any("_" in t for t in totals)


def test_wordnet_lexicon_follows_open_english_wordnet_yaml(world_dir):
    ours = yaml.safe_load((world_dir / "wordnet" / "noun.demo.yaml").read_text())
    members = {m for s in ours.values() for m in s["members"]}
    assert set(concepts.SHAPES) <= members and "polka dot" in members
    real = yaml.safe_load(shared_file("wordnet/oewn-noun.object.yaml").read_text())
    real_key, real_entry = next(iter(real.items()))
    for key, entry in ours.items():
        assert re.fullmatch(r"\d{8}-n", key) and re.fullmatch(r"\d{8}-n", real_key)
        assert {"definition", "members", "partOfSpeech"} <= entry.keys() & real_entry.keys()
        assert isinstance(entry["members"], list) and isinstance(entry["definition"], list)


def test_images_decode_and_cover_formats(world_dir):
    imgs = sorted((world_dir / "site" / "img").glob("[0-9]*/*"))
    formats, alpha, rotated = Counter(), 0, 0
    for p in imgs:
        im = Image.open(p)
        im.load()
        formats[im.format] += 1
        alpha += im.mode == "RGBA"
        if im.getexif().get(0x0112) == 6:
            rotated += 1
            assert ImageOps.exif_transpose(im).size == im.size[::-1]
    assert len(imgs) == load_manifest(world_dir)["size"]
    assert formats["JPEG"] > formats["PNG"] > 0 and formats["WEBP"] > 0
    assert alpha > 0 and rotated > 0


def test_heldout_sets_are_labelled_imagefolders(world_dir):
    for kind, classes in (("shape", concepts.SHAPES), ("colour", concepts.COLOURS)):
        root = world_dir / "heldout" / kind
        assert sorted(p.name for p in root.iterdir()) == sorted(classes)
        for cls in classes:
            files = sorted((root / cls).glob("*.jpg"))
            assert len(files) == 3
            Image.open(files[0]).load()


def test_some_heldout_images_are_on_the_web_altered(world_dir):
    """The planted overlap: one held-out image per class is published on a page (cropped,
    resized, recompressed), linked with an English alt; the overlap search's hash finds each
    one from its held-out file, and no held-out image is planted twice."""
    import numpy as np
    from PIL import Image

    from clipforge.schemas.phash import crop_probes, distance, phash

    m = load_manifest(world_dir)
    planted = m["planted"]
    classes = {p["heldout"].rsplit("/", 1)[0] for p in planted}
    assert len(planted) == m["counts"]["planted"] == len(classes) > 0
    truth = pq.read_table(world_dir / "truth.parquet").to_pylist()
    linked = {t["url"]: t for t in truth if t["kind"] == "planted_overlap"}
    for p in planted:
        t = linked[p["url"]]
        assert t["text_attr"] == "alt" and t["lang"] == "en" and t["text"]
        held = np.asarray(Image.open(world_dir / p["heldout"]).convert("RGB"))
        web = Image.open(world_dir / "site" / p["url"].split("/", 3)[3]).convert("RGB")
        assert web.size != Image.open(world_dir / p["heldout"]).size  # altered, not a byte copy
        stored = np.asarray(web.resize((round(web.width * 64 / min(web.size)), round(web.height * 64 / min(web.size)))))
        assert min(distance(h, phash(stored)) for h in crop_probes(held)) <= 4, p
