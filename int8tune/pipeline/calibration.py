"""Calibration: statistics over the images, every calibrator's threshold per blob, the table, and the difference
it leaves (the model's and each int8 layer's own, on the measurement images)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ..config import LEVERS, QuantConfig
from ..errors import ConfigError
from ..executors import Executor
from ..log import logger
from ..metrics import METRICS
from ..quant.calibrate import (
    all_thresholds,
    build_table,
    collect_statistics,
    output_values,
    plan_quantization,
    planned_values,
    unsigned_values,
)
from ..quant.calibrators import CalibratorOptions
from ..quant.table import BlobEntry, CalibrationTable
from ..runtime import Engine
from ..tune.start import choose_calibrators
from ..tune.tuner import Tuner, TuneSettings
from .images import Images
from .workspace import Workspace, weights_digest

if TYPE_CHECKING:
    from .equalize_choice import EqualizeChoice


@dataclass
class Calibration:
    table: CalibrationTable
    images: Images  # what the statistics were collected on
    method: str  # the activation calibrator asked for (auto: chosen per blob)
    stats: dict  # value -> BlobStatistics
    per_blob: dict  # value -> {calibrator: threshold}
    scores: dict  # value -> {calibrator: measured difference} (method auto)
    ignored: list[str]  # planned layers kept in fp32
    measured: Images | None = None  # the measurement images (None when simplified)
    tuner: Tuner | None = None  # on the measurement images, with their fp32 references
    model_difference: float | None = None  # square, summed over the outputs, on `measured`
    _layer_differences: dict[str, float] | None = field(default=None, repr=False)
    ws: Workspace | None = None  # the workspace the table belongs to (with --adaround/--bias_correction: new weights)
    equalize_choice: EqualizeChoice | None = None  # --equalize left to its default: what decided it

    @property
    def layer_differences(self) -> dict[str, float]:
        """int8 layer -> its own output's square on `measured` (empty when nothing was measured). Computed when first
        asked for: the report asks for the calibration kept; the --equalize trial that is not kept never pays for it
        (SqueezeNet, 100 images: 2.8 s of the calibration's 28 s)."""
        if self._layer_differences is None:
            self._layer_differences = ({} if self.tuner is None or self.measured is None
                                       else self.tuner.layer_differences(self.table))
        return self._layer_differences

    def alternatives(self) -> dict[str, CalibrationTable]:
        """The whole table of each calibrator (model-wise candidates for the strategies and the start pick)."""
        from ..tune.start import tables_per_calibrator

        return tables_per_calibrator(self.table, {v: self.per_blob[v] for v in self.table.active_blobs()})


def calibrate(ws: Workspace, images: Images, quant: QuantConfig, *, measure: Images | None,
              simplified: bool = False, threads: int = 2, settings: dict | None = None,
              executor: Executor | None = None) -> Calibration:
    """Two streamed passes over `images`, every calibrator's thresholds, the table (method auto: per blob, the
    calibrator that disturbs the reading layers least on `measure`); then the difference on `measure`.
    `settings`: the run's settings for the table's provenance. `executor`: where the batches run (default here).

    The weight levers run on `measure` (the first calibration images): --adaround before the statistics (the
    thresholds are those of the rounded weights), --bias_correction after the table (it corrects the mean error
    the table leaves); the result's `ws` holds the weights the table belongs to."""
    from ..outputs import provenance
    from .levers import adaround_workspace, bias_corrected_workspace

    if simplified or measure is None:  # levers on by default are off where nothing is measured
        quant = replace(quant, **{k: False for k in quant.by_default}, by_default=())
    if quant.levers and (simplified or measure is None):
        raise ConfigError(f"{' and '.join(quant.levers)} learn from the layers' outputs on the calibration images; "
                          f"--simplified measures nothing: drop one or the other")
    ran = dict.fromkeys(LEVERS, False)  # what the table's provenance records: the levers that changed the weights
    if quant.adaround:
        rounded = _lever(adaround_workspace, ws, quant, "adaround", measure, quant, threads)
        ws, ran["adaround"] = rounded or ws, rounded is not None
    spec = quant.spec()
    plan = plan_quantization(ws.fold.net, spec)
    method = "minmax" if simplified else quant.method
    if method == "auto" and spec.granularity.activations_per_channel:
        raise ConfigError("--method auto chooses one threshold per blob; with --granularity per_channel pick a "
                          "calibrator (e.g. --method mse)")
    values = planned_values(plan)
    extra = output_values(ws.converted, plan)
    engine = Engine(ws.converted, threads=threads)
    stats = collect_statistics(engine, values + [v for v in extra if v not in values], images.stream, quant.bins,
                               spec.granularity.activations_per_channel, total=images.batch_count, executor=executor)
    options = CalibratorOptions(percentile=quant.percentile)
    signs = unsigned_values(ws.converted, spec, stats)
    per_blob = {v: all_thresholds(s, replace(options, unsigned=v in signs)) for v, s in stats.items()}
    first = "mse" if method == "auto" else method
    table = build_table(ws.fold.net, ws.converted, plan, stats, spec, first, quant.weight_method, options)
    for v in extra:  # the own thresholds of int8 layers' outputs (quant/placement.py: output points)
        if v not in table.blobs:
            table.blobs[v] = BlobEntry(v, ws.fold.net.blob_of[v], per_blob[v][first], calibrator=first,
                                       unsigned=v in signs, absmax=stats[v].absmax)
    result = Calibration(table, images, method, stats, per_blob, {}, [p.layer for p in plan if not p.int8])
    if not simplified and measure is not None:
        tuner = Tuner(ws.converted, measure.batches, METRICS.get("square"), TuneSettings(threads=threads),
                      reference=ws.reference, executor=executor)
        if method == "auto":
            table, result.scores = choose_calibrators(tuner, table, {v: per_blob[v] for v in values})
            result.table = table
        corrected = (_lever(bias_corrected_workspace, ws, quant, "bias_correction", table, measure, threads)
                     if quant.bias_correction else None)
        if corrected is not None:
            ws, ran["bias_correction"] = corrected, True
            tuner = Tuner(ws.converted, measure.batches, METRICS.get("square"), TuneSettings(threads=threads),
                          reference=ws.reference, executor=executor)
        result.measured, result.tuner = measure, tuner
        result.model_difference = tuner.difference(table)
    if ws.corrections is not None and quant.by_default:
        ws.corrections = replace(ws.corrections, by_default=quant.by_default)
    table.provenance = provenance(_as_run(settings or {}, ran), {"proto": ws.proto, "model": ws.model},
                                  images.paths)
    table.provenance["weights_sha256"] = weights_digest(ws)
    result.ws = ws
    return result


def _as_run(settings: dict, ran: dict[str, bool]) -> dict:
    """The run's settings with each lever that was on but changed nothing (skipped: on by default where it does not
    apply) recorded as off: the table then belongs to the weights as given, and test.sh does not look for a
    corrected.caffemodel that was never written."""
    quant = settings.get("quant")
    if not isinstance(quant, dict) or not any(quant.get(k) and not ran[k] for k in ran):
        return settings
    off = [k for k in ran if quant.get(k) and not ran[k]]
    quant = {**quant, **dict.fromkeys(off, False)}
    if isinstance(quant.get("by_default"), (list, tuple)):
        quant["by_default"] = [k for k in quant["by_default"] if k not in off]
    return {**settings, "quant": quant}


def _lever(apply, ws: Workspace, quant: QuantConfig, lever: str, *args) -> Workspace | None:
    """`apply(ws, *args)`: the lever's new workspace. A lever on by default that finds nothing to change is
    skipped with a note (None); one asked for is an error."""
    from .levers import NothingToCorrect

    try:
        return apply(ws, *args)
    except NothingToCorrect as e:
        if lever not in quant.by_default:
            raise
        logger.info("%s (on by default) skipped: %s", lever.replace("_", " "), e)
        return None
