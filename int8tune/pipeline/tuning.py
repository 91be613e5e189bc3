"""Measuring and tuning a table: the session every tuning run opens (model, images, metric, starting table), and
the runs on it: measure (test.sh), sweep one blob (tune.sh), tune every blob with restarts (main.sh), an
accuracy-driven strategy, and the held-out check. Each returns a result; report/tuning.py renders them."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import Objective, RestartPick, TuneConfig
from ..errors import ConfigError
from ..executors import Executor, LocalExecutor
from ..log import logger
from ..metrics import METRICS, Metric
from ..quant.table import CalibrationTable
from ..tune.objectives import OBJECTIVES
from ..tune.restarts import Judge, Restart, RestartsResult, restart_start, tune_with_restarts
from ..tune.search import SEARCHES, SearchSettings
from ..tune.start import best_start
from ..tune.strategies import STRATEGIES, StrategyContext, StrategySettings
from ..tune.trials import Trial, TrialLog, read_header, refuse_other_inputs
from ..tune.tuner import BlobResult, Tuner, TuneSettings, metric_outputs
from .calibration import Calibration
from .equalize_choice import calibrate_choosing
from .images import Images
from .selection import HeldOutSource, Selection, cross_validated, select
from .tables import load_table
from .workspace import Workspace

# Settings that cannot change a trial's result, kept out of the trial log's fingerprint (the validation images are
# scored after tuning, the pick chooses among finished restarts). Logs written while restart_pick was still part of
# it resume too (_comparable drops these keys from both sides).
SETTINGS_THAT_CHANGE_NO_TRIAL = ("resume", "plots", "threads", "validation_list", "restart_pick", "metric_module",
                                 "output_path",  # a moved or copied output folder resumes
                                 "executor", "ray_address")  # every executor gives the same trials, bit for bit

YOLO_METRICS = ("yolo", "yolo_map")  # metrics whose parameters describe YOLO heads: detection agreement reported
# every metric whose parameters say how to decode detections: the report gives their agreement line by line
DETECTION_METRICS = YOLO_METRICS + ("ssd_map", "box_map")


@dataclass
class Session:
    """Everything a tuning run works with, loaded once."""

    cfg: TuneConfig
    ws: Workspace
    images: Images
    metric: Metric
    tuner: Tuner
    table: CalibrationTable  # the starting table
    calibration: Calibration | None = None  # when calibrated in this run
    start_scores: dict[str, float] = field(default_factory=dict)  # calibrator -> metric of its whole table
    start_choice: str | None = None  # the calibrator whose table was chosen as the start
    alternatives: dict[str, CalibrationTable] = field(default_factory=dict)  # calibrator -> its whole table
    executor: Executor = field(default_factory=LocalExecutor)  # where the batches of every evaluation run


def tune_settings(cfg: TuneConfig, batches: int, full_search: bool = False) -> TuneSettings:
    search = cfg.blob_search
    subset = search.search_subset if search.search_subset >= 0 else (batches // 2 if batches >= 6 else 0)
    if full_search and search.search_subset < 0:
        subset = 0  # one blob: every candidate is scored on every image
    return TuneSettings(objective=cfg.measure.objective, search=search.search, threads=cfg.run.threads,
                        subset=subset, min_gain=0.0 if full_search else search.min_gain,
                        output_veto=cfg.measure.output_veto, confirm=search.confirm,
                        search_settings=SearchSettings(step_ratio=search.step_ratio, steps=search.steps,
                                                       patience=search.patience, multipliers=search.multipliers),
                        metric_params=cfg.measure.metric_params)


def check_plugin_names(cfg: TuneConfig) -> None:
    """The options that name a plug-in of tune/ (config.py sits below those registries): refused before any work,
    the registry listing the valid names."""
    SEARCHES.get(cfg.blob_search.search)
    if not cfg.accuracy.layerwise:
        STRATEGIES.get(cfg.accuracy.strategy)
    if cfg.accuracy.tiebreak is not None:
        OBJECTIVES.get(cfg.accuracy.tiebreak)


def settings_fingerprint(cfg: TuneConfig) -> dict:
    """The settings a trial log's fingerprint holds: every option that can change a trial, by its flat name.
    (quant's by_default only says why a lever is on: the lever's own value is in the dict.)"""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in SETTINGS_THAT_CHANGE_NO_TRIAL}
    settings["quant"] = {k: v for k, v in settings["quant"].items() if k != "by_default"}
    return settings


def open_session(cfg: TuneConfig, ws: Workspace, images: Images, *, need_table: bool,
                 calibration_images: Images | None = None, log_path: Path | None = None,
                 full_search: bool = False, metric: Metric | None = None,
                 adjust: Callable[[CalibrationTable], CalibrationTable] | None = None,
                 executor: Executor | None = None) -> Session:
    """Load or calibrate the starting table and build the tuner over `images`. Without a given table the run
    calibrates on `calibration_images` (default: `images`), then, for layerwise tuning, starts from the calibrator
    whose whole table scores best. `log_path`: the trial log (resumed when it holds the same inputs). `adjust`:
    the API's q_func, applied to the calibrated table. `executor`: where the batches run (default here)."""
    check_plugin_names(cfg)
    settings = tune_settings(cfg, len(images.batches), full_search)
    metric = metric or METRICS.get(cfg.measure.metric)
    executor = executor or LocalExecutor()
    table = load_table(cfg, ws)
    fp = None
    if log_path is not None:
        from ..outputs import sha256_file

        fp = {"proto": sha256_file(ws.proto), "model": sha256_file(ws.model), "images": images.digest(),
              "settings": json.dumps(settings_fingerprint(cfg), sort_keys=True)}
        if ws.corrections is not None and ws.corrections.source is not None:  # --corrected_model: its weights too
            fp["corrected_model"] = sha256_file(ws.corrections.source)
        if cfg.run.resume and log_path.is_file():
            _refuse_early(log_path, fp)
    calibration = None
    if table is None:
        if need_table:
            raise ConfigError("give the int8 model to work on: --calibration_proto (calibration_table.pb/.pbtxt) "
                              "and/or --calibration_model (int8.prototxt); `int8tune calibrate` writes both")
        logger.info("no table given: calibrating first (method %s)", cfg.quant.method)
        cal_images = calibration_images or images
        calibration = calibrate_choosing(ws, cal_images, cfg.quant, measure=cal_images.head(32),
                                         threads=cfg.run.threads, settings=cfg.to_dict(), executor=executor)
        table = calibration.table
        ws = calibration.ws or ws  # with --adaround/--bias_correction: the weights the table belongs to
        # --equalize left to its default is decided now: the session's settings say which weights the tables hold
        cfg = replace(cfg, quant=replace(cfg.quant, equalize=ws.equalization is not None))
    session = Session(cfg, ws, images, metric, None, table, calibration, executor=executor)  # type: ignore[arg-type]
    if adjust is not None:
        table = adjust(table)
        if not isinstance(table, CalibrationTable):
            raise ConfigError(f"q_func must return a CalibrationTable, returned {type(table).__name__}")
        session.table = table
    elif calibration is not None:
        session.alternatives = calibration.alternatives()
        if not table.spec.granularity.activations_per_channel and cfg.accuracy.layerwise:
            # Model-wise first: every calibrator's whole table against the metric on the tuning images.
            probe = Tuner(ws.converted, images.batches, metric, settings, labels=images.labels, names=images.names,
                          reference=ws.reference, executor=executor)
            name, scores = best_start(probe, session.alternatives)
            session.table, session.start_scores, session.start_choice = session.alternatives[name], scores, name
    log = None
    if fp is not None:
        fp["table"] = session.table.digest()
        log = TrialLog(log_path, fp, resume=cfg.run.resume, comparable=_comparable)
    session.tuner = Tuner(ws.converted, images.batches, metric, settings, log, labels=images.labels,
                          names=images.names, reference=ws.reference, executor=executor)
    return session


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


# --- what the tables do on the images ------------------------------------------------------------------------

@dataclass
class Detections:
    """The model outputs behind detection agreement (DETECTION_METRICS): fp32's and each labelled table's, on the
    images named. Decoding and matching are the report's (pure arithmetic on these arrays)."""

    fp32: dict[str, np.ndarray]
    tested: list[tuple[str, dict[str, np.ndarray]]]
    params: dict
    names: list[str]
    metric: str = "yolo"  # which decoding the params are for


def detections(tuner: Tuner, metric: Metric, tables: list[tuple[str, CalibrationTable]]) -> Detections | None:
    if metric.name not in DETECTION_METRICS:
        return None
    params = tuner.model_params()
    outputs = metric_outputs(tuner.converted)
    # ssd_map decodes with the net's own DetectionOutput (post_steps); the others from their parameters alone
    dropped = ("labels", "image_names", "outputs") + (() if metric.name == "ssd_map" else ("post_steps",))
    return Detections(tuner.references(outputs), [(label, tuner.run_int8(t, outputs)) for label, t in tables],
                      {k: v for k, v in params.items() if k not in dropped},
                      list(params.get("image_names") or []), metric.name)


def output_differences(tuner: Tuner, table: CalibrationTable) -> dict[str, float]:
    """The square distance of each model output alone: a model with several outputs can trade one for another."""
    square = METRICS.get("square")
    names = metric_outputs(tuner.converted)
    refs, got = tuner.references(names), tuner.run_int8(table, names)
    return {n: square({n: refs[n]}, {n: got[n]}) for n in names}


@dataclass
class Measurement:
    """test.sh: the model difference, each output's, each image's, each int8 layer's own."""

    table: CalibrationTable
    model: float
    fp32_score: float | None  # a task metric's fp32 accuracy (None for a difference metric)
    outputs: dict[str, float]
    images: list[tuple[str, float]]
    layers: dict[str, float]
    detections: Detections | None


def measure(s: Session) -> Measurement:
    t = s.tuner
    return Measurement(s.table, t.difference(s.table), t.fp32_score() if s.metric.higher_is_better else None,
                       output_differences(t, s.table), t.image_differences(s.table), t.layer_differences(s.table),
                       detections(t, s.metric, [("this table", s.table)]))


@dataclass
class LayerMeasurement:
    """test.sh --int8_layer: one layer's own output difference, upstream int8 as the table says."""

    layer: str
    blob: str
    difference: float


def measure_layer(s: Session, layer: str) -> LayerMeasurement:
    if layer not in s.table.layers:
        raise ConfigError(f"--int8_layer {layer!r} is not a quantized layer of the table; quantized layers: "
                          f"{', '.join(s.table.layers)}")
    diffs = s.tuner.layer_differences(s.table)
    if layer not in diffs:
        raise ConfigError(f"--int8_layer {layer!r} runs in fp32 in this table")
    value = s.tuner.layer_outputs(s.table)[layer]
    return LayerMeasurement(layer, s.ws.fold.net.blob_of[value], diffs[layer])


@dataclass
class Sweep:
    """tune.sh: every candidate threshold of one blob, the one tune_blob kept, and the reference difference."""

    layer: str
    value: str
    result: BlobResult
    trials: list[Trial]  # in the order they were tried
    confirms: list[Trial]  # the kept candidate re-scored on every image
    best: Trial
    tune_diff: float
    tune_diff_given: bool
    guarded: bool  # objective guarded: the metric could veto the best
    seconds: float


def sweep(s: Session, layer: str, tune_diff: float | None) -> Sweep:
    if layer not in s.table.layers or not s.table.layers[layer].int8:
        raise ConfigError(f"--tune_layer {layer!r} is not an int8 layer of the table; int8 layers: "
                          f"{', '.join(e.layer for e in s.table.quantized_layers())}")
    value = s.table.layers[layer].input_value
    trials: list[Trial] = []
    t0 = time.perf_counter()
    _, result = s.tuner.tune_blob(s.table, value, on_trial=trials.append)
    confirms = [t for t in trials if t.note == "confirm"]
    trials = [t for t in trials if t.note != "confirm"]
    objective = s.tuner.objective_metric()[0]
    guarded = any("metric" in t.extra for t in trials)
    if guarded:  # what tune_blob kept: the metric may have vetoed the objective's best
        best = min(trials, key=lambda t: abs(t.multiplier - result.multiplier))
    else:
        best = min(trials, key=lambda t: (t.difference if not objective.higher_is_better else -t.difference,
                                          abs(t.multiplier - 1)))
    return Sweep(layer, value, result, trials, confirms, best,
                 tune_diff if tune_diff is not None else result.difference_before, tune_diff is not None, guarded,
                 time.perf_counter() - t0)


# --- main.sh: every blob, with restarts ----------------------------------------------------------------------

@dataclass
class HeldOut:
    """The start and tuned tables (and each complete restart) scored on images that were not tuned on."""

    images: Images
    metric: Metric
    start: float
    tuned: float
    restarts: list[tuple[int, float]]  # (restart number, its score), complete restarts when more than one
    per_image: dict[str, list[tuple[str, float]]]  # table label -> (image, score)
    detections: Detections | None

    @property
    def worse(self) -> bool:
        return self.metric.better(self.start, self.tuned)


def held_out_tuner(s: Session, images: Images) -> Tuner:
    """A tuner over held-out images (same model, metric and settings, every image scored)."""
    return Tuner(s.ws.converted, images.batches, s.metric, replace(s.tuner.settings, subset=0), labels=images.labels,
                 names=images.names, reference=s.ws.reference, executor=s.executor)


def held_out(val: Tuner, images: Images, start: CalibrationTable, table: CalibrationTable,
             tuning: RestartsResult | None) -> HeldOut:
    per_image = {"start": val.image_differences(start), "tuned": val.image_differences(table)}
    restarts = []
    complete = tuning.complete if tuning is not None else []
    if len(complete) > 1:
        for run in complete:
            restarts.append((run.number, run.validation if run.validation is not None else val.difference(run.table)))
            per_image[f"restart_{run.number + 1}"] = val.image_differences(run.table)
    return HeldOut(images, val.metric, val.difference(start), val.difference(table), restarts, per_image,
                   detections(val, val.metric, [("start", start), ("tuned", table)]))


@dataclass
class LayerwiseRun:
    start: CalibrationTable
    table: CalibrationTable  # delivered: the tuned pick, or what the held-out images preferred (selection)
    order: list[str]  # the blobs tuned, in order
    tuning: RestartsResult
    before_model: float
    after_model: float
    before_layers: dict[str, float]
    after_layers: dict[str, float]
    before_outputs: dict[str, float]
    after_outputs: dict[str, float]
    objective: tuple[float, float] | None  # the dense objective before/after when it is not the model difference
    seconds: float
    candidates: int
    replayed: int
    detections: Detections | None
    held_out: HeldOut | None
    selection: Selection | None = None  # the held-out choice of the delivered table

    @property
    def delivered(self) -> str:
        return self.selection.delivered if self.selection is not None else "tuned"

    @property
    def interrupted(self) -> bool:
        return self.tuning.interrupted


def tune_layerwise(s: Session, held_out_images: Images | None = None,
                   on_progress: Callable[[CalibrationTable], None] | None = None,
                   on_restart: Callable[[Restart], None] | None = None,
                   source: HeldOutSource = HeldOutSource.VALIDATION_LIST, cross_validate_first: bool = False
                   ) -> LayerwiseRun:
    """Tune every blob in net order, `cfg.delivery.restarts` times, keep the pick. `on_progress(table)`: the best
    table so far, after each blob of the first restart and after each complete restart (to save it). With held-out
    images, the delivered table is the one they score best among the start, the tuned pick, the restarts and the
    plain calibrator tables, beyond the noise floor (selection.py)."""
    cfg, tuner, start = s.cfg, s.tuner, s.table
    restarts = cfg.delivery.restarts
    before_model = tuner.difference(start)
    before_layers = tuner.layer_differences(start)
    before_outputs = output_differences(tuner, start)
    logger.info("before tuning: model difference %.6g", before_model)
    order = tuner.blobs_in_order(start, skip_layers=set(cfg.quant.ignore_layer_names))
    val = held_out_tuner(s, held_out_images) if held_out_images is not None else None
    pick = cfg.delivery.restart_pick
    if pick is RestartPick.VALIDATION and val is None:
        raise ConfigError("--restart_pick validation scores the restarts on held-out images: give --validation_list "
                          "(API: validation_dataloader)")
    cv = cross_validate(s) if cross_validate_first and val is None else []
    if cv and cross_validated(s.metric, s.images, cv, {}).delivered != "tuned":
        # The folds decide before the tuning on every image runs: without their gain its table cannot be delivered
        # (selection.cross_validated), so it is not run (--holdout 0 tunes on every image and delivers that).
        logger.info("cross-validation: the folds show no gain from tuning, so the start is delivered and the tuning "
                    "on every image is skipped (--holdout 0 runs and delivers it anyway)")
        restarts = 0
    t0 = time.perf_counter()

    def blob_done(restart: int, i: int, table: CalibrationTable) -> None:
        if restart == 0 and on_progress is not None:  # later restarts save when complete
            on_progress(table)
        done = restart * len(order) + i + 1
        left = restarts * len(order) - done
        eta = (time.perf_counter() - t0) / done * left  # blobs cost alike on average: the estimate is the mean
        if i + 1 < len(order):
            logger.info("[restart %d/%d, %d/%d] tuning blob %s (about %.0fs left)", restart + 1, restarts, i + 2,
                        len(order), start.blobs[order[i + 1]].blob, eta)

    def restart_done(run: Restart, picked: CalibrationTable) -> None:
        if on_restart is not None:
            on_restart(run)
        if on_progress is not None:
            on_progress(picked)
        logger.info("restart %d/%d done in %.1fs", run.number + 1, restarts, run.seconds)

    if order and restarts:
        logger.info("[restart 1/%d, 1/%d] tuning blob %s", restarts, len(order), start.blobs[order[0]].blob)
    tuning = tune_with_restarts(tuner, start, order, restarts, blob_done, restart_done, pick,
                                Judge(val.difference, val.metric.better) if pick is RestartPick.VALIDATION else None)
    seconds = time.perf_counter() - t0
    table = tuning.table
    if tuning.interrupted:
        logger.warning("interrupted: the best table so far is kept")
    selection = None
    if val is not None and not tuning.interrupted:
        candidates = [("start", start), ("tuned", table)]
        if len(tuning.complete) > 1:
            candidates += [(f"restart {r.number + 1}", r.table) for r in tuning.complete]
        candidates += [(f"calibrator {name}", t) for name, t in sorted(s.alternatives.items())]
        logger.info("scoring %d candidate tables on %s", len(candidates), held_out_images.description)
        selection = select(val, held_out_images, source, candidates, order)
        table = selection.tables[selection.delivered]
    elif cv and not tuning.interrupted:
        selection = cross_validated(s.metric, s.images, cv, {"start": start, "tuned": table})
        table = selection.tables[selection.delivered]
    objective = None
    if cfg.measure.objective.dense and s.metric.name != "square" and tuning.table is not start:
        # of the tuned pick (what tuning did), whatever the held-out images then delivered
        objective = (_outputs_objective(tuner, start), _outputs_objective(tuner, tuning.table))
    return LayerwiseRun(start, table, order, tuning, before_model, tuner.difference(table), before_layers,
                        tuner.layer_differences(table), before_outputs, output_differences(tuner, table), objective,
                        seconds, tuner.trial_count, tuner.log.replayed if tuner.log else 0,
                        detections(tuner, s.metric, [("start", start), ("tuned", table)]),
                        held_out(val, held_out_images, start, table, tuning) if val is not None else None,
                        selection)


def _outputs_objective(tuner: Tuner, table: CalibrationTable) -> float:
    """The square distance of the model outputs under `table` on the tuning images."""
    metric, params = tuner.objective_metric(Objective.OUTPUTS)
    names = metric_outputs(tuner.converted)
    return metric(tuner.references(names), tuner.run_int8(table, names), params)


# --- accuracy-driven strategies --------------------------------------------------------------------------------

def goal_of(metric: Metric, fp32: float, cfg: TuneConfig) -> Callable[[float], bool]:
    """The run's goal: --target_accuracy when given, else an accuracy drop of at most --threshold percent points
    (a difference metric has no goal without --target_accuracy: lower is better, down to 0)."""
    if cfg.accuracy.target_accuracy is not None:
        target = cfg.accuracy.target_accuracy
        return lambda score: metric.meets(score, target)
    if metric.higher_is_better:
        return lambda score: fp32 - score <= cfg.accuracy.threshold / 100.0 + 1e-12
    return lambda score: False


@dataclass
class StrategyRun:
    start: CalibrationTable
    table: CalibrationTable
    fp32: float
    initial: float | None
    best: float | None
    goal_met: bool
    evaluations: int | None
    seconds: float | None
    interrupted: bool
    held_out: HeldOut | None


def tune_strategy(s: Session, held_out_images: Images | None = None,
                  on_progress: Callable[[CalibrationTable], None] | None = None,
                  echo: Callable[[str], None] = print) -> StrategyRun:
    from ..tune.driver import run_strategy

    acc = s.cfg.accuracy
    fp32 = s.tuner.fp32_score()
    ctx = StrategyContext(start=s.table, tuner=s.tuner, metric=s.metric, fp32_score=fp32,
                          goal=goal_of(s.metric, fp32, s.cfg),
                          settings=StrategySettings(acc.max_iter_per_node, acc.acc_drop_skip, acc.fallback,
                                                    acc.bayesian_trials),
                          tables=s.alternatives)
    try:
        result = run_strategy(acc.strategy, ctx, s.tuner.log, s.cfg.run.progress, save_best=on_progress,
                              tiebreak=acc.tiebreak, echo=echo)
        run = StrategyRun(s.table, result.best_table, fp32, result.initial_score, result.best_score, result.goal_met,
                          result.evaluations, result.seconds, False, None)
    except KeyboardInterrupt:
        best = ctx.best_score
        run = StrategyRun(s.table, ctx.best_table or s.table, fp32, None, best, best is not None and ctx.goal(best),
                          None, None, True, None)
    if held_out_images is not None:
        run.held_out = held_out(held_out_tuner(s, held_out_images), held_out_images, s.table, run.table, None)
    return run


def cross_validate(s: Session) -> list:
    """Two folds of `s`'s images: for each, the same tuning (one restart) from the same start on that half, and the
    start and tuned tables scored on the other half, with the noise floor there. What decides, for a handful of
    images, whether a table tuned on all of them can be trusted (selection.cross_validated)."""
    from .selection import NOISE_DRAWS, Fold, dense_tuner, fold_scores, folds

    halves = folds(s.images)
    if halves is None:
        return []
    out = []
    for k, (mine, other) in enumerate((halves, halves[::-1])):
        logger.info("cross-validation, fold %d/2: tuning on %s, scoring on the other half", k + 1, mine.description)
        cfg = replace(s.cfg, delivery=replace(s.cfg.delivery, restarts=1, restart_pick=RestartPick.BEST))
        fold = Session(cfg, s.ws, mine, s.metric,
                       Tuner(s.ws.converted, mine.batches, s.metric, replace(s.tuner.settings,
                                                                              subset=0 if len(mine.batches) < 6
                                                                              else s.tuner.settings.subset),
                             labels=mine.labels, names=mine.names, reference=s.ws.reference,
                             executor=s.executor), s.table, executor=s.executor)
        order = fold.tuner.blobs_in_order(s.table, skip_layers=set(cfg.quant.ignore_layer_names))
        tuned = tune_with_restarts(fold.tuner, s.table, order, 1).table
        val = held_out_tuner(fold, other)
        base = val.difference(s.table)
        noise = max(abs(val.difference(restart_start(s.table, order, 1000 + j)) - base) for j in range(NOISE_DRAWS))
        fold_result = Fold(mine, other, base, val.difference(tuned), noise,
                           [d for _, d in val.image_differences(s.table)],
                           [d for _, d in val.image_differences(tuned)])
        if s.metric.name != "square":  # the dense distance too, for when --metric cannot tell them apart
            fold_result.dense = fold_scores(dense_tuner(val), s.table, tuned, order)
        out.append(fold_result)
    return out
