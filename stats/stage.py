"""`clipforge stats`: find the stages' outputs, compute the numbers, draw, write the report."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from clipforge.schemas.files import read_stats, write_json_atomic
from clipforge.stats import collect, plots, report
from clipforge.errors import InputError, MissingInput

MARKERS = {"queries": "queries_stats.json", "pairs": "crawl_stats.json", "shards": "shard_stats.json",
           "overlap": "overlap.json"}


@dataclass
class StatsConfig:
    data: list = field(default_factory=list)   # stage output directories, or directories holding them
    out: str = "reports"
    samples: int = 36                           # contact sheet
    seed: int = 0


def find_outputs(dirs) -> dict:
    """{"queries"|"pairs"|"shards": directory} from the given directories or their children."""
    found = {}
    for d in map(Path, dirs):
        if not d.is_dir():
            raise MissingInput(f"{d}: no such directory")
        for candidate in [d] + sorted(p for p in d.iterdir() if p.is_dir()):
            for kind, marker in MARKERS.items():
                if (candidate / marker).exists():
                    if kind in found and found[kind] != candidate:
                        raise InputError(f"two {kind} outputs: {found[kind]} and {candidate}; pass one")
                    found[kind] = candidate
    if not found:
        raise InputError(f"no stage outputs in {', '.join(map(str, dirs))} (looked for {', '.join(MARKERS.values())})")
    return found


def overlap_summary(directory, pairs_shown=20) -> dict:
    """The overlap analysis (``clipforge overlap``'s overlap.json) as the report shows it."""
    try:
        o = json.loads((Path(directory) / "overlap.json").read_text(encoding="utf-8"))
        sets = {name: {"images": v["images"], "with_overlap": v["with_overlap"],
                       "overlap_fraction": v["overlap_fraction"], "pairs": v["pairs"][:pairs_shown]}
                for name, v in o["sets"].items()}
        return {"max_distance": o["max_distance"], "shard_images": o["shard_images"],
                "excluded_keys": o["excluded_keys"], "sets": sets}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{directory}/overlap.json: not an overlap report ({e})") from None


def run(cfg: StatsConfig, log=print) -> dict:
    t0 = time.time()
    found = find_outputs(cfg.data)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    stats: dict = {"inputs": {k: str(v) for k, v in found.items()},
                   "subtitle": f"{', '.join(f'{k}: {v}' for k, v in found.items())} — written "
                               f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"}
    stage_stats = {k: read_stats(v / MARKERS[k]) for k, v in found.items() if k != "overlap"}
    stats["funnels"] = [collect.funnel(stage_stats[k]) for k in ("queries", "pairs", "shards") if k in stage_stats]
    if "pairs" in found:
        log(f"stats: pairs in {found['pairs']}")
        stats["pairs"] = collect.pairs(found["pairs"])
        if (found["pairs"] / "query_counts.parquet").exists():
            stats["balancing"] = collect.balancing(found["pairs"], found.get("queries"), stage_stats["pairs"])
    if "shards" in found:
        log(f"stats: shards in {found['shards']}")
        stats["shards"] = collect.shards(found["shards"])
    if "overlap" in found:
        log(f"stats: overlap with evaluation sets in {found['overlap']}")
        stats["overlap"] = overlap_summary(found["overlap"])
    if "pairs" in stage_stats and "shards" in stage_stats:
        stats["chain"] = {"image_links": stage_stats["pairs"]["input"], "pairs": stage_stats["pairs"]["kept"],
                          "samples": stage_stats["shards"]["kept"]}

    drawn = {}
    if stats["funnels"]:
        drawn["funnel"] = plots.funnel(stats["funnels"], out / "funnel.png")
    if "balancing" in stats:
        drawn["balancing"] = plots.balancing(stats["balancing"], out / "balancing.png")
        if stats["balancing"].get("languages"):
            drawn["languages"] = plots.languages(stats["balancing"]["languages"], out / "languages.png")
    groups = []
    if "sources" in stats.get("balancing", {}):
        groups.append(("pair-query matches kept, by query source",
                       {k: v["kept"] for k, v in sorted(stats["balancing"]["sources"].items(), key=lambda kv: -kv[1]["kept"])}))
    if "pairs" in stats:
        groups += [("pairs by language", stats["pairs"]["languages"]), ("pairs by input", stats["pairs"]["input_formats"])]
    if groups:
        drawn["sources"] = plots.bars(groups, out / "sources.png", "Where the pairs come from")
    hists = []
    if "pairs" in stats:
        hists.append(("caption length", stats["pairs"]["caption_chars"], "characters"))
    if "shards" in stats:
        s = stats["shards"]
        hists += [("original image, longer side", s["original_longer_side"], "pixels"),
                  ("stored image, longer side", s["final_longer_side"], "pixels"),
                  ("original aspect ratio (w/h)", s["original_aspect_ratio"], "width / height")]
    if hists:
        drawn["sizes"] = plots.histograms(hists, out / "sizes.png")
    samples = []
    if "shards" in stats:
        s = stats["shards"]
        if s["failures_by_reason"]:
            drawn["failures"] = plots.bars([("failures by reason", {r["reason"]: r["count"] for r in s["failures_by_reason"]}),
                                            ("failures by host", {h["host"]: h["count"] for h in s["failures_by_host"]})],
                                           out / "failures.png", "Why pairs got no image")
        drawn["shards"] = plots.shards(s["shards"], out / "shards.png")
        samples = collect.read_samples(found["shards"], collect.sample_keys(found["shards"], cfg.samples, cfg.seed))
        if samples:
            drawn["contact_sheet"] = plots.contact_sheet(samples, out / "contact_sheet.png")
        stats["contact_sheet"] = [{"key": x["key"], "shard": x["shard"], "caption": x["caption"]} for x in samples]
    if "overlap" in stats and (found["overlap"] / "overlap.png").exists():
        shutil.copyfile(found["overlap"] / "overlap.png", out / "overlap.png")
        drawn["overlap"] = "overlap.png"
    stats["plots"] = drawn
    stats["seconds"] = round(time.time() - t0, 2)
    report.write(stats, drawn, samples, out)
    write_json_atomic(out / "stats.json", stats)
    return stats
