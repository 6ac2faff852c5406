"""Time two implementations of the same job on the same input and report their ratio."""

import gc
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata


@dataclass
class Comparison:
    """One benchmark: our implementation and the peer's, each a zero-argument callable that
    processes ``items`` units of work (images, pairs, samples) and returns anything, or an
    argv list run as a subprocess whose peak memory (the whole process tree) is recorded too."""

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
    verify: callable = None  # verify(side) after every timed call ("ours" or "peer"): raise if the work is wrong
    show_wall: bool = False  # BENCHMARKS.md also gives the median wall time of each side


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
    ours_rss: list = field(default_factory=list)  # peak bytes, for subprocess benchmarks
    peer_rss: list = field(default_factory=list)
    show_wall: bool = False
    measured: str = None  # "YYYY-MM-DD HH:MM UTC" of this row's run

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


def descendants(root):
    """A process and all its descendants, parents first (Linux /proc)."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, ()))
    return out


def _tree_rss(root):
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    total = 0
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            pass
    return total


def run_command(argv, interval=0.5):
    """Run argv; return (seconds, peak resident bytes of its process tree). Fails loudly."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        time.sleep(interval)
    seconds = time.perf_counter() - t
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({proc.returncode}): {err[-2000:]}")
    return seconds, peak


def _time(fn, setup):
    if setup:
        setup()
    gc.collect()
    if isinstance(fn, (list, tuple)):
        return run_command(fn)
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t, None


def run(comparison, log=print):
    """Alternate ours and the peer's runs so that drift on the machine hits both alike."""
    c = comparison
    r = Result(c.name, c.peer_name, c.unit, c.items, c.input, notes=c.notes, show_wall=c.show_wall)
    for i in range(c.repeats):
        for name, side, times, rss in (("ours", c.ours, r.ours_s, r.ours_rss), ("peer", c.peer, r.peer_s, r.peer_rss)):
            seconds, peak = _time(side, c.setup)
            if c.verify:
                c.verify(name)
            times.append(seconds)
            if peak is not None:
                rss.append(peak)
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


def _rate(x):
    return f"{x:,.2f}" if x < 100 else f"{x:,.0f}"


def markdown(sections, packages=("clipforge", "img2dataset", "apache-beam", "torch", "webdataset")):
    """BENCHMARKS.md from {module: {"measured", "command", "machine", "rows": [Result dicts]}}."""
    m = machine()
    lines = [
        "# Benchmarks",
        "",
        f"Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gib']} GiB, Python {m['python']}, {m['os']}.",
        "Versions: " + ", ".join(f"{p} {_version(p)}" for p in packages) + ".",
        "",
        "Each row runs clipforge and the peer on the same input in the same process run, alternating, "
        "and reports medians. Ratio = peer time / clipforge time (above 1: clipforge is faster). "
        "`make bench` runs every section; `make bench ARGS=NAME` reruns one and keeps the others.",
    ]
    for module, sec in sections.items():
        results = [Result(**row) for row in sec["rows"]]
        lines += ["", f"## {module.removeprefix('bench_')}", "",
                  f"Measured {sec['measured']} with `{sec['command']}` on {sec['machine']}.", ""]
        if sec.get("about"):
            lines += [sec["about"].strip(), ""]
        if results:  # a section may be its text alone (the GPU one)
            lines += ["| benchmark | input | clipforge | peer | peer rate | ratio | peak memory (clipforge / peer) |",
                      "|---|---|---|---|---|---|---|"]
        for r in results:
            mem = (f"{max(r.ours_rss) / 2**20:,.0f} MiB / {max(r.peer_rss) / 2**20:,.0f} MiB"
                   if r.ours_rss and r.peer_rss else "")
            ours, peer = f"{_rate(r.ours_rate)} {r.unit}/s", f"{_rate(r.peer_rate)} {r.unit}/s"
            if r.show_wall:
                ours += f" ({statistics.median(r.ours_s):,.1f} s)"
                peer += f" ({statistics.median(r.peer_s):,.1f} s)"
            lines.append(f"| {r.name} | {r.input} | {ours} | {r.peer_name} | {peer} | **{r.ratio:.2f}x** | {mem} |")
        notes = [f"- **{r.name}**: {r.notes}" + (f" (this row: measured {r.measured}, kept from an earlier run)"
                                                 if r.measured and r.measured != sec["measured"] else "")
                 for r in results if r.notes]
        if notes:
            lines += ["", "Notes:", ""] + notes
    return "\n".join(lines) + "\n"


def merge_rows(old, new):
    """A section's rows after a rerun: each new row replaces the old row of the same name in its
    place, new names come last, and old rows that were not rerun (a smaller size chosen with an
    environment knob) stay, each with the date it was measured."""
    by_name = {r["name"]: r for r in new}
    rows = [by_name.pop(r["name"], r) for r in old]
    return rows + [r for r in new if r["name"] in by_name]


def machine_line():
    m = machine()
    return f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB"
