"""The report's figures, as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

KEPT, DROP, BEFORE, AFTER = "#2a9d8f", "#e76f51", "#8d99ae", "#264653"


def _save(fig, path: Path):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def funnel(funnels: list[dict], path: Path):
    fig, axes = plt.subplots(len(funnels), 1, figsize=(9, 1.2 + 0.36 * sum(len(f["dropped"]) + 1 for f in funnels)),
                             squeeze=False)
    for ax, f in zip(axes[:, 0], funnels):
        labels = ["kept"] + [d["reason"] for d in f["dropped"]]
        counts = [f["kept"]] + [d["count"] for d in f["dropped"]]
        y = np.arange(len(labels))[::-1]
        ax.barh(y, counts, color=[KEPT] + [DROP] * len(f["dropped"]))
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xscale("symlog", linthresh=1)
        for yi, c in zip(y, counts):
            ax.text(c, yi, f" {c:,} ({100 * c / max(1, f['input']):.1f}%)", va="center", fontsize=7)
        ax.set_title(f"{f['stage']}: {f['input']:,} in, {f['kept']:,} kept (unit: {f['unit']})", fontsize=9, loc="left")
        ax.set_xlim(0.8, max(counts + [1]) * 8)
    return _save(fig, path)


def balancing(b: dict, path: Path):
    fig, ax = plt.subplots(figsize=(8, 4.8))
    before = np.asarray(b["matches_sorted"], dtype=float)
    after = np.asarray(b["kept_sorted"], dtype=float)
    ranks = np.arange(1, len(before) + 1)
    ax.loglog(ranks, np.maximum(before, 0.8), color=BEFORE, lw=2, label="matches before balancing")
    ax.loglog(ranks, np.maximum(after, 0.8), color=AFTER, lw=2, label="kept after balancing")
    if b["t"]:
        ax.axhline(b["t"], color=DROP, ls="--", lw=1.2, label=f"t = {b['t']:,}")
        if b["head_queries"]:
            ax.axvline(b["head_queries"] + 0.5, color="#999", ls=":", lw=1)
            ax.text(b["head_queries"] + 0.5, ax.get_ylim()[1] * 0.6, f"  head: {b['head_queries']} queries",
                    fontsize=8, color="#555")
    ax.set_xlabel("query rank (by matches before balancing)")
    ax.set_ylabel("pairs")
    ax.set_title(f"Per-query counts: head holds {100 * b['head_share_before']:.0f}% of matches before, "
                 f"{100 * b['head_share_after']:.0f}% after", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    return _save(fig, path)


def languages(rows: dict, path: Path, top: int = 20):
    """Pairs per language after deduplication (before balancing) and kept after, log scale."""
    items = [(lang, r) for lang, r in rows.items() if r["deduplicated"]][:top]
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(items) + 2), 4))
    x = np.arange(len(items))
    before = [r["deduplicated"] for _, r in items]
    after = [r["kept"] for _, r in items]
    ax.bar(x - 0.2, before, 0.4, color=BEFORE, label="matched (after dedup)")
    ax.bar(x + 0.2, after, 0.4, color=AFTER, label="kept after balancing")
    for i, (_, r) in enumerate(items):
        if r.get("t") is not None:
            ax.text(i, max(before[i], 1) * 1.15, f"t={r['t']:,}", ha="center", fontsize=7, color="#555")
    ax.set_yscale("log")
    ax.set_xticks(x, [lang for lang, _ in items], fontsize=8)
    ax.set_ylabel("pairs")
    ax.set_title("Pairs per language before and after balancing (each language at its own t)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="major", alpha=0.3)
    return _save(fig, path)


def bars(groups: list[tuple[str, dict]], path: Path, title: str, top: int = 15):
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False)
    for ax, (name, counts) in zip(axes[0], groups):
        items = list(counts.items())[:top]
        labels = [str(k) for k, _ in items][::-1]
        values = [v for _, v in items][::-1]
        ax.barh(range(len(values)), values, color=AFTER)
        ax.set_yticks(range(len(values)), [textwrap.shorten(x, 28) for x in labels], fontsize=8)
        ax.set_title(name, fontsize=9)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:,}", va="center", fontsize=7)
        ax.set_xlim(0, max(values + [1]) * 1.25)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def histograms(hists: list[tuple[str, dict, str]], path: Path):
    fig, axes = plt.subplots(1, len(hists), figsize=(4.2 * len(hists), 3.4), squeeze=False)
    for ax, (title, h, xlabel) in zip(axes[0], hists):
        edges = h["edges"]
        labels = [f"{edges[i]:g}-{edges[i + 1]:g}" if edges[i + 1] < 1e8 else f">{edges[i]:g}"
                  for i in range(len(edges) - 1)]
        ax.bar(range(len(h["counts"])), h["counts"], color=AFTER)
        ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
        stats = f"n={h['n']:,}" + (f", mean {h['mean']:.1f}" if h["mean"] is not None else "")
        ax.set_title(f"{title}\n{stats}", fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
    return _save(fig, path)


def shards(tars: list[dict], path: Path):
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    names = [t["shard"].removesuffix(".tar") for t in tars]
    x = np.arange(len(tars))
    axes[0].bar(x, [t["samples"] for t in tars], color=AFTER)
    axes[0].set_title("samples per shard", fontsize=9)
    axes[1].bar(x, [(t["tar_bytes"] or 0) / 2**20 for t in tars], color=BEFORE)
    axes[1].set_title("MiB per shard", fontsize=9)
    for ax in axes:
        if len(tars) <= 40:
            ax.set_xticks(x, names, rotation=60, fontsize=7)
    return _save(fig, path)


def contact_sheet(samples: list[dict], path: Path, cols: int = 6, thumb: int = 160):
    """A grid of thumbnails with their captions under them (for the Markdown report)."""
    font = ImageFont.load_default(size=11)
    rows = max(1, -(-len(samples) // cols))
    cell_h = thumb + 44
    sheet = Image.new("RGB", (cols * (thumb + 10) + 10, rows * cell_h + 10), "white")
    draw = ImageDraw.Draw(sheet)
    for i, s in enumerate(samples):
        x, y = 10 + (i % cols) * (thumb + 10), 10 + (i // cols) * cell_h
        try:
            with Image.open(io.BytesIO(s["jpg"])) as im:
                im = im.convert("RGB")
                im.thumbnail((thumb, thumb))
                sheet.paste(im, (x + (thumb - im.width) // 2, y + (thumb - im.height) // 2))
        except Exception:
            draw.rectangle((x, y, x + thumb, y + thumb), outline="red")
        for j, line in enumerate(textwrap.wrap(s["caption"], 26)[:3]):
            draw.text((x, y + thumb + 2 + 13 * j), line, fill="black", font=font)
    sheet.save(path)
    return path.name
