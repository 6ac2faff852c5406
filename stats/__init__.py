"""The stats stage: a dataset report from the stages' outputs.

`collect` computes the numbers (streaming the parquet files), `plots` draws them, `report`
writes report.html (self-contained) and report.md, and `stage` ties them to `clipforge stats`.
"""
