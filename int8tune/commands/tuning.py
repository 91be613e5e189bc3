"""`int8tune test`, `int8tune tune` and `int8tune auto` (test.sh, tune.sh, main.sh).

test   difference of one layer's output (--int8_layer) or of the model plus every int8 layer's own difference
tune   sweep one layer's threshold (--tune_layer), write every candidate int8 model, name the best
auto   the whole loop: calibrate if no table is given, measure, tune every blob in order, write the tuned model
       in every format with report.log, layers.csv, trials.jsonl and plots
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import CalibrateConfig, TuneConfig
from ..errors import ConfigError, Int8TuneError
from ..log import logger
from ..metrics import METRICS, Metric
from ..outputs import atomic_write_bytes, atomic_write_json, atomic_write_text, provenance
from ..plots import plot_histogram, plot_layer_differences
from ..quant.calibrate import collect_statistics
from ..quant.formats import write_all, write_int8_prototxt, write_table_pb
from ..quant.table import CalibrationTable
from ..runtime import Engine
from ..tune.search import SearchSettings
from ..tune.restarts import RESTART_JITTER, Restart, RestartsResult, tune_with_restarts
from ..tune.trials import Trial, TrialLog, read_header, refuse_other_inputs
from ..tune.tuner import TuneSettings, Tuner, metric_outputs
from ..metrics import Metric  # noqa: F811
from ..quant.auto import best_start, tables_per_calibrator
from .detections import detection_lines
from .validation import judge_of, validation_lines, validation_tuner
from .calibrate import _qdq_lines, calibrate_model, write_calibration
from .common import (Workspace, batch_labels, batch_names, data_items, fingerprint, load_table, load_workspace,
                     prepared_batches, write_equalized)


@dataclass
class Session:
    """Everything a tuning command works with, loaded once."""

    cfg: TuneConfig
    ws: Workspace
    items: list
    batches: list[np.ndarray]
    metric: Metric
    tuner: Tuner
    table: CalibrationTable
    calibration: object | None = None  # CalibrationResult when auto calibrated in this run
    start_scores: dict | None = None  # calibrator -> metric of its whole table (when calibrated in this run)
    alternatives: dict | None = None  # calibrator -> its whole table (model-wise candidates)


def open_session(cfg: TuneConfig, prepare_image, need_table: bool, log_name: str | None = None,
                 full_search: bool = False) -> Session:
    ws = load_workspace(cfg.model.proto, cfg.model.model, cfg.quant.equalize)
    items = data_items(cfg.data)
    metric = METRICS.get(cfg.metric)
    table = load_table(cfg, ws)
    fp = None
    if log_name:
        settings_fp = {k: v for k, v in cfg.to_dict().items() if k not in SETTINGS_THAT_CHANGE_NO_TRIAL}
        fp = fingerprint(ws, items, settings_fp)
        if cfg.resume and (cfg.output_path / log_name).is_file():
            _refuse_early(cfg.output_path / log_name, fp)
    calibration = None
    if table is None:
        if need_table:
            raise ConfigError("give the int8 model to work on: --calibration_proto (calibration_table.pb/.pbtxt) "
                              "and/or --calibration_model (int8.prototxt); `int8tune calibrate` writes both")
        logger.info("no table given: calibrating first (method %s)", cfg.quant.method)
        cal_cfg = CalibrateConfig(model=cfg.model, data=cfg.data, quant=cfg.quant,
                                  output_path=cfg.output_path / "calibration", threads=cfg.threads)
        calibration = calibrate_model(cal_cfg, ws, items, prepare_image)
        table = calibration.table
    batches = prepared_batches(items, cfg.data, prepare_image, ws.input_shape)
    subset = cfg.search_subset if cfg.search_subset >= 0 else (len(batches) // 2 if len(batches) >= 6 else 0)
    if full_search and cfg.search_subset < 0:
        subset = 0  # one layer: every candidate is scored on every image
    settings = TuneSettings(objective=cfg.objective, search=cfg.search, threads=cfg.threads, subset=subset,
                            min_gain=0.0 if full_search else cfg.min_gain,
                            search_settings=SearchSettings(step_ratio=cfg.step_ratio, steps=cfg.steps,
                                                           patience=cfg.patience, multipliers=cfg.multipliers),
                            metric_params=cfg.metric_params)
    start_scores: dict[str, float] = {}
    alternatives: dict[str, CalibrationTable] = {}
    if calibration is not None:
        write_calibration(calibration, ws, cfg.output_path / "calibration", len(items))
        alternatives = tables_per_calibrator(table, {v: calibration.per_blob[v] for v in table.active_blobs()})
        if not spec_per_channel(table) and cfg.strategy == "layerwise":
            # Model-wise first: every calibrator's whole table against the metric on the tuning images.
            probe = Tuner(ws.converted, batches, metric, settings, labels=batch_labels(items, cfg.data),
                          names=batch_names(items, cfg.data))
            tables = alternatives
            name, start_scores = best_start(probe, tables)
            table = tables[name]
            start_scores = {**start_scores, "chosen": name}
    log = None
    if fp is not None:
        fp["table"] = _table_hash(table)
        log = TrialLog(cfg.output_path / log_name, fp, resume=cfg.resume, comparable=_comparable)
    tuner = Tuner(ws.converted, batches, metric, settings, log, labels=batch_labels(items, cfg.data),
                  names=batch_names(items, cfg.data))
    return Session(cfg, ws, items, batches, metric, tuner, table, calibration, start_scores, alternatives)


# Settings that cannot change a trial's result, kept out of the trial log's fingerprint (the validation images are
# scored after tuning, the pick chooses among finished restarts). Logs written while restart_pick was still part of
# it resume too (_comparable drops these keys from both sides).
SETTINGS_THAT_CHANGE_NO_TRIAL = ("resume", "plots", "threads", "validation_list", "restart_pick")


def _comparable(fp: dict) -> dict:
    """The part of a trial log's fingerprint that must match to resume from it (settings as a dict)."""
    out = dict(fp)
    try:
        settings = json.loads(out.get("settings", "{}"))
    except (TypeError, json.JSONDecodeError):
        return out
    out["settings"] = {k: v for k, v in settings.items() if k not in SETTINGS_THAT_CHANGE_NO_TRIAL}
    return out


def _refuse_early(path: Path, fp: dict) -> None:
    """Before calibrating: refuse a trial log from other inputs now, not after the calibration it would waste.
    The starting table is not known yet, so only the rest of the fingerprint is compared here."""
    old, new = _comparable(read_header(path)), _comparable(fp)
    old.pop("table", None)
    if old != new:
        raise refuse_other_inputs(path, old, new)


def spec_per_channel(table: CalibrationTable) -> bool:
    return table.spec.granularity.activations_per_channel


def _table_hash(table: CalibrationTable) -> str:
    h = hashlib.sha256()
    for v, e in sorted(table.blobs.items()):
        h.update(f"{v}:{e.threshold!r}:{e.unsigned}".encode())
    for name, e in table.layers.items():
        h.update(f"{name}:{e.int8}".encode())
        if e.weight_thresholds is not None:
            h.update(np.asarray(e.weight_thresholds, dtype=np.float64).tobytes())
    return h.hexdigest()


def _header(s: Session, title: str) -> list[str]:
    return [f"int8tune {title}: {s.ws.proto} + {s.ws.model}",
            f"images: {len(s.items)} from {s.cfg.data.data_list} (in {len(s.batches)} batch(es))",
            f"metric: {s.metric.name} ({s.metric.direction.value} is better) on "
            f"{', '.join(metric_outputs(s.ws.converted))}; per-layer differences use square",
            f"int8 layers: {len(s.table.quantized_layers())} of {len(s.table.layers)}"
            + (f" (fp32: {', '.join(e.layer for e in s.table.layers.values() if not e.int8)})"
               if any(not e.int8 for e in s.table.layers.values()) else "")]


# --- test ---------------------------------------------------------------------------------------------------

def run_test(cfg: TuneConfig, prepare_image) -> int:
    print("int8tune test\n" + cfg.describe())
    s = open_session(cfg, prepare_image, need_table=True)
    lines = _header(s, "test")
    if cfg.int8_layer:
        if cfg.int8_layer not in s.table.layers:
            raise ConfigError(f"--int8_layer {cfg.int8_layer!r} is not a quantized layer of the table; quantized "
                              f"layers: {', '.join(s.table.layers)}")
        diffs = s.tuner.layer_differences(s.table)
        if cfg.int8_layer not in diffs:
            raise ConfigError(f"--int8_layer {cfg.int8_layer!r} runs in fp32 in this table")
        value = s.tuner.layer_outputs(s.table)[cfg.int8_layer]
        lines.append(f"layer {cfg.int8_layer} (output {s.ws.fold.net.blob_of[value]}), all upstream layers int8 as "
                     f"the table says: square difference {diffs[cfg.int8_layer]:.6g}")
    else:
        model = s.tuner.difference(s.table)
        lines.append(f"model difference ({s.metric.name}): {model:.6g}")
        if s.metric.direction.value == "higher":
            lines.append(f"fp32 {s.metric.name}: {s.tuner.fp32_score():.6g}")
        lines += detection_lines(s.tuner, s.metric.name, [("this table", s.table)])
        lines += _image_lines(s)
        lines += ["", "every int8 layer's own output difference (square), worst first:"]
        diffs = s.tuner.layer_differences(s.table)
        for name, d in sorted(diffs.items(), key=lambda kv: -kv[1]):
            e = s.table.layers[name]
            lines.append(f"  {name:<40} {e.type:<14} input {s.table.blobs[e.input_value].blob:<32} {d:.6g}")
    return _finish(cfg.output_path, lines)


def _image_lines(s: Session, show: int = 20) -> list[str]:
    """The model difference of each image alone, worst first (the first `show`)."""
    per_image = s.tuner.image_differences(s.table)
    worst_first = sorted(per_image, key=lambda kv: kv[1], reverse=s.metric.direction.value == "lower")
    head = f"each image's own model difference ({s.metric.name}), worst first"
    if len(per_image) > show:
        head += f" (the {show} worst of {len(per_image)}; all in images.csv)"
    lines = ["", head + ":"] + [f"  {name:<60} {d:.6g}" for name, d in worst_first[:show]]
    frame = pd.DataFrame({"image": [n for n, _ in per_image], s.metric.name: [d for _, d in per_image]})
    atomic_write_bytes(s.cfg.output_path / "images.csv", frame.to_csv(index=False, float_format="%.6g").encode())
    return lines


def _finish(out: Path, lines: list[str]) -> int:
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "report.log", text)
    print(text + f"wrote {out / 'report.log'}")
    return 0


# --- tune (one layer) ------------------------------------------------------------------------------------

OBJECTIVE_WORDS = {"model": "the metric on the model outputs", "outputs": "the square distance of the model outputs",
                   "layer": "the square distance of the layer output",
                   "guarded": "the square distance of the model outputs, each move kept only if the metric improves too"}


def run_tune(cfg: TuneConfig, prepare_image) -> int:
    print("int8tune tune\n" + cfg.describe())
    if not cfg.tune_layer:
        raise ConfigError("--tune_layer is required: the int8 layer whose input threshold to sweep")
    s = open_session(cfg, prepare_image, need_table=True, full_search=True)
    if cfg.tune_layer not in s.table.layers or not s.table.layers[cfg.tune_layer].int8:
        raise ConfigError(f"--tune_layer {cfg.tune_layer!r} is not an int8 layer of the table; int8 layers: "
                          f"{', '.join(e.layer for e in s.table.quantized_layers())}")
    value = s.table.layers[cfg.tune_layer].input_value
    trials: list[Trial] = []
    t0 = time.perf_counter()
    tuned, result = s.tuner.tune_blob(s.table, value, on_trial=trials.append)
    confirms = [t for t in trials if t.note == "confirm"]
    trials = [t for t in trials if t.note != "confirm"]
    elapsed = time.perf_counter() - t0
    tune_diff = cfg.tune_diff if cfg.tune_diff is not None else result.difference_before
    lines = _header(s, "tune") + [
        f"tuned layer {cfg.tune_layer}: blob {s.table.blobs[value].blob}, threshold {result.threshold_before:.6g}",
        f"objective: {cfg.objective} ({OBJECTIVE_WORDS[cfg.objective]}); "
        f"tune_diff {tune_diff:.6g}" + (" (given)" if cfg.tune_diff is not None else " (measured)"), "",
        f"  {'candidate':<26} {'multiplier':>10} {'threshold':>12} {'difference':>12} {'vs tune_diff':>12}"]
    best = min(trials, key=lambda t: (t.difference if s.tuner.objective_metric()[0].direction.value == "lower"
                                      else -t.difference, abs(t.multiplier - 1)))
    guarded = [t for t in trials if "metric" in t.extra]  # objective guarded: the metric could veto the best
    if guarded:
        best = min(trials, key=lambda t: abs(t.multiplier - result.multiplier))  # what tune_blob kept
        lines[-1] += f" {s.metric.name:>12}"
        lines.insert(-2, f"guarded: the best candidate must improve {s.metric.name} too (its column)")
    for k, t in enumerate(trials):
        name = f"candidate_{k:02d}_x{t.multiplier:.4f}"
        folder = cfg.output_path / name
        candidate = s.table.with_threshold(value, t.threshold) if t.multiplier != 1.0 else s.table
        write_table_pb(candidate, folder / "calibration_table.pb")
        write_int8_prototxt(candidate, s.ws.proto, folder / "int8.prototxt")
        mark = "  <- best" if t is best else ""
        lines.append(f"  {name:<26} {t.multiplier:>10.4f} {t.threshold:>12.6g} {t.difference:>12.6g} "
                     f"{t.difference - tune_diff:>+12.4g}" + (f" {t.extra['metric']:>12.6g}" if guarded else "")
                     + mark)
    best_name = f"candidate_{trials.index(best):02d}_x{best.multiplier:.4f}"
    for c in confirms:
        lines.append(f"  confirmed on every image: x{c.multiplier:.4f} gives {c.difference:.6g}")
    lines += ["", f"best: {best_name} (threshold {best.threshold:.6g}, difference {best.difference:.6g}); "
                  f"{len(trials)} candidates in {elapsed:.2f}s ({elapsed / len(trials):.3f}s each)",
              f"each candidate folder holds calibration_table.pb and int8.prototxt under {cfg.output_path}"]
    atomic_write_text(cfg.output_path / "best_candidate.txt", best_name + "\n")
    return _finish(cfg.output_path, lines)


# --- auto (main.sh) ------------------------------------------------------------------------------------------

def run_auto(cfg: TuneConfig, prepare_image) -> int:
    t_start = time.perf_counter()
    print("int8tune auto\n" + cfg.describe())
    if cfg.restart_pick == "validation" and cfg.validation_list is None:
        raise ConfigError("--restart_pick validation scores the restarts on held-out images: give them with "
                          "--validation_list (a list file or a folder, as --data_list)")
    out = cfg.output_path
    s = open_session(cfg, prepare_image, need_table=False, log_name="trials.jsonl")
    if cfg.strategy != "layerwise":
        return run_accuracy(s, t_start, prepare_image)
    equalized = write_equalized(s.ws, out)  # first: the tables saved while tuning belong to these weights
    tuner, start = s.tuner, s.table
    # the table tuning starts from, for comparing before and after on other images (test.sh --calibration_proto)
    write_table_pb(start, out / "start" / "calibration_table.pb")
    write_int8_prototxt(start, s.ws.proto, out / "start" / "int8.prototxt")
    before_model = tuner.difference(start)
    before_layers = tuner.layer_differences(start)
    logger.info("before tuning: model difference %.6g", before_model)
    skip = set(cfg.quant.ignore_layer_names)
    order = tuner.blobs_in_order(start, skip_layers=skip)
    t_tune = time.perf_counter()

    def on_blob(restart: int, i: int, table: CalibrationTable) -> None:
        if restart == 0:  # later restarts save when complete: tuned/ holds the pick among the complete ones
            _save_progress(table, out)
        if i + 1 < len(order):
            logger.info("[restart %d/%d, %d/%d] tuning blob %s", restart + 1, cfg.restarts, i + 2, len(order),
                        start.blobs[order[i + 1]].blob)

    def on_restart(run: Restart, picked: CalibrationTable) -> None:
        if cfg.restarts > 1:
            write_table_pb(run.table, out / "restarts" / f"restart_{run.number + 1}" / "calibration_table.pb")
        _save_progress(picked, out)
        logger.info("restart %d/%d done in %.1fs", run.number + 1, cfg.restarts, run.seconds)

    val = validation_tuner(cfg, s.ws, s.metric, tuner, s.items, prepare_image)
    if order:
        logger.info("[restart 1/%d, 1/%d] tuning blob %s", cfg.restarts, len(order), start.blobs[order[0]].blob)
    tuning = tune_with_restarts(tuner, start, order, cfg.restarts, on_blob, on_restart, cfg.restart_pick,
                                judge_of(val) if cfg.restart_pick == "validation" else None)
    table, results, interrupted = tuning.table, tuning.restarts[0].results if tuning.restarts else [], \
        tuning.interrupted
    if interrupted:
        logger.warning("interrupted: the best table so far is in %s", out / "tuned")
    tune_seconds = time.perf_counter() - t_tune
    _save_progress(table, out)
    after_model = tuner.difference(table)
    after_layers = tuner.layer_differences(table)
    table.provenance = provenance(cfg.to_dict(), {"proto": s.ws.proto, "model": s.ws.model},
                                  [str(i.path) for i in s.items])
    written = write_all(table, s.ws.proto, out / "tuned")
    qdq_lines = _qdq_lines(s.ws, table, out / "tuned", s.tuner.batches, "tuning", s.tuner.settings.threads)
    lines = _header(s, "auto") + [
        f"objective: {cfg.objective}; search {cfg.search} (step ratio {cfg.step_ratio}, up to {cfg.steps} steps each "
        f"way, patience {cfg.patience})",
        "starting table: " + (("calibrated in this run; whole tables scored on the tuning images: "
                               + ", ".join(f"{k} {v:.5g}" for k, v in s.start_scores.items() if k != "chosen")
                               + f"; started from {s.start_scores['chosen']}")
                              if s.start_scores else "given"),
        "", f"model difference ({s.metric.name}): before {before_model:.6g}, after {after_model:.6g}"
            + (f" ({after_model / before_model:.3f}x)" if before_model else ""),
        *_objective_line(cfg, s, start, table, before_model, after_model),
        *_restart_lines(s, tuning, len(order)),
        f"tuned {len(order)} blob(s) x {len(tuning.restarts)} restart(s) in {tune_seconds:.1f}s; "
        f"{tuner.trial_count} candidates ({tuner.log.replayed if tuner.log else 0} replayed from the trial log), "
        f"{tune_seconds / max(tuner.trial_count, 1):.3f}s per candidate"]
    if interrupted:
        lines.append("INTERRUPTED: the tables under tuned/ are the best found so far"
                     + (f" (picked from the {len(tuning.complete)} complete restart(s))" if tuning.complete
                        else f" (restart 1, {len(results)} of {len(order)} blobs)"))
    lines += detection_lines(tuner, s.metric.name, [("start", start), ("tuned", table)], kind="tuning ")
    lines += equalized
    if val is not None:
        lines += validation_lines(val, cfg, start, table, tuning, out)
    rows = _layer_rows(s, start, table, tuning, before_layers, after_layers)
    frame = pd.DataFrame(rows)
    atomic_write_bytes(out / "layers.csv", frame.to_csv(index=False, float_format="%.6g").encode())
    lines += ["", f"  {'layer':<34} {'blob':<30} {'T before':>10} {'T after':>10} {'x':>6} {'diff before':>12} "
                  f"{'diff after':>12}"]
    for r in rows:
        lines.append(f"  {r['layer']:<34} {r['blob']:<30} {r['threshold_before']:>10.4g} {r['threshold_after']:>10.4g} "
                     f"{r['multiplier']:>6.3f} {r['difference_before']:>12.4g} {r['difference_after']:>12.4g}")
    lines += qdq_lines
    lines += _plots(s, start, table, rows, out)
    lines += ["", "files:"] + [f"  {p}" for p in written.values()] + [
        f"  {out / 'start'} (the starting table)", f"  {out / 'layers.csv'}", f"  {out / 'trials.jsonl'}",
        f"  {out / 'plots'}"]
    lines.append(f"total time {time.perf_counter() - t_start:.1f}s")
    atomic_write_json(out / "config.json", table.provenance)
    _finish(out, lines)
    return 130 if interrupted else 0


def _objective_line(cfg: TuneConfig, s: Session, start: CalibrationTable, table: CalibrationTable, before: float,
                    after: float) -> list[str]:
    """The objective before/after when it is not the model difference line above (outputs with another metric),
    and a warning when --metric got worse on the tuning images while the objective improved."""
    metric = s.metric
    if cfg.objective not in ("outputs", "guarded") or metric.name == "square" or start is table:
        return []
    lines = [f"objective ({OBJECTIVE_WORDS['outputs']}): before {_outputs_objective(s, start):.6g}, "
             f"after {_outputs_objective(s, table):.6g}"]
    if metric.better(before, after):
        lines.append(f"WARNING: {metric.name} on the tuning images got worse ({before:.6g} -> {after:.6g}) while the "
                     f"objective improved. On held-out photos the dense objective did better than --metric itself "
                     f"(README, Tuning), but only your held-out images can tell: score start/ and tuned/ with test.sh "
                     f"on them, or tune with --objective model")
    return lines


def _outputs_objective(s: Session, table: CalibrationTable) -> float:
    """The square distance of the model outputs under `table` on the tuning images."""
    metric, params = s.tuner.objective_metric("outputs")
    names = metric_outputs(s.ws.converted)
    return metric(s.tuner.references(names), s.tuner.run_int8(table, names), params)


def _restart_lines(s: Session, tuning: RestartsResult, blobs: int) -> list[str]:
    """Each restart's objective on the tuning images, and which one tuned/ holds: the spread is what one run is worth."""
    if len(tuning.restarts) <= 1:
        return []
    objective = s.cfg.objective
    lines = ["", f"restarts (each tunes every blob from the start moved by a relative {RESTART_JITTER:g}; "
                 f"objective {objective} on the tuning images; blobs moved):"]
    for r in tuning.restarts:
        moved = sum(1 for b in r.results if b.threshold_after != b.threshold_before)
        after = r.results[-1].difference_after if r.results else float("nan")
        before = r.results[0].difference_before if r.results else float("nan")
        lines.append(f"  restart {r.number + 1}: {before:.6g} -> {after:.6g}; {moved} moved"
                     + ("" if r.complete else f" (interrupted after {len(r.results)} of {blobs} blobs)"))
    kept = (f"restart {tuning.picked + 1} (the best objective)" if tuning.picked is not None else
            f"the geometric mean of the threshold moves of the {len(tuning.complete)} complete restart(s)")
    lines.append(f"  tuned/ holds {kept}; restarts/restart_K holds each one's table")
    return lines


def _save_progress(table: CalibrationTable, out: Path) -> None:
    """The best table so far, after every blob: a killed or interrupted run loses nothing it found."""
    write_table_pb(table, out / "tuned" / "calibration_table.pb")
    write_table_pb(table, out / "tuned" / "calibration_table.pbtxt")


def _layer_rows(s: Session, start, table, tuning: RestartsResult, before, after) -> list[dict]:
    """One row per int8 layer; objective columns from the first restart, a multiplier column per restart."""
    first = tuning.restarts[0].results if tuning.restarts else []
    by_blob = {r.blob: r for r in first}
    per_restart = [({b.blob: b.multiplier for b in run.results}, run.number) for run in tuning.restarts]
    all_results = tuning.results
    rows = []
    for e in table.quantized_layers():
        r = by_blob.get(e.input_value)
        mine = [b for b in all_results if b.blob == e.input_value]
        rows.append({
            "layer": e.layer, "type": e.type, "blob": table.blobs[e.input_value].blob,
            "threshold_before": start.blobs[e.input_value].threshold,
            "threshold_after": table.blobs[e.input_value].threshold,
            "multiplier": table.blobs[e.input_value].threshold / start.blobs[e.input_value].threshold,
            "difference_before": before.get(e.layer, np.nan), "difference_after": after.get(e.layer, np.nan),
            "objective_before": r.difference_before if r else np.nan,
            "objective_after": r.difference_after if r else np.nan,
            "candidates": sum(b.candidates for b in mine), "seconds": sum(b.seconds for b in mine),
            **({f"multiplier_restart_{k + 1}": m.get(e.input_value, np.nan) for m, k in per_restart}
               if len(per_restart) > 1 else {}),
        })
    return rows


def _plots(s: Session, start, table, rows, out: Path) -> list[str]:
    plots = out / "plots"
    layers = [r["layer"] for r in rows]
    plot_layer_differences(layers, [r["difference_before"] for r in rows], [r["difference_after"] for r in rows],
                           plots / "layer_differences.png", "square")
    worst = sorted(rows, key=lambda r: -(r["difference_before"] if np.isfinite(r["difference_before"]) else 0))
    values = list(dict.fromkeys(table.layers[r["layer"]].input_value for r in worst[: s.cfg.plots]))
    if values:
        engine = Engine(s.ws.converted, threads=s.cfg.threads)
        stats = collect_statistics(engine, values, lambda: iter(s.batches), 2048, False, progress=False)
        for v in values:
            st = stats[v]
            marks = {"before": start.blobs[v].threshold, "after": table.blobs[v].threshold, "absmax": st.absmax}
            safe = v.replace("/", "_").replace("@", "_at_")
            plot_histogram(st.value, st.histogram, st.absmax, marks, plots / f"histogram_{safe}.png")
            atomic_write_json(plots / f"histogram_{safe}.json",
                              {"blob": v, "absmax": st.absmax, "counts": st.histogram.tolist(), "thresholds": marks})
    return [f"plots: {plots / 'layer_differences.png'} and |x| histograms of the {len(values)} worst layers' inputs"]


# --- accuracy-driven strategies (auto --strategy halving|basic|mse) ------------------------------------------

def goal_of(metric: Metric, fp32: float, cfg: TuneConfig):
    """The run's goal: --target_accuracy when given, else an accuracy drop of at most --threshold percent points
    (a difference metric has no goal without --target_accuracy: lower is better, down to 0)."""
    if cfg.target_accuracy is not None:
        target = cfg.target_accuracy
        return (lambda score: score >= target) if metric.direction.value == "higher" else (lambda score: score <= target)
    if metric.direction.value == "higher":
        return lambda score: fp32 - score <= cfg.threshold / 100.0 + 1e-12
    return lambda score: False


def run_accuracy(s: Session, t_start: float, prepare_image=None) -> int:
    from ..tune.driver import run_strategy
    from ..tune.strategies import StrategyContext, StrategySettings, int8_share

    cfg, out = s.cfg, s.cfg.output_path
    equalized = write_equalized(s.ws, out)
    fp32 = s.tuner.fp32_score()
    ctx = StrategyContext(start=s.table, tuner=s.tuner, metric=s.metric, fp32_score=fp32, goal=goal_of(s.metric, fp32, cfg),
                          settings=StrategySettings(cfg.max_iter_per_node, cfg.acc_drop_skip, cfg.fallback,
                                                    cfg.bayesian_trials),
                          tables=s.alternatives or {})
    interrupted = False
    try:
        result = run_strategy(cfg.strategy, ctx, s.tuner.log, cfg.progress, save_best=lambda t: _save_progress(t, out),
                              tiebreak=cfg.tiebreak)
        table, best, goal = result.best_table, result.best_score, result.goal_met
    except KeyboardInterrupt:
        interrupted = True
        table, best = ctx.best_table or s.table, ctx.best_score
        goal = best is not None and ctx.goal(best)
        result = None
    _save_progress(table, out)
    table.provenance = provenance(cfg.to_dict(), {"proto": s.ws.proto, "model": s.ws.model},
                                  [str(i.path) for i in s.items])
    written = write_all(table, s.ws.proto, out / "tuned")
    int8, total = int8_share(table)
    fmt = (lambda v: f"{100 * v:.2f} %") if s.metric.direction.value == "higher" else (lambda v: f"{v:.6g}")
    lines = _header(s, f"auto --strategy {cfg.strategy}") + [
        f"goal: " + (f"{s.metric.name} {'>=' if s.metric.direction.value == 'higher' else '<='} {cfg.target_accuracy}"
                     if cfg.target_accuracy is not None else f"accuracy drop <= {cfg.threshold} points"),
        f"{s.metric.name}: fp32 {fmt(fp32)}, int8 before {fmt(result.initial_score) if result else '?'}, "
        f"best {fmt(best) if best is not None else '?'}",
        f"goal {'MET' if goal else 'NOT MET'}; {int8}/{total} quantizable layers int8"
        + (f"; fp32: {', '.join(e.layer for e in table.layers.values() if not e.int8)}" if int8 < total else ""),
    ]
    if result is not None:
        lines.append(f"{result.evaluations} evaluations on {len(s.items)} images, {result.seconds:.1f}s")
    if interrupted:
        lines.append("INTERRUPTED: the tables under tuned/ are the best found so far")
    lines += equalized
    val = validation_tuner(cfg, s.ws, s.metric, s.tuner, s.items, prepare_image)
    if val is not None:
        lines += validation_lines(val, cfg, s.table, table, None, out)
    lines += _qdq_lines(s.ws, table, out / "tuned", s.tuner.batches, "tuning", s.tuner.settings.threads)
    lines += ["", "files:"] + [f"  {p}" for p in written.values()] + [f"  {out / 'trials.jsonl'}"]
    lines.append(f"total time {time.perf_counter() - t_start:.1f}s")
    atomic_write_json(out / "config.json", table.provenance)
    _finish(out, lines)
    return 130 if interrupted else (0 if goal else 3)
