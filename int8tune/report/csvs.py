"""The CSV files of a run, written from its results (each CSV holds the rows of one report table, and more)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..outputs import atomic_write_bytes
from ..pipeline.calibration import Calibration
from ..quant.calibrators import ACTIVATION_CALIBRATORS


def write_csv(path: Path, rows: list[dict] | dict[str, list]) -> Path:
    return atomic_write_bytes(path, pd.DataFrame(rows).to_csv(index=False, float_format="%.6g").encode())


def write_statistics(path: Path, cal: Calibration, blob_of: dict[str, str]) -> Path:
    """statistics.csv: per blob, its range and moments, every calibrator's threshold, the chosen one."""
    rows = []
    table = cal.table
    for v, s in cal.stats.items():
        entry = table.blobs.get(v)
        row = {"blob": blob_of[v], "value": v, "role": "input" if v in table.active_blobs() else "output",
               "absmax": s.absmax, "min": s.minimum, "max": s.maximum,
               "mean": s.sum / s.count if s.count else 0.0,
               "std": float(np.sqrt(max(s.sumsq / s.count - (s.sum / s.count) ** 2, 0))) if s.count else 0.0,
               "zero_fraction": s.zeros / s.count if s.count else 0.0}
        for name in ACTIVATION_CALIBRATORS.names():
            row[f"T_{name}"] = cal.per_blob[v][name]
        for name, d in cal.scores.get(v, {}).items():
            row[f"diff_{name}"] = d
        row["chosen"] = entry.calibrator if entry else ""
        row["threshold"] = entry.threshold if entry else np.nan
        row["ratio"] = entry.threshold / s.absmax if entry and s.absmax else np.nan
        rows.append(row)
    return write_csv(path, rows)
