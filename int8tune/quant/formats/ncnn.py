"""ncnn's int8 calibration table (`.table`), as Tencent/ncnn tools/quantize/ncnn2table.cpp writes it
(QuantNet::save_table) and ncnn2int8.cpp reads it (read_int8scale_table):

    conv1_param_0 157.480316 93.321579 ...      # weight multipliers 127/T_w, one per output channel
    fc_param_0 211.666672 ...
    conv1 12.700000                             # input multiplier 127/T of the blob the layer reads
    fc 31.750000

Each value is printed with C's "%f" (6 decimals) and followed by one space, including the last. Weight lines
come first (every int8 layer with weights, in net order), then the input lines (every int8 layer); both are
keyed by layer name, as ncnn matches them to its layers (Caffe layer names survive caffe2ncnn). ncnn2int8
treats a key containing "_param_" as weights and anything else as a layer's input scale.

ncnn is signed int8 only: an unsigned blob is written as 127/T (threshold kept). A grouped Convolution that is
not depthwise becomes ncnn's ConvolutionDepthWise, which takes one weight scale per group: its per-channel
thresholds are reduced to the maximum over each group's channels (a coarser model, logged). A per-tensor
weight threshold is repeated over the output channels. Both need the layer's num_output/group from the fp32
prototxt. ncnn2int8 quantizes Convolution, ConvolutionDepthWise and InnerProduct; lines of other int8 layers
are written for completeness and ncnn runs those layers in fp32.

Reading gives T = 127/m from the printed multipliers (so to %f's precision).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np

from ...errors import ConfigError
from ...log import warn_once
from ...outputs import atomic_write_text
from ..table import CalibrationTable, LayerEntry
from .base import (
    ImportedThresholds,
    LayerShape,
    TableFormat,
    active_entries,
    check_weight_thresholds,
    layer_shapes,
    parse_float,
    read_net_param,
    register_format,
    require_8bit,
    text_lines,
)

FORMAT = "ncnn"
QMAX = 127
NCNN_INT8_TYPES = frozenset({"Convolution", "InnerProduct", "DepthwiseConvolution", "ConvolutionDepthwise"})
_WEIGHT_KEY = re.compile(r"^(.+)_param_(\d+)$")


def _line(key: str, multipliers) -> str:
    return f"{key} " + "".join("%f " % m for m in multipliers) + "\n"


def ncnn_weight_thresholds(entry: LayerEntry, shape: LayerShape | None) -> np.ndarray:
    """The weight thresholds ncnn takes for a layer: per output channel, or per group for grouped convs."""
    w = check_weight_thresholds(entry.weight_thresholds, entry.layer)
    if shape is None:
        if w.size == 1:
            raise ConfigError(f"layer {entry.layer!r} has one per-tensor weight threshold; ncnn needs one per "
                              f"output channel: give the fp32 prototxt so that num_output is known")
        return w
    c, g = shape.num_output, shape.group
    if w.size not in (1, c):
        raise ConfigError(f"layer {entry.layer!r} has {w.size} weight thresholds but num_output {c} in the "
                          f"prototxt")
    if w.size == 1:
        w = np.full(c, w[0])
    if 1 < g < c:
        if c % g:
            raise ConfigError(f"layer {entry.layer!r}: num_output {c} is not a multiple of group {g}")
        warn_once("ncnn: layer %r is a grouped convolution (group %d); ncnn takes one weight scale per group, using "
                  "the largest threshold of each group's %d channels", entry.layer, g, c // g)
        w = w.reshape(g, c // g).max(axis=1)
    return w


def write_ncnn_table(table: CalibrationTable, path: str | Path,
                     shapes: Mapping[str, LayerShape] | None = None) -> Path:
    require_8bit(table, "ncnn table")
    by_value = {e.value: e for e in active_entries(table)}
    layers = table.quantized_layers()
    odd = [e.layer for e in layers if e.type not in NCNN_INT8_TYPES]
    if odd:
        warn_once("ncnn: ncnn2int8 does not quantize layer(s) %s (types it has no int8 kernel for); their lines are "
                  "written but ncnn runs them in fp32", ", ".join(odd[:10]))
    clash = [e.layer for e in layers if "_param_" in e.layer]
    if clash:
        warn_once("ncnn: layer name(s) %s contain '_param_'; ncnn2int8 reads such a key as weight scales, so their "
                  "input scales will not be found", ", ".join(clash[:10]))
    lines = []
    for e in layers:
        if e.weight_thresholds is not None:
            w = ncnn_weight_thresholds(e, shapes.get(e.layer) if shapes is not None else None)
            lines.append(_line(f"{e.layer}_param_0", QMAX / w))
    for e in layers:
        lines.append(_line(e.layer, [QMAX / by_value[e.input_value].threshold]))
    return atomic_write_text(path, "".join(lines))


def read_ncnn_table(path: str | Path) -> ImportedThresholds:
    path = Path(path)
    imported = ImportedThresholds(format=FORMAT, source=path)
    seen: dict[str, int] = {}
    for line_no, line in text_lines(path, "ncnn table"):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{line_no}"
        key, values = fields[0], [parse_float(v, where) for v in fields[1:]]
        if not values:
            raise ConfigError(f"{where}: key {key!r} has no scale")
        with np.errstate(divide="ignore"):
            thresholds = QMAX / np.asarray(values, dtype=np.float64)
        if key in seen:
            raise ConfigError(f"{where}: key {key!r} already given on line {seen[key]}")
        seen[key] = line_no
        m = _WEIGHT_KEY.match(key)
        if m and m.group(2) == "0":
            imported.weight_thresholds[m.group(1)] = thresholds
            imported.file_keys[("weights", m.group(1))] = key
        elif "_param_" in key:  # ncnn's other weight tables (MultiHeadAttention's _param_1..3, ...)
            imported.unknown_keys.append(key)
        else:
            if len(values) != 1:
                raise ConfigError(f"{where}: input scale of layer {key!r} has {len(values)} values; expected one")
            imported.input_thresholds[key] = float(thresholds[0])
    return imported


def _write(table: CalibrationTable, path: Path, prototxt: Path | None) -> Path:
    shapes = layer_shapes(read_net_param(prototxt)) if prototxt is not None else None
    return write_ncnn_table(table, path, shapes)


register_format(TableFormat(
    name=FORMAT, file_name="ncnn.table",
    description="ncnn int8 table (ncnn2table: '<layer>_param_0' weight scales, '<layer>' input scales)",
    write=_write, read=read_ncnn_table, unfolded_weights=True))
