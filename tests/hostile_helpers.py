"""Running a command on hostile input with a watchdog: peak memory of the whole process tree, time.

A probe that explodes must fail its test, not take the machine down: the watchdog kills the tree as
soon as its resident memory passes the bound or the time runs out, and says which.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import _tree_rss, descendants  # noqa: E402

GiB = 1 << 30


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    peak_bytes: int
    seconds: float
    killed: str = ""          # "", "memory" or "time"

    @property
    def last_line(self):
        lines = [ln for ln in self.stderr.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else ""


def run_bounded(argv, max_bytes=int(1.5 * GiB), timeout=300, interval=0.2, env=None, cwd=None):
    """Run argv; kill its tree past max_bytes resident or timeout seconds. Returns an Outcome."""
    t = time.perf_counter()
    proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=cwd, start_new_session=True)
    out, err = [], []
    readers = [threading.Thread(target=lambda s, b: b.append(s.read()), args=(proc.stdout, out), daemon=True),
               threading.Thread(target=lambda s, b: b.append(s.read()), args=(proc.stderr, err), daemon=True)]
    for r in readers:
        r.start()
    peak, killed = 0, ""
    while proc.poll() is None:
        rss = _tree_rss(proc.pid)
        peak = max(peak, rss)
        if rss > max_bytes:
            killed = "memory"
        elif time.perf_counter() - t > timeout:
            killed = "time"
        if killed:
            for pid in reversed(descendants(proc.pid)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            proc.wait()
            break
        time.sleep(interval)
    for r in readers:
        r.join(timeout=10)
    return Outcome(proc.returncode, (out[0] if out else b"").decode(errors="replace"),
                   (err[0] if err else b"").decode(errors="replace"), peak, time.perf_counter() - t, killed)
