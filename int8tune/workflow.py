"""The runs behind the command line and the Python API, one function each, shared by both front ends, which
differ only in where the images come from (a data list, or dataloaders):

- `auto`: main.sh's whole loop (`int8tune auto`, `int8tune.api.tune`): open the session (calibrating when no table
  is given), tune (layer by layer with restarts, or an accuracy-driven strategy), deliver the tables and the QDQ
  model, write the CSVs, plots and the report;
- `calibrate_and_write`: `int8tune calibrate` and `int8tune.api.calibrate`: the table, every format, the QDQ model
  checked on this CPU, statistics.csv and the report."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import CalibrateConfig, TuneConfig
from .executors import open_executor
from .log import logger
from .metrics import Metric
from .outputs import atomic_write_json, provenance
from .pipeline.calibration import Calibration
from .pipeline.delivery import Delivery, deliver
from .pipeline.equalize_choice import calibrate_choosing
from .pipeline.images import Images
from .pipeline.selection import HeldOutSource, hold_back
from .pipeline.tuning import LayerwiseRun, Session, StrategyRun, goal_of, open_session, tune_layerwise, tune_strategy
from .pipeline.workspace import Workspace, save_corrected, save_equalized, weights_digest
from .quant.formats import write_table_pb
from .quant.table import CalibrationTable
from .report.calibration import calibration_document
from .report.csvs import write_csv, write_levers, write_statistics
from .report.figures import layer_figures
from .report.tuning import auto_document, layer_rows, strategy_document
from .report.write import write_report

TRIALS = "trials.jsonl"


@dataclass
class AutoResult:
    table: CalibrationTable  # delivered (tuned/)
    score: float  # the metric of `table` on the tuning images
    fp32_score: float
    goal_met: bool
    output_path: Path
    report: str  # report.log's text
    interrupted: bool
    validation_score: float | None = None  # the metric of `table` on the held-out images, when given
    run: LayerwiseRun | StrategyRun | None = None
    session: Session | None = None


PROGRESS = "progress"  # the best table so far, while a run tunes; tuned/ changes only when a run delivers


def save_progress(table: CalibrationTable, out: Path) -> None:
    """The best table so far, after every blob: a killed run loses nothing it found (progress/ holds it), and
    tuned/ keeps the previous delivery, whole, until this run delivers its own."""
    write_table_pb(table, out / PROGRESS / "calibration_table.pb")
    write_table_pb(table, out / PROGRESS / "calibration_table.pbtxt")


def save_calibration(cal: Calibration, ws: Workspace, out: Path, threads: int) -> tuple[Delivery, dict[str, Path]]:
    """Every table format, the QDQ model (checked on the measurement images), statistics.csv, config.json and,
    with --equalize, the equalized weights, with --adaround/--bias_correction the corrected ones; returns the
    delivery and the other files by name."""
    delivery = deliver(ws, cal.table, out, check_on=cal.measured, images_kind="calibration", threads=threads,
                       qdq=cal.measured is not None)
    extra = {"statistics": write_statistics(out / "statistics.csv", cal, ws.fold.net.blob_of),
             "config": atomic_write_json(out / "config.json", cal.table.provenance)}
    equalized = save_equalized(ws, out)
    if equalized is not None:
        extra["equalized"] = equalized
    corrected = save_corrected(ws, out)
    if corrected is not None:
        extra["corrected"] = corrected
        extra["levers"] = write_levers(out / "weight_levers.csv", ws.corrections)
    return delivery, extra


@dataclass
class CalibrateResult:
    table: CalibrationTable  # calibration_table.pb
    difference: float | None  # square distance of the outputs from fp32 on the measurement images (None: simplified)
    output_path: Path
    report: str  # report.log's text
    calibration: Calibration  # what was measured: statistics, each calibrator's thresholds, the --equalize choice
    delivery: Delivery  # the files written, the QDQ model and its check on this CPU


def calibrate_and_write(cfg: CalibrateConfig, ws: Workspace, images: Images,
                        t_start: float | None = None) -> CalibrateResult:
    """`int8tune calibrate`: calibrate on `images` (the levers and the --equalize choice on the first
    cfg.measure_images), write every output under cfg.output_path and the report. `t_start`: when the run began
    (for the report's time; default now)."""
    t_start = time.perf_counter() if t_start is None else t_start
    with open_executor(cfg.execution()) as executor:
        measure = None if cfg.simplified else images.head(cfg.measure_images)
        cal = calibrate_choosing(ws, images, cfg.quant, measure=measure, simplified=cfg.simplified,
                                 threads=cfg.threads, settings=cfg.to_dict(), executor=executor)
        ws = cal.ws or ws  # with --adaround/--bias_correction: the corrected weights the table belongs to
        delivery, extra = save_calibration(cal, ws, cfg.output_path, cfg.threads)
        doc = calibration_document(cal, ws, delivery, time.perf_counter() - t_start, extra.get("equalized"),
                                   list(extra.values()), extra.get("corrected"))
    text, _ = write_report(doc, cfg.output_path)
    return CalibrateResult(cal.table, cal.model_difference, cfg.output_path, text, cal, delivery)


def auto(cfg: TuneConfig, ws: Workspace, images: Images, *, calibration_images: Images | None = None,
         held_out_images: Images | None = None, metric: Metric | None = None,
         adjust: Callable[[CalibrationTable], CalibrationTable] | None = None, log_path: Path | None = None,
         echo: Callable[[str], None] = print) -> AutoResult:
    t_start = time.perf_counter()
    out = cfg.output_path
    source = HeldOutSource.VALIDATION_LIST
    if held_out_images is None and cfg.accuracy.layerwise and cfg.delivery.holdout > 0:
        split = hold_back(images, cfg.delivery.holdout)
        if split is None:
            logger.info("%s: too few to hold some back from tuning (--holdout %g needs at least 6 batches): "
                        "cross-validating the tuning on two halves instead, then tuning on all of them",
                        images.description, cfg.delivery.holdout)
            source = HeldOutSource.CROSS_VALIDATION
        else:
            images, held_out_images = split
            calibration_images = calibration_images if calibration_images is not None else images
            source = HeldOutSource.HELD_BACK
    with open_executor(cfg.run.execution()) as executor:  # the workers (a Ray cluster's) for the whole run
        s = open_session(cfg, ws, images, need_table=False, calibration_images=calibration_images,
                         log_path=log_path or out / TRIALS, metric=metric, adjust=adjust, executor=executor)
        files: list[Path] = []
        if s.calibration is not None:  # the calibration step's own outputs, as `calibrate` writes them
            save_calibration(s.calibration, s.ws, out / "calibration", cfg.run.threads)
        equalized = save_equalized(s.ws, out)
        if equalized is not None:
            files.append(equalized)
        corrected = save_corrected(s.ws, out)  # with --adaround/--bias_correction: the weights the tables belong to
        if corrected is not None:
            files.append(corrected)
        if cfg.accuracy.layerwise:
            return _layerwise(s, held_out_images, files, t_start, equalized, source, corrected)
        return _strategy(s, held_out_images, files, t_start, equalized, echo, corrected)


def _held_out_csv(run, out: Path, files: list[Path]) -> None:
    if run.held_out is None:
        return
    per = run.held_out.per_image
    files.append(write_csv(out / "validation.csv", {"image": [n for n, _ in per["start"]],
                                                     **{k: [d for _, d in v] for k, v in per.items()}}))


def _layerwise(s: Session, held_out_images, files: list[Path], t_start: float, equalized,
               source: HeldOutSource, corrected: Path | None = None) -> AutoResult:
    cfg, out = s.cfg, s.cfg.output_path
    start = deliver(s.ws, s.table, out / "start", check_on=None, threads=cfg.run.threads, whole=True)

    def on_restart(run) -> None:
        if cfg.delivery.restarts > 1:
            write_table_pb(run.table, out / "restarts" / f"restart_{run.number + 1}" / "calibration_table.pb")

    run = tune_layerwise(s, held_out_images, on_progress=lambda t: save_progress(t, out), on_restart=on_restart,
                         source=source, cross_validate_first=source is HeldOutSource.CROSS_VALIDATION)
    table = run.table
    table.provenance = provenance(cfg.to_dict(), {"proto": s.ws.proto, "model": s.ws.model}, s.images.paths)
    table.provenance["weights_sha256"] = weights_digest(s.ws)
    tuned = deliver(s.ws, table, out / "tuned", check_on=s.images, images_kind="tuning", threads=cfg.run.threads,
                    whole=True)
    shutil.rmtree(out / PROGRESS, ignore_errors=True)  # delivered: the progress it saved is in tuned/ now
    rows = layer_rows(s, run)
    files.append(write_csv(out / "layers.csv", rows))
    _held_out_csv(run, out, files)
    if cfg.delivery.restarts > 1:
        files.append(out / "restarts")
    files.append(out / TRIALS)
    figures = layer_figures(s, run, rows, out / "plots")
    files.append(atomic_write_json(out / "config.json", table.provenance))
    doc = auto_document(s, run, tuned, start, rows, figures, files, time.perf_counter() - t_start, equalized,
                        corrected)
    text, _ = write_report(doc, out)
    fp32 = s.tuner.fp32_score()
    return AutoResult(table, run.after_model, fp32, goal_of(s.metric, fp32, cfg)(run.after_model), out, text,
                      run.interrupted, run.held_out.tuned if run.held_out else None, run, s)


def _strategy(s: Session, held_out_images, files: list[Path], t_start: float, equalized, echo,
              corrected: Path | None = None) -> AutoResult:
    cfg, out = s.cfg, s.cfg.output_path
    run = tune_strategy(s, held_out_images, on_progress=lambda t: save_progress(t, out), echo=echo)
    run.table.provenance = provenance(cfg.to_dict(), {"proto": s.ws.proto, "model": s.ws.model}, s.images.paths)
    run.table.provenance["weights_sha256"] = weights_digest(s.ws)
    delivery = deliver(s.ws, run.table, out / "tuned", check_on=s.images, images_kind="tuning",
                       threads=cfg.run.threads, whole=True)
    shutil.rmtree(out / PROGRESS, ignore_errors=True)
    _held_out_csv(run, out, files)
    files.append(out / TRIALS)
    files.append(atomic_write_json(out / "config.json", run.table.provenance))
    doc = strategy_document(s, run, delivery, files, time.perf_counter() - t_start, equalized, corrected)
    text, _ = write_report(doc, out)
    score = run.best if run.best is not None else float("nan")
    return AutoResult(run.table, score, run.fp32, run.goal_met, out, text, run.interrupted,
                      run.held_out.tuned if run.held_out else None, run, s)
