"""The runs behind every command and the Python API: read -> convert -> calibrate -> simulate -> tune -> export.

Each function here takes typed inputs (a Workspace, an Images set, frozen configs) and returns a result object
(tables, per-layer and per-output measurements, verification, timings). None of them formats text or prints:
report/ renders the results (report.log, report.html, CSVs, plots), and commands/ (the CLI) and api.py (the
Python API) are two thin front ends over the same functions.
"""
