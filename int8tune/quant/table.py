"""The calibration table: the thresholds that, with a QuantSpec, define an int8 model of an fp32 net.

Keyed the way users see the net: activation thresholds by blob (the value a quantized layer reads; for
in-place chains this is the blob's final version, whose value name is the blob name), weight thresholds by
layer. Everything the simulation, the tuner and the writers exchange is this one object.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from ..errors import ConfigError
from .spec import QuantSpec


@dataclass
class BlobEntry:
    """Activation quantization of one blob (the input of one or more quantized layers)."""

    value: str  # internal value name (== blob unless an earlier in-place version)
    blob: str  # user-visible blob name
    threshold: float  # T: scale = T/127 (T/255 unsigned)
    channel_thresholds: np.ndarray | None = None  # per-channel T (granularity per_channel), else None
    unsigned: bool = False
    calibrator: str = ""  # which calibrator produced T ("tuned" after tuning, "manual", ...)
    absmax: float | None = None  # from calibration, for reports (threshold / absmax is the clip ratio)

    def levels(self, spec: QuantSpec) -> int:
        """The largest stored level: 255 for a uint8 blob, spec.qmax (127) for a signed one."""
        return spec.umax if self.unsigned else spec.qmax

    def scale(self, spec: QuantSpec) -> np.float32:
        """s = T / 127 (T / 255 unsigned), in float32 arithmetic: the one value the simulation feeds and the QDQ
        export writes (they must not differ by a rounding of the last bit)."""
        return np.float32(np.float32(self.threshold) / np.float32(self.levels(spec)))


@dataclass
class LayerEntry:
    """One quantized layer: which blob it reads, its weight thresholds, whether it runs int8 at all."""

    layer: str
    type: str
    input_value: str  # the value it reads (key into CalibrationTable.blobs)
    extra_inputs: tuple[str, ...] = ()  # further quantized bottoms of multi-input layers (Eltwise, Concat)
    weight_thresholds: np.ndarray | None = None  # (C_out,) per channel or (1,) per tensor; None: no weights
    weight_method: str = ""
    int8: bool = True  # False: fallen back to fp32 (by the user's ignore list or the tuner)
    note: str = ""  # why it is fp32, e.g. "ignored by --ignore_layer_names", "fallback by tuner"


@dataclass
class CalibrationTable:
    model: str  # the net's name
    spec: QuantSpec
    blobs: dict[str, BlobEntry] = field(default_factory=dict)  # by value
    layers: dict[str, LayerEntry] = field(default_factory=dict)  # by layer name, in net order
    provenance: dict[str, Any] = field(default_factory=dict)

    # -- queries -------------------------------------------------------------------------------------
    def weights_record(self) -> dict[str, Any]:
        """Which weights the thresholds belong to, from the provenance: {"model_sha256", "equalize"} (with
        --equalize, the equalized weights of that caffemodel; "adaround"/"bias_correction" when the weights were
        corrected, then they are the corrected.caffemodel), or {} when the provenance does not say (a table
        of another tool or an older version). The .pb keeps it in its provenance, int8.prototxt in its header."""
        files = self.provenance.get("files") or {}
        model = files.get("model") if isinstance(files, dict) else None
        settings = self.provenance.get("settings") or {}
        quant = settings.get("quant") if isinstance(settings, dict) else None
        if not isinstance(model, dict) or not model.get("sha256") or not isinstance(quant, dict) \
                or "equalize" not in quant:
            return {}
        record = {"model_sha256": model["sha256"], "equalize": bool(quant["equalize"])}
        for lever in ("adaround", "bias_correction"):  # the weights are the corrected.caffemodel written with it
            if quant.get(lever):
                record[lever] = True
        if self.provenance.get("weights_sha256"):  # the weights the thresholds were measured with, as run
            record["weights_sha256"] = self.provenance["weights_sha256"]
        return record

    def quantized_layers(self) -> list[LayerEntry]:
        return [e for e in self.layers.values() if e.int8]

    def thresholds(self) -> dict[str, float]:
        return {v: e.threshold for v, e in self.blobs.items()}

    # -- edits (return new tables; tuning keeps every candidate) --------------------------------------
    def structure_key(self) -> tuple:
        """Equal for two tables whose int8 graphs have the same structure (which layers are int8, their weight
        thresholds, which blobs are per-channel or unsigned, the spec); the blob thresholds are the graph's feeds."""
        return (tuple(e.layer for e in self.quantized_layers()),
                tuple(None if e.weight_thresholds is None else np.asarray(e.weight_thresholds).tobytes()
                      for e in self.quantized_layers()),
                tuple(v for v, b in self.blobs.items() if b.channel_thresholds is not None),
                tuple(v for v, b in self.blobs.items() if b.unsigned), self.spec)

    def fingerprint(self) -> tuple:
        """Equal for two tables exactly when their int8 models compute the same thing."""
        return self.structure_key() + (tuple(
            (v, b.threshold, None if b.channel_thresholds is None else np.asarray(b.channel_thresholds).tobytes())
            for v, b in self.blobs.items()),)

    def digest(self) -> str:
        """sha256 of the fingerprint, for files (the trial log's fingerprint names the starting table by it)."""
        import hashlib

        return hashlib.sha256(repr(self.fingerprint()).encode()).hexdigest()

    def copy(self) -> "CalibrationTable":
        return copy.deepcopy(self)

    def with_threshold(self, value: str, threshold: float, calibrator: str = "tuned") -> "CalibrationTable":
        """A new table differing in one blob's threshold. Only that entry is copied (tuning makes thousands of
        candidates; the layers, weights and other blobs are shared and must not be mutated in place)."""
        if not np.isfinite(threshold) or threshold <= 0:
            raise ConfigError(f"threshold for {value!r} must be finite and positive, found {threshold}")
        out = dataclasses.replace(self, blobs=dict(self.blobs))
        entry = out.blobs[value] = copy.copy(self.blobs[value])
        if entry.channel_thresholds is not None:
            entry.channel_thresholds = entry.channel_thresholds * (threshold / entry.threshold)
        entry.threshold = float(threshold)
        entry.calibrator = calibrator
        return out

    def with_fallback(self, layers: Iterable[str], note: str = "fallback to fp32") -> "CalibrationTable":
        out = self.copy()
        for name in layers:
            out.layers[name].int8 = False
            out.layers[name].note = note
        return out

    def active_blobs(self) -> list[str]:
        """The blobs whose thresholds the int8 model uses: those read by an int8 layer, then the outputs that an
        int8 layer writes in int8 and no listed layer reads (placement.own_output_values; placement.py decides
        where each is quantized). Inputs of layers kept in fp32 are not active."""
        seen: list[str] = []
        for e in self.quantized_layers():
            for v in (e.input_value, *e.extra_inputs):
                if v not in seen:
                    seen.append(v)
        read = {v for e in self.layers.values() for v in (e.input_value, *e.extra_inputs)}
        return seen + [v for v in self.blobs if v not in read]
