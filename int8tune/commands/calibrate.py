"""`int8tune calibrate`: statistics, thresholds, the calibration table in every format, the QDQ model, a report.

Outputs under --output_path:
    calibration_table.pb / .pbtxt   the table (the tuning tools' --calibration_proto)
    int8.prototxt                   fp32 prototxt + quantization_param (the tuning tools' --calibration_model)
    tensorrt_calibration.cache, onnxruntime_calibration.cache, ncnn.table
    model_int8_qdq.onnx             the int8 model as QDQ ONNX (not with --simplified)
    statistics.csv                  per blob: range, moments, every calibrator's threshold, the chosen one
    report.log, config.json         what was done, the figures, the settings and provenance
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import CalibrateConfig
from ..errors import ConfigError
from ..log import logger
from ..metrics import METRICS
from ..outputs import atomic_write_bytes, atomic_write_json, atomic_write_text, provenance
from ..quant.auto import choose_calibrators
from ..quant.calibrate import (all_thresholds, build_table, collect_statistics, output_values, plan_quantization,
                               planned_values, unsigned_values)
from ..quant.calibrators import ACTIVATION_CALIBRATORS, CalibratorOptions
from ..quant.formats import write_all
from ..quant.census import census, render_census
from ..quant.qdq import export_qdq
from ..quant.verify import check_export, render_export_check
from ..quant.table import BlobEntry, CalibrationTable
from ..runtime import Engine
from ..tune.tuner import TuneSettings, Tuner, metric_outputs
from .common import Workspace, data_items, load_workspace, prepared_batches, streamed_batches, write_equalized


@dataclass
class CalibrationResult:
    table: CalibrationTable
    stats: dict  # value -> BlobStatistics
    per_blob: dict  # value -> {calibrator: threshold}
    scores: dict  # value -> {calibrator: measured difference} (method auto)
    lines: list[str]  # report lines
    tuner: Tuner | None  # holds the measurement images and fp32 references (None when simplified)


def calibrate_model(cfg: CalibrateConfig, ws: Workspace, items, prepare_image, batches=None,
                    measure_batches: list | None = None) -> CalibrationResult:
    """Statistics, every calibrator's thresholds, the table. Images come from `items` (prepared on each pass) or
    from `batches`, a callable giving a fresh iterator of input arrays per pass (the Python API's dataloader);
    `measure_batches` are the images the auto choice and the difference check run on."""
    spec = cfg.quant.spec()
    plan = plan_quantization(ws.fold.net, spec)
    method = "minmax" if cfg.simplified else cfg.quant.method
    if method == "auto" and spec.granularity.activations_per_channel:
        raise ConfigError("--method auto chooses one threshold per blob; with --granularity per_channel pick a "
                          "calibrator (e.g. --method mse)")
    values = planned_values(plan)
    extra = output_values(ws.converted, plan)
    engine = Engine(ws.converted, threads=cfg.threads)
    source = batches if batches is not None else streamed_batches(items, cfg.data, prepare_image, ws.input_shape)
    stats = collect_statistics(engine, values + [v for v in extra if v not in values], source, cfg.quant.bins,
                               spec.granularity.activations_per_channel)
    options = CalibratorOptions(percentile=cfg.quant.percentile)
    signs = unsigned_values(ws.converted, spec, stats)
    per_blob = {v: all_thresholds(s, replace(options, unsigned=v in signs)) for v, s in stats.items()}
    first = "mse" if method == "auto" else method
    table = build_table(ws.fold.net, ws.converted, plan, stats, spec, first, cfg.quant.weight_method, options)
    for v in extra:  # the own thresholds of int8 layers' outputs (quant/placement.py: output points)
        if v not in table.blobs:
            s = stats[v]
            table.blobs[v] = BlobEntry(v, ws.fold.net.blob_of[v], per_blob[v][first], calibrator=first,
                                       unsigned=v in signs, absmax=s.absmax)
    lines = [f"int8tune calibrate: {ws.proto} + {ws.model}",
             f"{len(items)} calibration image(s) from {cfg.data.data_list}" if items is not None
             else "calibration images from the dataloader",
             f"{sum(p.int8 for p in plan)} int8 layer(s) of {len(plan)} of types {', '.join(spec.quantize_types)}"
             + (f"; ignored: {', '.join(p.layer for p in plan if not p.int8)}" if any(not p.int8 for p in plan) else ""),
             f"folded BatchNorm/Scale into: {', '.join(ws.fold.folded) or 'none'}",
             f"activation calibrator: {method}; weights: {cfg.quant.weight_method}; granularity "
             f"{spec.granularity.value}; rounding {spec.rounding.value}; bias {spec.bias.value}"
             f"; target {spec.target.value}{'; unsigned for non-negative blobs' if spec.unsigned_blobs else ''}"]
    scores: dict[str, dict[str, float]] = {}
    tuner = None
    if not cfg.simplified:
        measured = measure_batches if measure_batches is not None else \
            prepared_batches(items[: cfg.measure_images], cfg.data, prepare_image, ws.input_shape)
        tuner = Tuner(ws.converted, measured, METRICS.get("square"), TuneSettings(threads=cfg.threads))
        if method == "auto":
            table, scores = choose_calibrators(tuner, table, {v: per_blob[v] for v in values})
    table.provenance = provenance(cfg.to_dict(), {"proto": ws.proto, "model": ws.model},
                                  [str(i.path) for i in items] if items is not None else None)
    return CalibrationResult(table, stats, per_blob, scores, lines, tuner)


def run_calibrate(cfg: CalibrateConfig, prepare_image) -> int:
    t_start = time.perf_counter()
    print("int8tune calibrate\n" + cfg.describe())
    out = cfg.output_path
    out.mkdir(parents=True, exist_ok=True)
    ws = load_workspace(cfg.model.proto, cfg.model.model, cfg.quant.equalize)
    items = data_items(cfg.data)
    result = calibrate_model(cfg, ws, items, prepare_image)
    lines = result.lines + write_calibration(result, ws, out, min(len(items), cfg.measure_images))
    lines.append(f"total time {time.perf_counter() - t_start:.1f}s")
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "report.log", text)
    print(text)
    return 0


def write_calibration(result: CalibrationResult, ws: Workspace, out: Path, n_measured: int) -> list[str]:
    """Every table format, the QDQ model, statistics.csv, config.json under `out`; returns report lines."""
    table = result.table
    written = write_all(table, ws.proto, out)
    _write_statistics(out / "statistics.csv", result.stats, result.per_blob, table, ws, result.scores)
    atomic_write_json(out / "config.json", table.provenance)
    lines: list[str] = []
    if result.tuner is not None:
        lines += _difference_lines(result.tuner, table, ws, n_measured)
        lines += _qdq_lines(ws, table, out, result.tuner.batches, threads=result.tuner.settings.threads)
    lines += ["", "per-blob choice (statistics.csv has every calibrator's threshold):"]
    for v in table.active_blobs():
        e = table.blobs[v]
        lines.append(f"  {e.blob:<40} {e.calibrator:<10} T={e.threshold:<10.5g} absmax={e.absmax or 0:<10.5g} "
                     f"T/absmax={e.threshold / e.absmax if e.absmax else 0:.3f}{'  unsigned' if e.unsigned else ''}")
    equalized = write_equalized(ws, out)
    lines += equalized + ["", "files:"] + [f"  {p}" for p in written.values()] + [f"  {out / 'statistics.csv'}"]
    if ws.equalization is not None:  # the lines may only be the hint that --equalize could help
        lines.append(f"  {out / 'equalized.caffemodel'}")
    return lines


def _write_statistics(path: Path, stats, per_blob, table, ws, scores) -> None:
    rows = []
    for v, s in stats.items():
        entry = table.blobs.get(v)
        row = {"blob": ws.fold.net.blob_of[v], "value": v, "role": "input" if v in table.active_blobs() else "output",
               "absmax": s.absmax, "min": s.minimum, "max": s.maximum,
               "mean": s.sum / s.count if s.count else 0.0,
               "std": float(np.sqrt(max(s.sumsq / s.count - (s.sum / s.count) ** 2, 0))) if s.count else 0.0,
               "zero_fraction": s.zeros / s.count if s.count else 0.0}
        for name in ACTIVATION_CALIBRATORS.names():
            row[f"T_{name}"] = per_blob[v][name]
        for name, d in scores.get(v, {}).items():
            row[f"diff_{name}"] = d
        row["chosen"] = entry.calibrator if entry else ""
        row["threshold"] = entry.threshold if entry else np.nan
        row["ratio"] = entry.threshold / s.absmax if entry and s.absmax else np.nan
        rows.append(row)
    atomic_write_bytes(path, pd.DataFrame(rows).to_csv(index=False, float_format="%.6g").encode())


def _difference_lines(tuner: Tuner, table, ws, n_images: int) -> list[str]:
    model_diff = tuner.difference(table)
    per_layer = tuner.layer_differences(table)
    worst = sorted(per_layer.items(), key=lambda kv: -kv[1])[:10]
    lines = ["", f"difference fp32 vs int8 on {n_images} calibration image(s), metric square (sum over "
             f"{', '.join(metric_outputs(ws.converted))}): {model_diff:.6g}",
             "worst int8 layers (own output, everything upstream int8):"]
    lines += [f"  {name:<40} {d:.6g}" for name, d in worst]
    return lines


def _qdq_lines(ws, table, out: Path, batches: list | None = None, images_kind: str = "calibration",
               threads: int = 2) -> list[str]:
    """Write the QDQ model; report what onnxruntime runs in int8 and in float (census), and, on `batches`,
    whether the file in a default session on this host computes what the simulation measured."""
    try:
        model, report = export_qdq(ws.converted, table)
    except ConfigError as e:
        logger.warning("no QDQ export: %s", e)
        return ["", f"QDQ export skipped: {e}"]
    path = out / "model_int8_qdq.onnx"
    atomic_write_bytes(path, model.SerializeToString())
    lines = ["", f"QDQ model {path} (target {table.spec.target.value}), as onnxruntime runs it:"]
    lines += ["  " + line for line in render_census(census(model, threads=threads))]
    if report.fp32_in_runtime:
        lines += [f"  output in float: {layer} ({why})" for layer, why in report.fp32_in_runtime.items()]
    if not table.spec.target.onnxruntime:
        lines.append(f"  the table is made for {table.spec.target.value} (signed int8, its own rounding); this file is "
                     f"onnxruntime's reading of it, not what {table.spec.target.value} computes")
    if batches:
        check = check_export(ws.converted, table, model, batches, threads=threads)
        lines += render_export_check(check, path.name, images_kind)
    return lines
