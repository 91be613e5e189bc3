"""TensorRT's calibration cache (what IInt8Calibrator::writeCalibrationCache stores and readCalibrationCache
hands back), keyed by ONNX tensor name, which in this project is the value name:

    TRT-8601-EntropyCalibration2
    data: 3c010204
    conv1: 3d0b5f1c

The first line is `TRT-<TensorRT version as an integer>-<calibrator>`; each other line is `<tensor>: <hex>`
where hex is the big-endian IEEE-754 float32 of the scale T/127 (so T = 1.0 gives 3c010204). TensorRT's int8 is
symmetric and signed: an unsigned blob is written with T/127 too (its threshold is kept, its [0, 255] range is
not). Only the blobs int8 layers read are written (see base.py); TensorRT runs tensors without a scale in
floating point. The cache is exact for float32(T/127); reading gives T = 127 * float32(T/127).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from ...errors import ConfigError
from ...outputs import atomic_write_text
from ..table import CalibrationTable
from .base import ImportedThresholds, TableFormat, active_entries, add_unique, register_format, require_8bit, text_lines

FORMAT = "tensorrt"
DEFAULT_VERSION = 8601  # TensorRT 8.6.1
DEFAULT_ALGORITHM = "EntropyCalibration2"
QMAX = 127
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
_HEX = re.compile(r"^[0-9a-fA-F]{8}$")


def scale_hex(threshold: float) -> str:
    """The cache's text for a threshold: big-endian bytes of float32(T/127), lower-case hex."""
    return struct.pack(">f", np.float32(threshold / QMAX)).hex()


def hex_scale(text: str) -> float:
    """The float32 scale a cache hex string encodes, as a Python float (exact)."""
    return struct.unpack(">f", bytes.fromhex(text))[0]


def write_tensorrt_cache(table: CalibrationTable, path: str | Path, version: int = DEFAULT_VERSION,
                         algorithm: str = DEFAULT_ALGORITHM) -> Path:
    require_8bit(table, "TensorRT calibration cache")
    if not re.fullmatch(r"\w+", algorithm) or version < 0:
        raise ConfigError(f"TensorRT cache header needs a version >= 0 and a calibrator name of letters/digits, "
                          f"found {version!r}, {algorithm!r}")
    lines = [f"TRT-{int(version)}-{algorithm}"]
    lines += [f"{e.value}: {scale_hex(e.threshold)}" for e in active_entries(table)]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def read_tensorrt_cache(path: str | Path) -> ImportedThresholds:
    path = Path(path)
    imported = ImportedThresholds(format=FORMAT, source=path)
    seen: dict[str, int] = {}
    header_seen = False
    for line_no, line in text_lines(path, "TensorRT calibration cache"):
        line = line.strip()
        if not line:
            continue
        if not header_seen:
            m = _HEADER.match(line)
            if not m:
                raise ConfigError(f"{path}:{line_no}: expected a TensorRT cache header like "
                                  f"'TRT-{DEFAULT_VERSION}-{DEFAULT_ALGORITHM}', found {line[:80]!r}")
            imported.notes.append(f"TensorRT {m.group(1)}, calibrator {m.group(2)}")
            header_seen = True
            continue
        name, sep, text = line.rpartition(":")
        name, text = name.strip(), text.strip()
        if not sep or not name or not _HEX.match(text):
            raise ConfigError(f"{path}:{line_no}: expected '<tensor>: <8 hex digits>', found {line[:80]!r}")
        add_unique(imported.blob_thresholds, name, QMAX * hex_scale(text), path, line_no, seen)
    if not header_seen:
        raise ConfigError(f"{path} is empty; expected a TensorRT calibration cache")
    return imported


register_format(TableFormat(
    name=FORMAT, file_name="tensorrt_calibration.cache",
    description="TensorRT calibration cache (TRT-<version>-EntropyCalibration2, hex float32 scales)",
    write=lambda table, path, prototxt=None: write_tensorrt_cache(table, path), read=read_tensorrt_cache))
