"""Benchmarks: clipforge against the tool a user would otherwise pick, same input, same run.

Each ``bench/bench_*.py`` module defines ``benchmarks(workdir)`` returning a list of
``harness.Comparison``; ``python -m bench`` (``make bench``) runs them all and rewrites
``BENCHMARKS.md`` with the ratios and the machine they were measured on.
"""
