"""python -m bench [NAME ...]: run the benchmarks (all, or those whose module name matches)."""

import dataclasses
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

from bench import harness

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"   # every section's last measurement; BENCHMARKS.md is written from it


def main(argv):
    known = sorted(p.stem for p in HERE.glob("bench_*.py"))
    modules = [m for m in known if any(a in m for a in argv)] if argv else known
    if not modules:
        names = ", ".join(m.removeprefix("bench_") for m in known)
        print(f"bench: no benchmark matches {' '.join(argv)}; known: {names}", file=sys.stderr)
        return 3
    from datetime import datetime, timezone

    sections = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    command = "make bench" + (f" ARGS='{' '.join(argv)}'" if argv else "")
    with tempfile.TemporaryDirectory(prefix="clipforge-bench-") as tmp:
        os.chmod(tmp, 0o755)  # servers started by benchmarks (nginx's workers run as nobody) read files here
        for name in modules:
            print(f"{name}:", flush=True)
            mod = importlib.import_module(f"bench.{name}")
            rows = [dataclasses.asdict(harness.run(c)) for c in mod.benchmarks(Path(tmp) / name)]
            if not rows and not getattr(mod, "ABOUT", None):  # nothing measured here (bench gpu without CUDA)
                print(f"  {name}: nothing measured; its section stays as it was", flush=True)
                continue
            now = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
            for row in rows:
                row["measured"] = now
            old = sections.get(name, {})
            for row in old.get("rows", []):
                row["measured"] = row.get("measured") or old.get("measured")
            sections[name] = {"measured": now, "command": command, "machine": harness.machine_line(),
                              "rows": harness.merge_rows(old.get("rows", []), rows)}
            about = getattr(mod, "ABOUT", None) or old.get("about")  # how it was measured, profiles
            if about:
                sections[name]["about"] = about
            RESULTS.write_text(json.dumps(dict(sorted(sections.items())), indent=1) + "\n")
    text = harness.markdown(dict(sorted(sections.items())))
    (HERE.parent / "BENCHMARKS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
