"""Time two implementations of the same job on the same input and report their ratio."""

import gc
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata


@dataclass
class Comparison:
    """One benchmark: our implementation and the peer's, each a zero-argument callable that
    processes ``items`` units of work (images, pairs, samples) and returns anything."""

    name: str
    ours: callable
    peer: callable
    peer_name: str
    items: int
    unit: str = "items"
    input: str = ""
    repeats: int = 3
    notes: str = ""
    setup: callable = None  # run before every timed call of either side (not timed)


@dataclass
class Result:
    name: str
    peer_name: str
    unit: str
    items: int
    input: str
    ours_s: list = field(default_factory=list)
    peer_s: list = field(default_factory=list)
    notes: str = ""

    @property
    def ours_rate(self):
        return self.items / statistics.median(self.ours_s)

    @property
    def peer_rate(self):
        return self.items / statistics.median(self.peer_s)

    @property
    def ratio(self):
        """How many times faster clipforge is than the peer (median of the repeats)."""
        return statistics.median(self.peer_s) / statistics.median(self.ours_s)


def _time(fn, setup):
    if setup:
        setup()
    gc.collect()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(comparison, log=print):
    """Alternate ours and the peer's runs so that drift on the machine hits both alike."""
    c = comparison
    r = Result(c.name, c.peer_name, c.unit, c.items, c.input, notes=c.notes)
    for i in range(c.repeats):
        r.ours_s.append(_time(c.ours, c.setup))
        r.peer_s.append(_time(c.peer, c.setup))
        log(f"  {c.name} [{i + 1}/{c.repeats}] clipforge {r.ours_s[-1]:.3f} s, {c.peer_name} {r.peer_s[-1]:.3f} s")
    return r


def machine():
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(mem, 1),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def _version(pkg):
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def markdown(results, command, packages=("clipforge", "img2dataset", "apache-beam", "torch", "webdataset")):
    m = machine()
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with `{command}` on {m['cpu']}, "
        f"{m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, {m['os']}.",
        "Versions: " + ", ".join(f"{p} {_version(p)}" for p in packages) + ".",
        "",
        "Each row runs clipforge and the peer on the same input in the same process run, alternating, "
        "and reports medians. Ratio = peer time / clipforge time (above 1: clipforge is faster).",
        "",
        "| benchmark | input | clipforge | peer | peer rate | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.name} | {r.input} | {r.ours_rate:,.0f} {r.unit}/s | {r.peer_name} | "
                     f"{r.peer_rate:,.0f} {r.unit}/s | **{r.ratio:.2f}x** |")
    notes = [f"- **{r.name}**: {r.notes}" for r in results if r.notes]
    if notes:
        lines += ["", "Notes:", ""] + notes
    return "\n".join(lines) + "\n"
