"""report.html (self-contained: styles inline, images as data: URIs) and report.md (the same
sections, images as the PNG files beside it), both from stats.json's content."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

SECTIONS = ("Funnel", "Balancing", "Sources and languages", "Captions and images", "Failures", "Shards",
            "Overlap with evaluation sets", "Contact sheet")

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:24px;color:#222}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:36px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin:0 0 16px}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #ddd;border-radius:8px;padding:10px 14px;min-width:140px}.card b{display:block;font-size:22px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}img.plot{max-width:100%;height:auto;border:1px solid #eee}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
figure{margin:0;font-size:12px}figure img{width:100%;height:150px;object-fit:contain;background:#f4f4f4}
figcaption{color:#333;overflow-wrap:anywhere}nav a{margin-right:12px}
"""


def _n(x) -> str:
    return f"{x:,}" if isinstance(x, int) else (f"{x:.3g}" if isinstance(x, float) else html.escape(str(x)))


def _pct(x) -> str:
    return f"{100 * x:.1f}%"


class Doc:
    """Writes the same content as HTML and Markdown."""

    def __init__(self, out: Path):
        self.out, self.h, self.m = out, [], []

    def heading(self, text):
        anchor = text.lower().replace(" ", "-")
        self.h.append(f'<h2 id="{anchor}">{html.escape(text)}</h2>')
        self.m.append(f"\n## {text}\n")

    def para(self, text):
        self.h.append(f"<p>{html.escape(text)}</p>")
        self.m.append(f"{text}\n")

    def table(self, header, rows, numeric=()):
        th = "".join(f'<th class="{"n" if i in numeric else ""}">{html.escape(h)}</th>' for i, h in enumerate(header))
        body = "".join("<tr>" + "".join(f'<td class="{"n" if i in numeric else ""}">{_n(c)}</td>'
                                        for i, c in enumerate(r)) + "</tr>" for r in rows)
        self.h.append(f"<table><tr>{th}</tr>{body}</table>")
        self.m.append("| " + " | ".join(header) + " |\n|" + "|".join("---:" if i in numeric else "---"
                                                                    for i in range(len(header))) + "|")
        for r in rows:
            self.m.append("| " + " | ".join(str(_n(c)).replace("|", "\\|") for c in r) + " |")
        self.m.append("")

    def image(self, name, alt):
        data = base64.b64encode((self.out / name).read_bytes()).decode()
        self.h.append(f'<p><img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>')
        self.m.append(f"![{alt}]({name})\n")

    def raw_html(self, text):
        self.h.append(text)


def _thumb(jpg: bytes, size=300) -> str:
    with Image.open(io.BytesIO(jpg)) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()


def write(stats: dict, plots: dict, samples: list[dict], out: Path, title: str = "clipforge dataset report"):
    d = Doc(out)
    f = {x["stage"]: x for x in stats.get("funnels", [])}
    cards = []
    if "crawl" in f:
        cards.append(("image links read", f["crawl"]["input"]))
        cards.append(("pairs kept", f["crawl"]["kept"]))
    if "shard" in f:
        cards.append(("samples in shards", f["shard"]["kept"]))
    if "balancing" in stats:
        cards.append(("queries matched", stats["balancing"]["queries_matched"]))
    if "shards" in stats:
        cards.append(("shards", stats["shards"]["shard_count"]))
    d.raw_html('<div class="cards">' + "".join(f"<div class=card><b>{_n(v)}</b>{html.escape(k)}</div>"
                                               for k, v in cards) + "</div>")
    d.m.append(" · ".join(f"**{_n(v)}** {k}" for k, v in cards) + "\n")

    if stats.get("funnels"):
        d.heading("Funnel")
        d.para("Every record of every stage ends kept or under one reason; the numbers are the stages' own "
               "*_stats.json.")
        for x in stats["funnels"]:
            d.table([f"{x['stage']} (unit: {x['unit']})", "count", "share of input"],
                    [["input", x["input"], "100.0%"], ["kept", x["kept"], _pct(x["kept_share"])]] +
                    [[r["reason"], r["count"], _pct(r["share"])] for r in x["dropped"]], numeric=(1, 2))
        for x in stats["funnels"]:
            if x.get("pages"):
                pg = x["pages"]
                d.para(f"The {x['stage']} read {pg['responses']:,} web-archive responses (WARC response records, "
                       f"WAT response envelopes); image links come only from those read as HTML"
                       + (f"; {pg['truncated']:,} pages were cut at a size or nesting cap and read up to it."
                          if pg["truncated"] else "."))
                d.table(["response records", "count", "share"],
                        [[b["bucket"], b["count"], _pct(b["share"])] for b in pg["buckets"]], numeric=(1, 2))
        if "chain" in stats:
            c = stats["chain"]
            d.para(f"From {c['image_links']:,} image links to {c['pairs']:,} pairs to {c['samples']:,} shard samples "
                   f"({_pct(c['samples'] / max(1, c['image_links']))} of the links).")
        d.image(plots["funnel"], "funnel of each stage")

    if "balancing" in stats:
        b = stats["balancing"]
        d.heading("Balancing")
        d.para(f"t = {b['t']:,}: a query matched by more than t pairs (head) keeps about t of them; the others (tail) "
               f"keep all. {b['head_queries']:,} head and {b['tail_queries']:,} tail queries of "
               f"{b['queries_matched']:,} matched" + (f" ({b['queries_unmatched']:,} of {b['queries_total']:,} queries "
                                                       f"matched nothing)" if "queries_total" in b else "") + ".")
        d.table(["", "queries", "pair matches before", "share before", "kept after", "share after"],
                [["head (> t)", b["head_queries"], round(b["head_share_before"] * b["matches_total"]),
                  _pct(b["head_share_before"]), round(b["head_share_after"] * b["kept_total"]), _pct(b["head_share_after"])],
                 ["tail", b["tail_queries"], b["matches_total"] - round(b["head_share_before"] * b["matches_total"]),
                  _pct(1 - b["head_share_before"]), b["kept_total"] - round(b["head_share_after"] * b["kept_total"]),
                  _pct(1 - b["head_share_after"])]], numeric=(1, 2, 3, 4, 5))
        d.image(plots["balancing"], "per-query counts before and after balancing, log-log, with t")
        if b.get("languages"):
            share = b.get("tail_share_en")
            d.para("Worldwide curation: each text was matched against its own language's list, and each language "
                   "balanced at its own t" + (f", the one whose tail share is nearest English's ({_pct(share)} of "
                                              f"English matches belong to queries below t = {b['t']:,})"
                                              if share is not None else " (no English match: t for all)") + ".")
            rows = [[lang, r["entries"], r["identified"], r["matched"], r["deduplicated"],
                     "" if r["t"] is None else r["t"], r["kept"], _pct(r["kept"] / max(1, r["deduplicated"]))]
                    for lang, r in b["languages"].items() if r["identified"] or r["entries"]]
            d.table(["language", "list entries", "texts identified", "matched", "after dedup (before balancing)",
                     "t", "kept after balancing", "kept share"], rows, numeric=(1, 2, 3, 4, 5, 6, 7))
            if "languages" in plots:
                d.image(plots["languages"], "pairs per language before and after balancing")
        d.para("Top queries by matches:")
        d.table(["query", "matches before", "kept after"], [[q["query"], q["matches"], q["kept"]] for q in b["top"]],
                numeric=(1, 2))

    if "balancing" in stats and "sources" in stats["balancing"] or "pairs" in stats:
        d.heading("Sources and languages")
        if "sources" in stats.get("balancing", {}):
            src = stats["balancing"]["sources"]
            d.table(["query source", "queries", "matched queries", "pair matches", "kept after balancing"],
                    [[s, v["queries"], v["matched_queries"], v["matches"], v["kept"]] for s, v in
                     sorted(src.items(), key=lambda kv: -kv[1]["matches"])], numeric=(1, 2, 3, 4))
        if "pairs" in stats:
            p = stats["pairs"]
            d.table(["language", "pairs", "share"], [[k, v, _pct(v / max(1, p["pairs"]))]
                                                      for k, v in list(p["languages"].items())[:20]], numeric=(1, 2))
            d.table(["input format", "pairs"], list(p["input_formats"].items()), numeric=(1,))
        if "sources" in plots:
            d.image(plots["sources"], "pairs by query source, language and input")

    if "pairs" in stats or "shards" in stats:
        d.heading("Captions and images")
        if "pairs" in stats:
            h = stats["pairs"]["caption_chars"]
            d.para(f"Captions: {h['n']:,}, {h['min']}–{h['max']} characters, mean {h['mean']:.1f}." if h["n"] else
                   "No captions.")
        if "shards" in stats:
            s = stats["shards"]
            o, fin = s["original_longer_side"], s["final_longer_side"]
            if o["n"]:
                d.para(f"Images: original longer side {o['min']:.0f}–{o['max']:.0f} px (mean {o['mean']:.0f}); "
                       f"stored longer side mean {fin['mean']:.0f} px.")
        if "sizes" in plots:
            d.image(plots["sizes"], "caption length, image size and aspect ratio histograms")

    if "shards" in stats:
        s = stats["shards"]
        d.heading("Failures")
        d.para(f"{s['attempted'] - s['samples']:,} of {s['attempted']:,} pairs got no sample.")
        d.table(["reason", "pairs", "share of attempted"], [[r["reason"], r["count"], _pct(r["share"])]
                                                            for r in s["failures_by_reason"]], numeric=(1, 2))
        d.table(["host", "failures", "most common reason"],
                [[h["host"], h["count"], h["top_reason"]] for h in s["failures_by_host"]], numeric=(1,))
        if "failures" in plots:
            d.image(plots["failures"], "failures by reason and by host")
        d.heading("Shards")
        total = sum(t["tar_bytes"] or 0 for t in s["shards"])
        d.para(f"{s['shard_count']:,} shards, {s['samples']:,} samples, {total / 2**20:,.1f} MiB.")
        d.table(["shard", "samples", "MiB"], [[t["shard"], t["samples"], round((t["tar_bytes"] or 0) / 2**20, 2)]
                                              for t in s["shards"][:50]], numeric=(1, 2))
        d.image(plots["shards"], "samples and bytes per shard")

    if "overlap" in stats:
        o = stats["overlap"]
        d.heading("Overlap with evaluation sets")
        d.para(f"Evaluation images with a near-duplicate among the {o['shard_images']:,} shard images (perceptual "
               f"hash within {o['max_distance']} bits): zero-shot accuracy on them measures memory, not transfer. "
               f"{o['excluded_keys']:,} shard samples are listed in exclude.txt for `clipforge train --exclude`.")
        d.table(["evaluation set", "images", "with a near-duplicate", "share"],
                [[name, v["images"], v["with_overlap"], _pct(v["overlap_fraction"])] for name, v in o["sets"].items()],
                numeric=(1, 2, 3))
        shown = [[name, p["eval"], p["key"], p["distance"]] for name, v in o["sets"].items() for p in v["pairs"]]
        if shown:
            d.table(["evaluation set", "image", "shard sample", "bits apart"], shown[:40], numeric=(3,))
        if "overlap" in plots:
            d.image(plots["overlap"], "closest evaluation images and shard samples, side by side")

    if samples:
        d.heading("Contact sheet")
        d.para(f"{len(samples)} random samples (seeded) with their captions.")
        d.raw_html('<div class="grid">' + "".join(
            f'<figure><img alt="{html.escape(s["key"])}" src="data:image/jpeg;base64,{_thumb(s["jpg"])}">'
            f"<figcaption>{html.escape(s['caption'])}</figcaption></figure>" for s in samples) + "</div>")
        d.m.append(f"![contact sheet]({plots['contact_sheet']})\n")

    nav = "".join(f'<a href="#{s.lower().replace(" ", "-")}">{s}</a>' for s in SECTIONS
                  if f'id="{s.lower().replace(" ", "-")}"' in "".join(d.h))
    sub = html.escape(stats.get("subtitle", ""))
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class=sub>{sub}</p><nav>{nav}</nav>" + "\n".join(d.h) +
            "<script>addEventListener('load',()=>{const i=[...document.images];"
            "document.body.dataset.imagesLoaded=i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;});"
            "</script></body></html>\n")
    (out / "report.html").write_text(page, encoding="utf-8")
    (out / "report.md").write_text(f"# {title}\n\n{stats.get('subtitle', '')}\n\n" + "\n".join(d.m) + "\n",
                                   encoding="utf-8")
