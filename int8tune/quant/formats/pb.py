"""The project's own calibration table (proto/calibration.proto): binary `.pb` and text `.pbtxt`.

Every field of CalibrationTable round-trips exactly: thresholds are stored as doubles (so any Python float,
and so any float32, comes back bit-identical; arrays come back as float64), the QuantSpec as enums and
strings, provenance as typed header fields plus JSON text for settings and any other key. Provenance values
that are not JSON types come back as JSON turned them (tuples as lists, other objects as their str()).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from ...caffe.schema import _load
from ...errors import ConfigError
from ...outputs import atomic_write_bytes, atomic_write_text
from ..spec import BiasMode, Granularity, QuantSpec, Rounding, Target
from ..table import BlobEntry, CalibrationTable, LayerEntry
from .base import ImportedThresholds, TableFormat, register_format

calibration_pb2 = _load("calibration_pb2")

FORMAT_VERSION = 1
TEXT_SUFFIXES = (".pbtxt", ".prototxt", ".txt")

_PB = calibration_pb2.QuantSpec
_GRANULARITY = {Granularity.PER_TENSOR: _PB.PER_TENSOR, Granularity.PER_CHANNEL: _PB.PER_CHANNEL,
                Granularity.MIX: _PB.MIX}
_ROUNDING = {Rounding.HALF_AWAY: _PB.HALF_AWAY_FROM_ZERO, Rounding.HALF_EVEN: _PB.HALF_TO_EVEN}
_BIAS = {BiasMode.INT32: _PB.INT32, BiasMode.FP32: _PB.FP32}
# Provenance keys with a typed header field (others go to header.extra as JSON).
_STRING_KEYS = {"tool": "tool", "version": "tool_version", "created": "created",
                "images_sha256": "image_list_sha256"}
_PROTO_ROLES = ("proto", "prototxt")
_MODEL_ROLES = ("model", "caffemodel")


# --- table <-> message ------------------------------------------------------------------------------------

def table_to_message(table: CalibrationTable):
    msg = calibration_pb2.CalibrationTable(format_version=FORMAT_VERSION)
    _write_header(msg.header, table)
    spec = table.spec
    msg.spec.granularity = _GRANULARITY[spec.granularity]
    msg.spec.rounding = _ROUNDING[spec.rounding]
    msg.spec.bias = _BIAS[spec.bias]
    msg.spec.unsigned_activations = spec.unsigned
    msg.spec.bits = spec.bits
    msg.spec.target = spec.target.value
    msg.spec.quantize_types.extend(spec.quantize_types)
    msg.spec.ignore_layer_names.extend(spec.ignore_layer_names)
    msg.spec.ignore_layer_types.extend(spec.ignore_layer_types)
    for value, e in table.blobs.items():
        if value != e.value:
            raise ConfigError(f"table blob key {value!r} differs from its entry's value {e.value!r}")
        b = msg.blobs.add(value=e.value, blob=e.blob, threshold=float(e.threshold), unsigned=e.unsigned,
                          calibrator=e.calibrator)
        if e.channel_thresholds is not None:
            b.channel_thresholds.extend(np.asarray(e.channel_thresholds, dtype=np.float64).reshape(-1).tolist())
        if e.absmax is not None:
            b.absmax = float(e.absmax)
    for name, e in table.layers.items():
        if name != e.layer:
            raise ConfigError(f"table layer key {name!r} differs from its entry's layer {e.layer!r}")
        m = msg.layers.add(layer=e.layer, type=e.type, input_value=e.input_value, weight_method=e.weight_method,
                           int8=e.int8, note=e.note)
        m.extra_inputs.extend(e.extra_inputs)
        if e.weight_thresholds is not None:
            m.weight_thresholds.extend(np.asarray(e.weight_thresholds, dtype=np.float64).reshape(-1).tolist())
    return msg


def table_from_message(msg, where: str) -> CalibrationTable:
    if msg.format_version > FORMAT_VERSION:
        raise ConfigError(f"{where}: calibration table format version {msg.format_version} was written by a newer "
                          f"int8tune (this one reads up to {FORMAT_VERSION})")
    s = msg.spec
    spec = QuantSpec(
        quantize_types=tuple(s.quantize_types), ignore_layer_names=tuple(s.ignore_layer_names),
        ignore_layer_types=tuple(s.ignore_layer_types),
        granularity=_enum_back(_GRANULARITY, s.granularity, "spec.granularity", where),
        rounding=_enum_back(_ROUNDING, s.rounding, "spec.rounding", where),
        bias=_enum_back(_BIAS, s.bias, "spec.bias", where), unsigned=s.unsigned_activations, bits=s.bits,
        target=_target(s, where))
    if not 2 <= spec.bits <= 16:
        raise ConfigError(f"{where}: spec.bits is {spec.bits}; expected 2..16")
    table = CalibrationTable(model=msg.header.model_name, spec=spec, provenance=_read_header(msg.header))
    for i, b in enumerate(msg.blobs):
        if not b.value or not b.HasField("threshold"):
            raise ConfigError(f"{where}: blobs[{i}] needs a value and a threshold, found value={b.value!r}")
        if b.value in table.blobs:
            raise ConfigError(f"{where}: blob value {b.value!r} appears twice")
        _positive(where, f"blob {b.value!r} threshold", [b.threshold, *b.channel_thresholds])
        table.blobs[b.value] = BlobEntry(
            value=b.value, blob=b.blob or b.value, threshold=b.threshold,
            channel_thresholds=np.array(b.channel_thresholds, dtype=np.float64) if b.channel_thresholds else None,
            unsigned=b.unsigned, calibrator=b.calibrator, absmax=b.absmax if b.HasField("absmax") else None)
    for i, m in enumerate(msg.layers):
        if not m.layer or not m.input_value:
            raise ConfigError(f"{where}: layers[{i}] needs a layer name and an input_value")
        if m.layer in table.layers:
            raise ConfigError(f"{where}: layer {m.layer!r} appears twice")
        missing = [v for v in (m.input_value, *m.extra_inputs) if v not in table.blobs]
        if missing:
            raise ConfigError(f"{where}: layer {m.layer!r} reads {missing} but the file has no blob entry for it")
        _positive(where, f"layer {m.layer!r} weight threshold", m.weight_thresholds)
        table.layers[m.layer] = LayerEntry(
            layer=m.layer, type=m.type, input_value=m.input_value, extra_inputs=tuple(m.extra_inputs),
            weight_thresholds=np.array(m.weight_thresholds, dtype=np.float64) if m.weight_thresholds else None,
            weight_method=m.weight_method, int8=m.int8, note=m.note)
    return table


def _positive(where: str, what: str, values) -> None:
    """Thresholds are scales: a zero, negative, NaN or infinite one would quantize everything to nothing (or to
    NaN) without a word, so the file is refused naming the entry."""
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ConfigError(f"{where}: {what} must be finite and positive, found {bad[0]!r}"
                          + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))


def _target(s, where: str) -> Target:
    if not s.HasField("target"):  # written before targets: the arithmetic those tables meant
        return Target.ONNXRUNTIME_VNNI if s.unsigned_activations else Target.TENSORRT
    try:
        return Target(s.target)
    except ValueError:
        raise ConfigError(f"{where}: spec.target is {s.target!r}; expected one of "
                          f"{', '.join(t.value for t in Target)}") from None


def _enum_back(mapping: dict, number: int, field: str, where: str):
    for py, pb in mapping.items():
        if pb == number:
            return py
    raise ConfigError(f"{where}: {field} is unset or unknown ({number}); expected one of "
                      f"{', '.join(p.value for p in mapping)}")


def _write_header(h, table: CalibrationTable) -> None:
    from ... import __version__

    h.model_name = table.model
    h.written_by = f"int8tune {__version__}"
    for key, value in table.provenance.items():
        if key in _STRING_KEYS and isinstance(value, str):
            setattr(h, _STRING_KEYS[key], value)
        elif key == "settings" and isinstance(value, dict) and all(isinstance(k, str) for k in value):
            for k, v in value.items():
                h.settings[k] = _json(v)
        elif key == "files" and _is_file_dict(value):
            for role, info in value.items():
                h.files.add(role=role, path=str(info["path"]), sha256=str(info["sha256"]))
                if role in _PROTO_ROLES:
                    h.prototxt_sha256 = str(info["sha256"])
                elif role in _MODEL_ROLES:
                    h.caffemodel_sha256 = str(info["sha256"])
        else:
            h.extra[key] = _json(value)


def _read_header(h) -> dict[str, Any]:
    prov: dict[str, Any] = {}
    for key, field in _STRING_KEYS.items():
        if h.HasField(field):
            prov[key] = getattr(h, field)
    if h.files:
        prov["files"] = {f.role: {"path": f.path, "sha256": f.sha256} for f in h.files}
    if h.settings:
        prov["settings"] = {k: json.loads(v) for k, v in h.settings.items()}
    for key, text in h.extra.items():
        prov[key] = json.loads(text)
    # The explicit hash fields are derived from `files`; keep them when another writer set them alone.
    roles = {f.role: f.sha256 for f in h.files}
    for field, role_names in (("prototxt_sha256", _PROTO_ROLES), ("caffemodel_sha256", _MODEL_ROLES)):
        if h.HasField(field) and getattr(h, field) not in (roles.get(r) for r in role_names):
            prov[field] = getattr(h, field)
    return prov


def _is_file_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, dict) and set(v) == {"path", "sha256"} for k, v in value.items())


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


# --- files ------------------------------------------------------------------------------------------------

def _is_text(path: Path, text: bool | None) -> bool:
    return text if text is not None else Path(path).suffix.lower() in TEXT_SUFFIXES


def write_table_pb(table: CalibrationTable, path: str | Path, text: bool | None = None) -> Path:
    """Binary protobuf, or text format for a `.pbtxt` path (or `text=True`). Deterministic bytes."""
    msg = table_to_message(table)
    if _is_text(Path(path), text):
        header = ("# int8tune calibration table (proto/calibration.proto, message int8tune.CalibrationTable)\n"
                  f"# model: {table.model}\n")
        return atomic_write_text(path, header + text_format.MessageToString(msg))
    return atomic_write_bytes(path, msg.SerializeToString(deterministic=True))


def read_table_pb(path: str | Path, text: bool | None = None) -> CalibrationTable:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"calibration table {path} does not exist") from None
    msg = calibration_pb2.CalibrationTable()
    if _is_text(path, text):
        try:
            text_format.Parse(data.decode("utf-8"), msg)
        except (UnicodeDecodeError, text_format.ParseError) as e:
            raise ConfigError(f"{path}:{e}") from e
    else:
        try:
            msg.ParseFromString(data)
        except DecodeError as e:
            raise ConfigError(f"{path} is not a binary int8tune calibration table ({e}); a text table needs the "
                              f".pbtxt suffix") from e
    return table_from_message(msg, str(path))


def imported_from_table(table: CalibrationTable, fmt: str, source: Path | None) -> ImportedThresholds:
    """A table's thresholds as an ImportedThresholds (to apply a saved table to another one)."""
    return ImportedThresholds(
        format=fmt, source=source,
        blob_thresholds={v: e.threshold for v, e in table.blobs.items()},
        weight_thresholds={n: e.weight_thresholds.copy() for n, e in table.layers.items()
                           if e.weight_thresholds is not None})


def _read_pb(path: Path) -> ImportedThresholds:
    return imported_from_table(read_table_pb(path, text=False), "pb", path)


def _read_pbtxt(path: Path) -> ImportedThresholds:
    return imported_from_table(read_table_pb(path, text=True), "pbtxt", path)


register_format(TableFormat(
    name="pb", file_name="calibration_table.pb",
    description="int8tune calibration table, binary protobuf (proto/calibration.proto)",
    write=lambda table, path, prototxt=None: write_table_pb(table, path, text=False), read=_read_pb))
register_format(TableFormat(
    name="pbtxt", file_name="calibration_table.pbtxt",
    description="int8tune calibration table, protobuf text format (proto/calibration.proto)",
    write=lambda table, path, prototxt=None: write_table_pb(table, path, text=True), read=_read_pbtxt))
