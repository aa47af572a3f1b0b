"""Regressors scored on real photos: `benchmark` (metrics and timing on a pairs set) and `report` (report.json, report.md, plots).

It sits above `inversion/`, `datamodules/` and `models/` and imports them; none of them imports it.
"""
