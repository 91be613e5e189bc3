"""What every table format shares: its registry entry, what its reader returns, and how imported keys are
matched back to a CalibrationTable.

A format module defines a writer and a reader with natural signatures, then registers a `TableFormat` whose
`write(table, path, fp32_prototxt)` / `read(path)` adapt them to one shape. Readers return an
`ImportedThresholds` (the protobuf table also has an exact reader, `pb.read_table_pb`); `apply_imported`
turns one into a new table and returns the keys that matched nothing, which the caller reports. Nothing read
from a file is dropped silently: keys a format cannot carry over land in `unknown_keys` and come back as
unmatched too.

Engine formats (int8 prototxt, TensorRT, ncnn, onnxruntime) carry the blobs that int8 layers read
(`CalibrationTable.active_blobs`), not every blob of the table: handing an engine a threshold for the input of a
fallen-back layer would make it quantize there again. They are 8-bit signed formats (ncnn, TensorRT) or
8-bit fixed (Intel Caffe); a table with `spec.bits != 8` is refused by them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, MutableMapping

import numpy as np

from ...errors import ConfigError, ModelError
from ...log import logger
from ...registry import Registry
from ..spec import CONVOLUTION_TYPES, DEPTHWISE_TYPES
from ..table import BlobEntry, CalibrationTable

if TYPE_CHECKING:
    from ...caffe.net import CaffeNet

# Relative difference above which two imported thresholds for the same blob are reported as a conflict.
CONFLICT_RTOL = 1e-6


@dataclass
class ImportedThresholds:
    """Thresholds read from a file, keyed as the file keys them (not yet matched to a table).

    - `blob_thresholds`: T by value name or user-visible blob name (TensorRT, onnxruntime, Intel scale_out).
    - `weight_thresholds`: T_w per output channel (or per group, or one per tensor) by layer name.
    - `input_thresholds`: T of the blob a layer reads, by layer name (ncnn, Intel scale_in).
    - `unknown_keys`: keys read from the file that no field above can hold (e.g. ncnn's `<layer>_param_1`);
      `apply_imported` returns them as unmatched.
    - `file_keys`: (kind, name) -> the key as written in the file, so that messages quote the file.
    """

    format: str
    source: Path | None = None
    blob_thresholds: dict[str, float] = field(default_factory=dict)
    weight_thresholds: dict[str, np.ndarray] = field(default_factory=dict)
    input_thresholds: dict[str, float] = field(default_factory=dict)
    input_unsigned: dict[str, bool] = field(default_factory=dict)  # by layer, where the file says (Intel)
    # blob thresholds converted from a scale as signed (127) because the file does not say (Intel's scale_out of
    # a blob no quantized layer reads); a table entry that is unsigned converts them with 255 instead
    assumed_signed: set[str] = field(default_factory=set)
    # blob key -> the name to match when the table has no value of that key (Intel's scale_out of an in-place
    # rewritten top: this layer's version `top@layer` when the table has it, else the blob's final version)
    fallback_names: dict[str, str] = field(default_factory=dict)
    unknown_keys: list[str] = field(default_factory=list)
    file_keys: dict[tuple[str, str], str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # assumptions the reader made, for the report
    # What the file records of the weights it was calibrated on, where it records it (this tool's int8 prototxt
    # header): {"model_sha256": ..., "equalize": bool}; empty for files of other tools.
    weights_record: dict = field(default_factory=dict)

    def key(self, kind: str, name: str) -> str:
        return self.file_keys.get((kind, name), name)

    def __len__(self) -> int:
        return len(self.blob_thresholds) + len(self.weight_thresholds) + len(self.input_thresholds)


@dataclass(frozen=True)
class TableFormat:
    """One file format a calibration table is written to and read from."""

    name: str
    file_name: str  # the fixed file name `write_all` uses under the output directory
    description: str
    write: Callable[[CalibrationTable, Path, Path | None], Path]  # (table, path, fp32 prototxt or None)
    read: Callable[[Path], ImportedThresholds]
    needs_prototxt: bool = False  # the writer cannot work without the fp32 prototxt
    # The file is read by an engine that runs the Caffe net's own weights: it folds a convolution's BatchNorm but
    # not a BatchNorm after an Eltwise sum (caffe/fold.py fold_through_sums), so weight thresholds are written
    # for the weights before that fold, and read back onto them.
    unfolded_weights: bool = False


TABLE_FORMATS: Registry[TableFormat] = Registry("table format")


def register_format(fmt: TableFormat) -> TableFormat:
    TABLE_FORMATS.add(fmt.name, fmt)
    return fmt


# --- weights folded through sums --------------------------------------------------------------------------

def unscale_weights(table: CalibrationTable, sum_scales: Mapping[str, np.ndarray]) -> CalibrationTable:
    """`table` for an engine that runs the weights before fold_through_sums: each such convolution's weights were
    multiplied by a per-output-channel a, so T_c / |a_c| (per channel; a per-tensor threshold spreads over the
    channels) quantizes the engine's weights to the same integers. Other layers are shared, not copied."""
    if not sum_scales:
        return table
    layers = dict(table.layers)
    for name, a in sum_scales.items():
        entry = layers.get(name)
        if entry is None or entry.weight_thresholds is None:
            continue
        t = np.asarray(entry.weight_thresholds, dtype=np.float64).reshape(-1)
        layers[name] = replace(entry, weight_thresholds=np.broadcast_to(t, a.shape) / np.abs(a))
    return replace(table, layers=layers)


def rescale_imported(imported: ImportedThresholds, sum_scales: Mapping[str, np.ndarray]) -> ImportedThresholds:
    """The reverse of unscale_weights for a file read back: its weight thresholds onto the folded weights."""
    for name, a in sum_scales.items():
        w = imported.weight_thresholds.get(name)
        if w is not None:
            w = np.asarray(w, dtype=np.float64).reshape(-1)
            if w.size in (1, a.size):
                imported.weight_thresholds[name] = np.broadcast_to(w, a.shape) * np.abs(a)
    return imported


# --- shared helpers for writers ---------------------------------------------------------------------------

def require_8bit(table: CalibrationTable, fmt: str) -> None:
    if table.spec.bits != 8:
        raise ConfigError(f"the {fmt} format holds 8-bit quantization only; this table uses {table.spec.bits} "
                          f"bits (--bits)")


def active_entries(table: CalibrationTable) -> list[BlobEntry]:
    """The blob entries int8 layers read, in table order; each threshold checked finite and positive."""
    out = []
    for value in table.active_blobs():
        try:
            entry = table.blobs[value]
        except KeyError:
            raise ConfigError(f"the table has a layer reading {value!r} but no threshold for it; blobs: "
                              f"{', '.join(table.blobs)}") from None
        check_threshold(entry.threshold, f"blob {entry.blob!r} (value {value!r})")
        out.append(entry)
    return out


def check_threshold(t: float, what: str) -> float:
    if not np.isfinite(t) or t <= 0:
        raise ConfigError(f"threshold of {what} must be finite and positive, found {t}")
    return float(t)


def check_weight_thresholds(w: np.ndarray, layer: str) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    bad = [i for i, t in enumerate(w) if not np.isfinite(t) or t <= 0]
    if bad or w.size == 0:
        raise ConfigError(f"weight thresholds of layer {layer!r} must be finite and positive; bad channel(s) "
                          f"{bad[:10]} (of {w.size})")
    return w


@dataclass(frozen=True)
class LayerShape:
    """What a writer needs to know about a weighted layer beyond the table: its output channels and groups."""

    num_output: int
    group: int


def read_net_param(path: str | Path):
    """The prototxt as a NetParameter with V2 `layer` entries (a V1 `layers` file is upgraded in memory)."""
    from ...caffe.loader import read_prototxt
    from ...caffe.upgrade import upgrade_v1_net

    net = read_prototxt(path)
    if net.layers and net.layer:
        raise ModelError(f"{path}: uses both the V1 `layers` and the V2 `layer` field; use one format")
    if net.layers:
        net = upgrade_v1_net(net, str(path))
    return net


def layer_shapes(net_param) -> dict[str, LayerShape]:
    """num_output and group of each Convolution-like and InnerProduct layer of a NetParameter."""
    out: dict[str, LayerShape] = {}
    for lp in net_param.layer:
        if lp.type in CONVOLUTION_TYPES:
            p = lp.convolution_param
            # The depthwise forks have one group per input channel; deploy nets use multiplier 1 (= num_output).
            group = p.num_output if lp.type in DEPTHWISE_TYPES else p.group
            out[lp.name] = LayerShape(int(p.num_output), max(int(group), 1))
        elif lp.type == "InnerProduct":
            out[lp.name] = LayerShape(int(lp.inner_product_param.num_output), 1)
    return out


# --- matching imported keys to a table --------------------------------------------------------------------

def apply_imported(table: CalibrationTable, imported: ImportedThresholds,
                   net: "CaffeNet | None" = None) -> tuple[CalibrationTable, list[str]]:
    """A new table with the imported thresholds, and the file keys that matched nothing in the table.

    Matching:
    - a blob key names a value of the table, or else a user-visible blob: it sets every table value of that
      blob (the in-place versions of one Caffe blob);
    - a per-layer input key names a layer of the table (its input value), or a layer of `net` whose first
      bottom has a table entry; it overrides a blob key for the same value (a conflict is logged);
    - a weight key names a table layer that has weight thresholds. A file may carry one value per output
      channel, per group (ncnn's grouped convolutions: repeated over the group's channels) or per tensor
      (repeated over the channels). A zero weight threshold (Intel Caffe writes scale 0 for an all-zero
      channel) keeps the table's threshold for that channel, since any scale quantizes zeros exactly.
    Imported activation thresholds scale per-channel thresholds proportionally, as `with_threshold` does.
    A blob's unsigned flag stays the table's (a file's u8/s8 marking only decides how its scales convert to
    thresholds). The calibrator / weight_method of every changed entry becomes "imported:<format>".
    """
    out = table.copy()
    tag = f"imported:{imported.format}"
    where = str(imported.source) if imported.source else imported.format
    unmatched: list[str] = list(imported.unknown_keys)
    for note in imported.notes:
        logger.info("%s: %s", where, note)
    chosen: dict[str, tuple[float, str]] = {}  # value -> (threshold, file key)

    for name, t in imported.blob_thresholds.items():
        values = _values_for_blob(out, name) or _values_for_blob(out, imported.fallback_names.get(name, name))
        if not values:
            unmatched.append(imported.key("blob", name))
            continue
        for value in values:
            unsigned_rescale = 255 / 127 if name in imported.assumed_signed and out.blobs[value].unsigned else 1.0
            chosen[value] = (float(t) * unsigned_rescale, imported.key("blob", name))
    for layer, t in imported.input_thresholds.items():
        value = _value_for_layer(out, layer, net)
        key = imported.key("input", layer)
        if value is None:
            unmatched.append(key)
            continue
        if value in chosen and not _close(chosen[value][0], t):
            logger.warning("%s: %s gives blob %r threshold %g but %s gives %g; using %s (the per-layer key)",
                           where, chosen[value][1], value, chosen[value][0], key, t, key)
        chosen[value] = (float(t), key)

    bad = [f"{key} = {t}" for _, (t, key) in chosen.items() if not np.isfinite(t) or t <= 0]
    if bad:
        raise ConfigError(f"{where}: imported thresholds must be finite and positive: {', '.join(bad[:10])}")
    for value, (t, _) in chosen.items():
        entry = out.blobs[value]
        if entry.channel_thresholds is not None:
            entry.channel_thresholds = entry.channel_thresholds * (t / entry.threshold)
        entry.threshold = t
        entry.calibrator = tag

    for layer, w in imported.weight_thresholds.items():
        key = imported.key("weights", layer)
        entry = out.layers.get(layer)
        if entry is None or entry.weight_thresholds is None:
            unmatched.append(key)
            continue
        entry.weight_thresholds = _fit_weights(entry.weight_thresholds, np.asarray(w, dtype=np.float64),
                                               layer, key, where)
        entry.weight_method = tag
    return out, unmatched


def _values_for_blob(table: CalibrationTable, name: str) -> list[str]:
    if name in table.blobs:
        return [name]
    return [v for v, e in table.blobs.items() if e.blob == name]


def _value_for_layer(table: CalibrationTable, layer: str, net: "CaffeNet | None") -> str | None:
    if layer in table.layers:
        return table.layers[layer].input_value
    if net is not None:
        for candidate in net.layers:
            if candidate.name == layer and candidate.bottoms and candidate.bottoms[0] in table.blobs:
                return candidate.bottoms[0]
    return None


def _fit_weights(current: np.ndarray, imported: np.ndarray, layer: str, key: str, where: str) -> np.ndarray:
    current = np.asarray(current, dtype=np.float64).reshape(-1)
    imported = imported.reshape(-1)
    n, m = current.size, imported.size
    if m == n:
        fitted = imported.copy()
    elif m and n % m == 0:
        fitted = np.repeat(imported, n // m)  # per group (contiguous channels) or per tensor
    elif n == 1 and m and np.all(imported == imported[0]):
        fitted = imported[:1].copy()
    else:
        raise ConfigError(f"{where}: {key} has {m} weight thresholds but layer {layer!r} has {n} in the table "
                          f"(expected {n}, a divisor of {n}, or equal values for a per-tensor table)")
    if np.any(~np.isfinite(fitted)) or np.any(fitted < 0):
        raise ConfigError(f"{where}: {key}: weight thresholds must be finite and non-negative, found "
                          f"{fitted[~np.isfinite(fitted) | (fitted < 0)][:5]}")
    zero = fitted == 0
    if zero.any():
        logger.info("%s: %s has %d zero weight threshold(s) (all-zero channels); keeping the table's",
                    where, key, int(zero.sum()))
        fitted[zero] = current[zero]  # fitted has the table's n entries in every branch above
    return fitted


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= CONFLICT_RTOL * max(abs(a), abs(b))


def parse_float(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{where}: expected a number, found {text!r}") from None


def text_lines(path: Path, fmt: str) -> Iterable[tuple[int, str]]:
    """(line number, line without its end) of a text file; a missing or binary file is a ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{fmt} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{fmt} file {path} cannot be read as text: {e}") from e
    return enumerate(text.splitlines(), start=1)


def add_unique(target: MutableMapping, key: str, value, path: Path, line: int, seen: dict[str, int]) -> None:
    """Store `value` under `key`, refusing a key given twice (engines would silently keep one of them)."""
    if key in seen:
        raise ConfigError(f"{path}:{line}: key {key!r} already given on line {seen[key]}")
    seen[key] = line
    target[key] = value
