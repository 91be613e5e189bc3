"""The CSV files of a run, written from its results (each CSV holds the rows of one report table, and more)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..outputs import atomic_write_bytes
from ..pipeline.calibration import Calibration
from ..pipeline.levers import Corrections
from ..quant.adaround import RoundedLayer
from ..quant.bias_correction import CorrectedLayer
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


def write_levers(path: Path, c: Corrections) -> Path:
    """weight_levers.csv: per int8 weighted layer, what AdaRound and bias correction did (empty cells: not run)."""
    rows: dict[str, dict] = {}
    for r in c.adaround:
        row = rows.setdefault(r.layer, {"layer": r.layer})
        if isinstance(r, RoundedLayer):
            row.update(adaround_channels=int(r.rounded.sum()), channels=int(r.rounded.size),
                       adaround_flipped=r.flipped, adaround_error_nearest=r.error_nearest, adaround_error=r.error,
                       adaround_ratio=r.error / r.error_nearest if r.error_nearest > 0 else 1.0)
        else:
            row["adaround_skipped"] = r.reason
    for r in c.bias:
        row = rows.setdefault(r.layer, {"layer": r.layer})
        if isinstance(r, CorrectedLayer):
            row.update(bias_shift_max=float(np.abs(r.shift).max()),
                       bias_residual_max=float(np.abs(r.residual).max()) if r.residual is not None else np.nan,
                       int32_step_max=float(r.step.max()) if r.step is not None else np.nan)
        else:
            row["bias_skipped"] = r.reason
    return write_csv(path, list(rows.values()))
