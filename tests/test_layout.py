"""The package layout: no stage package imports another stage package.

Stage packages are the top-level folders of the stages (pipeline: crawl and shard, queries, trainer) and
the two that consume their outputs (stats, demo). What they share lives in neutral places:
``clipforge.beam`` (the Beam launcher), ``clipforge.schemas`` (the contracts between stages,
the pair identity included), ``clipforge.limits``. The check reads every import statement
(top level and inside functions) with ``ast``; the CLI and the demo chain may call every stage.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("pipeline", "queries", "trainer", "stats")
NEUTRAL = {"beam", "limits", "schemas", "errors"}


def _imported(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def test_no_stage_package_imports_another():
    crossings = []
    for stage in STAGES:
        for path in sorted((ROOT / stage).rglob("*.py")):
            for name in _imported(path):
                parts = name.split(".")
                if parts[0] != "clipforge" or len(parts) < 2:
                    continue
                other = parts[1]
                if other != stage and other in STAGES + ("demo", "cli"):
                    crossings.append(f"{path.relative_to(ROOT)} imports {name}")
    assert crossings == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    """The walk finds a lazy import as well as a top-level one (so the test above can fail)."""
    assert "clipforge.beam" in set(_imported(ROOT / "pipeline" / "crawl_stage.py"))
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from clipforge.queries import stage\n    import clipforge.trainer.data\n")
    assert {"clipforge.queries.stage", "clipforge.trainer.data"} <= set(_imported(probe))
