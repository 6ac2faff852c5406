"""python -m bench [NAME ...]: run the benchmarks (all, or those whose module name matches)."""

import importlib
import os
import sys
import tempfile
from pathlib import Path

from bench import harness

HERE = Path(__file__).resolve().parent


def main(argv):
    modules = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if argv:
        modules = [m for m in modules if any(a in m for a in argv)]
    if not modules:
        print("bench: no benchmarks registered yet; they arrive with the crawl, shard and train stages",
              file=sys.stderr)
        return 3
    results = []
    with tempfile.TemporaryDirectory(prefix="clipforge-bench-") as tmp:
        os.chmod(tmp, 0o755)  # servers started by benchmarks (nginx's workers run as nobody) read files here
        for name in modules:
            print(f"{name}:", flush=True)
            mod = importlib.import_module(f"bench.{name}")
            for comparison in mod.benchmarks(Path(tmp) / name):
                results.append(harness.run(comparison))
    text = harness.markdown(results, "make bench" + (f" ARGS='{' '.join(argv)}'" if argv else ""))
    (HERE.parent / "BENCHMARKS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
