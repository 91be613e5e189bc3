"""onnxruntime's plain-text calibration cache, keyed by ONNX tensor name (here: the value name).

onnxruntime/python/tools/quantization/quant_utils.py `write_calibration_table` writes, besides
calibration.json and calibration.flatbuffers, a file `calibration.cache` with one line per tensor, keys sorted:

    <tensor> <value>

where value is `str()` of a Python float: max(|rmin|, |rmax|) in older releases, max(highest, lowest) in newer
ones -- for a symmetric range [-T, T] (or an unsigned [0, T]) both are the threshold T. Python's str() of a
float is its shortest round-trip text, so T comes back bit-identical. Only the blobs int8 layers read are
written (see base.py).
"""

from __future__ import annotations

from pathlib import Path

from ...errors import ConfigError
from ...outputs import atomic_write_text
from ..table import CalibrationTable
from .base import (
    ImportedThresholds,
    TableFormat,
    active_entries,
    add_unique,
    parse_float,
    register_format,
    require_8bit,
    text_lines,
)

FORMAT = "onnxruntime"


def write_ort_cache(table: CalibrationTable, path: str | Path) -> Path:
    require_8bit(table, "onnxruntime calibration cache")
    entries = {e.value: float(e.threshold) for e in active_entries(table)}
    lines = [f"{key} {entries[key]!s}" for key in sorted(entries)]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


def read_ort_cache(path: str | Path) -> ImportedThresholds:
    path = Path(path)
    imported = ImportedThresholds(format=FORMAT, source=path)
    seen: dict[str, int] = {}
    for line_no, line in text_lines(path, "onnxruntime calibration cache"):
        if not line.strip():
            continue
        name, sep, text = line.rstrip().rpartition(" ")  # tensor names may hold spaces; the value cannot
        if not sep or not name:
            raise ConfigError(f"{path}:{line_no}: expected '<tensor> <threshold>', found {line[:80]!r}")
        add_unique(imported.blob_thresholds, name, parse_float(text, f"{path}:{line_no}"), path, line_no, seen)
    return imported


register_format(TableFormat(
    name=FORMAT, file_name="onnxruntime_calibration.cache",
    description="onnxruntime calibration.cache text (one '<tensor> <threshold>' per line)",
    write=lambda table, path, prototxt=None: write_ort_cache(table, path), read=read_ort_cache))
