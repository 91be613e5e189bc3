"""The file formats a calibration table is written to and read from, one module each, registered in
`TABLE_FORMATS` (name -> TableFormat: file name, writer, reader):

    pb, pbtxt       int8tune's own table (proto/calibration.proto), exact           pb.py
    int8_prototxt   fp32 prototxt + Intel Caffe quantization_param per int8 layer   int8_prototxt.py
    tensorrt        TensorRT calibration cache (hex float32 scales)                  tensorrt.py
    ncnn            ncnn2table's .table (weight and input multipliers)               ncnn.py
    onnxruntime     onnxruntime's calibration.cache text                             onnxruntime.py

Writing: `write_all(table, fp32_prototxt, output_dir)` writes every format under output_dir with fixed names
(atomically). Reading: `TABLE_FORMATS.get(name).read(path)` gives ImportedThresholds;
`apply_imported(table, imported, net)` makes a new table of them and returns the keys that matched nothing,
for the caller to report. (The QDQ ONNX export lives in int8tune/quant/qdq.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..table import CalibrationTable
from . import int8_prototxt, ncnn, onnxruntime, pb, tensorrt  # noqa: F401  (fill the registry)
from .base import (
    TABLE_FORMATS,
    ImportedThresholds,
    TableFormat,
    apply_imported,
    rescale_imported,
    unscale_weights,
)
from .int8_prototxt import read_int8_prototxt, write_int8_prototxt
from .ncnn import read_ncnn_table, write_ncnn_table
from .onnxruntime import read_ort_cache, write_ort_cache
from .pb import read_table_pb, write_table_pb
from .tensorrt import read_tensorrt_cache, write_tensorrt_cache

__all__ = [
    "TABLE_FORMATS", "ImportedThresholds", "TableFormat", "apply_imported", "write_all",
    "rescale_imported", "unscale_weights",
    "read_table_pb", "write_table_pb", "read_int8_prototxt", "write_int8_prototxt", "read_tensorrt_cache",
    "write_tensorrt_cache", "read_ncnn_table", "write_ncnn_table", "read_ort_cache", "write_ort_cache",
]


def write_all(table: CalibrationTable, fp32_prototxt: str | Path | None, output_dir: str | Path,
              formats: list[str] | None = None, sum_scales: Mapping[str, np.ndarray] | None = None
              ) -> dict[str, Path]:
    """Write `table` in every registered format (or the named ones) under `output_dir`; name -> path.

    Each file has its format's fixed name (TableFormat.file_name) and is written atomically. Formats that
    need the fp32 prototxt (the int8 prototxt) are an error without one. `sum_scales` (FoldResult.sum_scales):
    formats read by other engines get the weight thresholds of the weights before the fold through sums.
    """
    output_dir = Path(output_dir)
    names = TABLE_FORMATS.names() if formats is None else [TABLE_FORMATS.get(n).name for n in formats]
    prototxt = Path(fp32_prototxt) if fp32_prototxt is not None else None
    written: dict[str, Path] = {}
    for name in names:
        fmt = TABLE_FORMATS.get(name)
        own = unscale_weights(table, sum_scales) if fmt.unfolded_weights and sum_scales else table
        written[name] = fmt.write(own, output_dir / fmt.file_name, prototxt)
    return written
