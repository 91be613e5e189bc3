"""The int8 Caffe model: the fp32 prototxt with Intel Caffe's `quantization_param` on every int8 layer.

The shape is what Intel Caffe's calibrator writes (intel/caffe scripts/calibrator.py, generate_sample_impl
and transform_convolutions) and its MKL-DNN layers read (src/caffe/layers/mkldnn_convolution_layer.cpp):

    quantization_param {
      precision: DYNAMIC_FIXED_POINT
      bw_layer_in: 8  bw_layer_out: 8  bw_params: 8
      scale_in: 127/T_in            # 255/T_in for an unsigned (u8) input, with is_negative_input: false
      scale_out: 127/T_out          # 255/T_out if that blob is unsigned
      scale_params: 127/T_w ...     # one per output channel (one for per-tensor weights)
      is_negative_input: true       # s8 input; false: u8
    }

Scales are multipliers (real -> integer), stored as float32 by the schema. scale_in is one value per quantized
bottom (the layer's input blob, then its further quantized bottoms). scale_out is the threshold of the layer's
output blob when an int8 layer reads that blob (the version this layer wrote, else the blob's final in-place
version, which is what Caffe's blob holds); otherwise the output stays fp32, which Intel's calibrator writes
as bw_layer_out: 32, scale_out: 1.0. Layers without weights get no bw_params/scale_params. Fallen-back layers
(int8 false) carry no quantization_param; any quantization_param already in the fp32 prototxt is removed.

Reading recovers T = 127/scale (255/scale for u8): per layer input from scale_in (is_negative_input absent
means u8, as in Intel's runtime), per layer weights from scale_params (0 stays 0: Intel's mark of an all-zero
channel), and per blob from scale_out, whose signedness is taken from a quantized consumer of that blob in the
same file (assumed signed, with a note, when there is none).

Weight thresholds are those of the net the table was calibrated on; when that net had BatchNorm/Scale folded
into the convolutions, Intel Caffe must run the net with the same folding (its bn/scale merge) for them to apply.

The header comment records which weights those are (`# int8tune weights: {"model_sha256": ..., "equalize": ...}`,
one JSON line): with --equalize they are the equalized.caffemodel's, and a reader given this file alone can refuse
it on the original weights. Caffe's text parser skips comments, so the file stays a plain prototxt.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from ...caffe.net import VERSION_SEPARATOR
from ...caffe.schema import caffe_pb2
from ...errors import ConfigError, ModelError
from ...log import logger
from ...outputs import atomic_write_text
from ..table import BlobEntry, CalibrationTable
from .base import (
    ImportedThresholds,
    TableFormat,
    active_entries,
    check_threshold,
    check_weight_thresholds,
    read_net_param,
    register_format,
    require_8bit,
)

FORMAT = "int8_prototxt"
BITS = 8
QMAX, UMAX = 127, 255
FP32_BITS = 32  # Intel's bw_layer_out for an output left in fp32


def annotate(net_param, table: CalibrationTable, where: str = "<prototxt>"):
    """A copy of `net_param` (V2 layers) with each int8 layer of `table` carrying its quantization_param."""
    require_8bit(table, "int8 prototxt")
    net = caffe_pb2.NetParameter()
    net.CopyFrom(net_param)
    stale = [lp.name for lp in net.layer if lp.HasField("quantization_param")]
    if stale:
        logger.info("%s: removing the quantization_param already on %d layer(s) (%s)", where, len(stale),
                    ", ".join(stale[:5]))
    for lp in net.layer:
        lp.ClearField("quantization_param")
    by_name: dict[str, list] = {}
    for lp in net.layer:
        by_name.setdefault(lp.name, []).append(lp)
    missing = [name for name in table.layers if name not in by_name]
    if missing:
        raise ModelError(f"{where}: the calibration table quantizes layer(s) {', '.join(missing)} that are not in "
                         f"this prototxt; was the table made for another model?")
    active = {e.value: e for e in active_entries(table)}
    for entry in table.quantized_layers():
        inputs = [table.blobs[v] for v in (entry.input_value, *entry.extra_inputs)]
        for lp in by_name[entry.layer]:
            q = lp.quantization_param
            q.precision = caffe_pb2.QuantizationParameter.DYNAMIC_FIXED_POINT
            q.bw_layer_in = BITS
            q.scale_in.extend(_multiplier(b) for b in inputs)
            q.is_negative_input = not inputs[0].unsigned
            out = _output_entry(active, entry.layer, lp.top[0]) if lp.top else None
            if out is not None:
                q.bw_layer_out = BITS
                q.scale_out.append(_multiplier(out))
            else:
                q.bw_layer_out = FP32_BITS
                q.scale_out.append(1.0)
            if entry.weight_thresholds is not None:
                w = check_weight_thresholds(entry.weight_thresholds, entry.layer)
                q.bw_params = BITS
                q.scale_params.extend((QMAX / w).tolist())
    return net


def _multiplier(entry: BlobEntry) -> float:
    t = check_threshold(entry.threshold, f"blob {entry.blob!r} (value {entry.value!r})")
    return (UMAX if entry.unsigned else QMAX) / t


def _output_entry(active: dict[str, BlobEntry], layer: str, top: str) -> BlobEntry | None:
    for value in (f"{top}{VERSION_SEPARATOR}{layer}", top):
        if value in active:
            return active[value]
    return None


def write_int8_prototxt(table: CalibrationTable, fp32_prototxt_path: str | Path, out_path: str | Path) -> Path:
    net = annotate(read_net_param(fp32_prototxt_path), table, str(fp32_prototxt_path))
    created = table.provenance.get("created", "")
    header = (f"# int8 model written by int8tune from the calibration table of {table.model!r}"
              f"{f' (created {created})' if created else ''}\n"
              f"# fp32 prototxt: {fp32_prototxt_path}\n"
              f"# quantization_param: Intel Caffe's (scale = 127/threshold, 255/threshold for u8 inputs)\n")
    record = table.weights_record()
    if record:
        header += f"{WEIGHTS_RECORD}{json.dumps(record, sort_keys=True)}\n"
    return atomic_write_text(out_path, header + text_format.MessageToString(net))


WEIGHTS_RECORD = "# int8tune weights: "


def _read_weights_record(path: Path) -> dict:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.startswith("#"):
                break  # the record is in the leading comment block
            if line.startswith(WEIGHTS_RECORD):
                try:
                    record = json.loads(line[len(WEIGHTS_RECORD):])
                except json.JSONDecodeError:
                    logger.warning("%s: unreadable weights record in the header, ignored: %s", path, line.strip())
                    return {}
                return record if isinstance(record, dict) else {}
    return {}


def read_int8_prototxt(path: str | Path) -> ImportedThresholds:
    path = Path(path)
    net = read_net_param(path)
    imported = ImportedThresholds(format=FORMAT, source=path, weights_record=_read_weights_record(path))
    quantized = [lp for lp in net.layer if lp.HasField("quantization_param")]
    # Signedness of a blob, as its first quantized consumer in the file declares it.
    consumer_signed: dict[str, bool] = {}
    for lp in quantized:
        for b in lp.bottom:
            consumer_signed.setdefault(b, lp.quantization_param.is_negative_input)
    # A top that a later layer rewrites in place: this layer's scale_out is for its own version `top@layer`.
    layers = list(net.layer)
    rewritten = {(lp.name, lp.top[0]) for i, lp in enumerate(layers) if lp.top
                 and any(lp.top[0] in later.top and lp.top[0] in later.bottom for later in layers[i + 1:])}
    for lp in quantized:
        q = lp.quantization_param
        name = lp.name
        bottoms = list(dict.fromkeys(lp.bottom))
        if q.scale_in and q.bw_layer_in == BITS:
            qmax_in = QMAX if q.is_negative_input else UMAX
            imported.input_unsigned[name] = not q.is_negative_input
            for i, s in enumerate(q.scale_in):
                key = f"{name}.scale_in[{i}]"
                t = _threshold(qmax_in, s)
                if i == 0:
                    imported.input_thresholds[name] = t
                    imported.file_keys[("input", name)] = key
                elif i < len(bottoms):
                    _add_blob(imported, bottoms[i], t, key)
                else:
                    imported.unknown_keys.append(f"{key} (the layer has {len(bottoms)} bottom(s))")
        elif q.scale_in:
            imported.notes.append(f"{name}: bw_layer_in {q.bw_layer_in}, scale_in not read (fp32 input)")
        if q.scale_out and q.bw_layer_out == BITS and lp.top:
            top = lp.top[0]
            if (name, top) in rewritten:
                imported.fallback_names[f"{top}{VERSION_SEPARATOR}{name}"] = top
                top = f"{top}{VERSION_SEPARATOR}{name}"
            signed = consumer_signed.get(top)
            if signed is None:
                signed = True
                imported.assumed_signed.add(top)
                imported.notes.append(f"{name}: no quantized layer reads {top!r}; scale_out read as signed (127) "
                                      f"unless the table makes that blob unsigned")
            _add_blob(imported, top, _threshold(QMAX if signed else UMAX, q.scale_out[0]), f"{name}.scale_out")
            for i in range(1, len(q.scale_out)):
                imported.unknown_keys.append(f"{name}.scale_out[{i}]")
        if q.scale_params:
            s = np.asarray(q.scale_params, dtype=np.float64)
            with np.errstate(divide="ignore"):
                t = np.where(s == 0, 0.0, QMAX / np.where(s == 0, 1.0, s))
            imported.weight_thresholds[name] = t
            imported.file_keys[("weights", name)] = f"{name}.scale_params"
    return imported


def _threshold(qmax: int, scale: float) -> float:
    return qmax / float(scale) if scale > 0 else float("inf")


def _add_blob(imported: ImportedThresholds, blob: str, t: float, key: str) -> None:
    previous = imported.blob_thresholds.get(blob)
    if previous is not None and abs(previous - t) > 1e-6 * max(previous, t):
        imported.notes.append(f"{key}: blob {blob!r} threshold {t:g} differs from {previous:g} given earlier in "
                              f"the file; keeping the earlier one")
        return
    if previous is None:
        imported.blob_thresholds[blob] = t
        imported.file_keys[("blob", blob)] = key


register_format(TableFormat(
    name=FORMAT, file_name="int8.prototxt",
    description="int8 Caffe prototxt with Intel Caffe quantization_param on each int8 layer",
    write=lambda table, path, prototxt: write_int8_prototxt(table, _need(prototxt), path),
    read=read_int8_prototxt, needs_prototxt=True, unfolded_weights=True))


def _need(prototxt: Path | None) -> Path:
    if prototxt is None:
        raise ConfigError("the int8 prototxt is written from the fp32 prototxt; none was given")
    return prototxt
