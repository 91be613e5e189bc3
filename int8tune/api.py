"""Python API, in the shape of Intel Neural Compressor's `tune`:

    from int8tune.api import tune
    result = tune(("deploy.prototxt", "weights.caffemodel"), q_dataloader, eval_dataloader=eval_batches,
                  config="tune.yaml", output_path="out")
    result.goal_met, result.score, result.table

- `q_dataloader`: an iterable of input batches (float32 NCHW arrays, or (array, labels) pairs); calibration runs
  on it, and tuning too when no `eval_dataloader` is given. It is read into memory once.
- `q_func(table) -> table`: optional; receives the calibrated table before tuning (to adjust it).
- `eval_dataloader`: batches the metric is measured on; (array, labels) pairs give labels to task metrics.
- `eval_func(outputs, labels) -> float`: optional user metric, higher is better; `outputs` maps the model's
  output blobs to the int8 model's arrays for all eval batches, `labels` is None for unlabelled batches.
- `validation_dataloader`: optional held-out batches (same forms): `result.validation_score` is the metric of the
  tuned table on them, and `restart_pick="validation"` keeps the restart they score best.
- `resume_file`: the trial log; a killed run restarted with the same inputs resumes from it.
- `config`: a YAML file or dict with the CLI's settings (strategy, metric, threshold, target_accuracy, method,
  granularity, ...); unknown keys are errors naming the key. Keyword arguments override it.
Outputs (every table format, QDQ model, report.log, trials) are written under `output_path`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .config import CalibrateConfig, ModelConfig, QuantConfig, TuneConfig
from .errors import ConfigError, DataError
from .metrics import METRICS, Direction, Metric
from .quant.table import CalibrationTable

# Settings the API and the YAML file accept: the TuneConfig and QuantConfig fields a run uses.
TUNE_KEYS = {"metric", "metric_params", "objective", "strategy", "max_iter_per_node", "acc_drop_skip",
             "target_accuracy", "threshold", "progress", "fallback", "search", "step_ratio", "steps", "patience",
             "multipliers", "search_subset", "min_gain", "restarts", "restart_pick", "threads", "bayesian_trials", "tiebreak"}
QUANT_KEYS = {f.name for f in fields(QuantConfig)}


@dataclass
class TuneResult:
    table: CalibrationTable
    score: float
    fp32_score: float
    goal_met: bool
    output_path: Path
    validation_score: float | None = None  # the metric of `table` on validation_dataloader, when given


def load_settings(config: str | Path | Mapping | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Settings from a YAML file or dict, then the keyword overrides; every key validated."""
    source = "config"
    data: dict[str, Any] = {}
    if isinstance(config, (str, Path)):
        import yaml

        source = str(config)
        try:
            loaded = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{config}: cannot read the YAML config ({e})") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config}: the YAML config must be a mapping of settings")
        data.update(loaded)
    elif config is not None:
        data.update(config)
    data.update(overrides)
    unknown = sorted(set(data) - TUNE_KEYS - QUANT_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(TUNE_KEYS | QUANT_KEYS))}")
    return data


def _batches(loader: Iterable, name: str) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    arrays, labels = [], []
    for k, item in enumerate(loader):
        if isinstance(item, (tuple, list)) and len(item) == 2:
            array, label = item
            labels.append(np.asarray(label, dtype=np.int64).reshape(-1))
        else:
            array = item
        array = np.asarray(array, dtype=np.float32)
        if array.ndim != 4 or not np.isfinite(array).all():
            raise DataError(f"{name} batch {k}: expected a finite float32 NCHW array, found shape {array.shape}")
        arrays.append(array)
    if not arrays:
        raise DataError(f"{name} yielded no batch")
    if labels and len(labels) != len(arrays):
        raise DataError(f"{name}: some batches have labels and some do not")
    return arrays, (labels or None)


def tune(model: tuple[str | Path, str | Path], q_dataloader: Iterable, q_func: Callable | None = None,
         eval_dataloader: Iterable | None = None, eval_func: Callable | None = None,
         resume_file: str | Path | None = None, config: str | Path | Mapping | None = None,
         output_path: str | Path = "output/api", validation_dataloader: Iterable | None = None,
         **settings) -> TuneResult:
    from .commands.calibrate import calibrate_model, write_calibration
    from .commands.common import load_workspace
    from .commands.tuning import _save_progress, goal_of, spec_per_channel
    from .quant.auto import best_start, tables_per_calibrator
    from .quant.formats import write_all
    from .tune.driver import run_strategy
    from .tune.restarts import Judge, tune_with_restarts
    from .tune.search import SearchSettings
    from .tune.strategies import StrategyContext, StrategySettings
    from .tune.trials import TrialLog
    from .tune.tuner import TuneSettings, Tuner

    values = load_settings(config, settings)
    out = Path(output_path)
    proto, caffemodel = (Path(p) for p in model)
    model_cfg = ModelConfig(proto, caffemodel)
    quant = QuantConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in QUANT_KEYS})
    tune_values = {k: v for k, v in values.items() if k in TUNE_KEYS}
    if "multipliers" in tune_values:
        tune_values["multipliers"] = tuple(tune_values["multipliers"])
    cfg = TuneConfig(model=model_cfg, data=None, quant=quant, output_path=out, **tune_values)  # type: ignore[arg-type]
    if cfg.restart_pick == "validation" and validation_dataloader is None:
        raise ConfigError("restart_pick 'validation' scores the restarts on held-out batches: pass "
                          "validation_dataloader")
    ws = load_workspace(proto, caffemodel, quant.equalize)
    calib, calib_labels = _batches(q_dataloader, "q_dataloader")
    evals, labels = _batches(eval_dataloader, "eval_dataloader") if eval_dataloader is not None else (calib,
                                                                                                        calib_labels)
    cal_cfg = CalibrateConfig(model=model_cfg, data=None, quant=quant, output_path=out / "calibration",  # type: ignore[arg-type]
                              threads=cfg.threads)
    calibration = calibrate_model(cal_cfg, ws, None, None, batches=lambda: iter(calib), measure_batches=calib[:4])
    write_calibration(calibration, ws, out / "calibration", sum(len(b) for b in calib))
    table = calibration.table
    if q_func is not None:
        table = q_func(table)
        if not isinstance(table, CalibrationTable):
            raise ConfigError(f"q_func must return a CalibrationTable, returned {type(table).__name__}")
    metric = _eval_metric(eval_func) if eval_func is not None else METRICS.get(cfg.metric)
    tune_settings = TuneSettings(objective=cfg.objective, search=cfg.search, threads=cfg.threads,
                                 search_settings=SearchSettings(cfg.step_ratio, cfg.steps, cfg.patience,
                                                                cfg.multipliers),
                                 metric_params=cfg.metric_params, min_gain=cfg.min_gain,
                                 subset=max(cfg.search_subset, 0))
    alternatives = tables_per_calibrator(table, {v: calibration.per_blob[v] for v in table.active_blobs()})
    if cfg.strategy == "layerwise" and q_func is None and not spec_per_channel(table):
        probe = Tuner(ws.converted, evals, metric, tune_settings, labels=labels)
        name, _ = best_start(probe, alternatives)
        table = alternatives[name]
    log = None
    if resume_file is not None:
        fingerprint = {"proto": str(proto), "model": str(caffemodel), "calibration": _digest(calib),
                       "eval": _digest(evals), "settings": repr(sorted(values.items()))}
        log = TrialLog(Path(resume_file), fingerprint)
    tuner = Tuner(ws.converted, evals, metric, tune_settings, log, labels=labels)
    fp32 = tuner.fp32_score()
    val = None
    if validation_dataloader is not None:  # held-out batches: the result's validation_score (and the pick)
        val_batches, val_labels = _batches(validation_dataloader, "validation_dataloader")
        val = Tuner(ws.converted, val_batches, metric, replace(tune_settings, subset=0), labels=val_labels)
    if cfg.strategy == "layerwise":
        tuning = tune_with_restarts(tuner, table, tuner.blobs_in_order(table), cfg.restarts,
                                    on_blob=lambda k, i, t: k == 0 and _save_progress(t, out),
                                    on_restart=lambda run, picked: _save_progress(picked, out),
                                    pick=cfg.restart_pick,
                                    judge=Judge(val.difference, metric.better) if val is not None else None)
        table = tuning.table
        if tuning.interrupted:  # the best table so far is saved; the caller's Ctrl-C goes on up
            _save_progress(table, out)
            raise KeyboardInterrupt
        score = tuner.difference(table)
        goal = goal_of(metric, fp32, cfg)(score)
    else:
        ctx = StrategyContext(start=table, tuner=tuner, metric=metric, fp32_score=fp32, goal=goal_of(metric, fp32, cfg),
                              settings=StrategySettings(cfg.max_iter_per_node, cfg.acc_drop_skip, cfg.fallback,
                                                        cfg.bayesian_trials),
                              tables=alternatives)
        result = run_strategy(cfg.strategy, ctx, log, cfg.progress, save_best=lambda t: _save_progress(t, out),
                              tiebreak=cfg.tiebreak)
        table, score, goal = result.best_table, result.best_score, result.goal_met
    write_all(table, proto, out / "tuned")
    return TuneResult(table, score, fp32, goal, out, val.difference(table) if val is not None else None)


def _eval_metric(eval_func: Callable) -> Metric:
    def fn(fp32, int8, params):
        return eval_func(int8, params.get("labels"))

    return Metric("eval_func", fn, Direction.HIGHER, "the user's eval_func")


def _digest(batches: list[np.ndarray]) -> str:
    import hashlib

    h = hashlib.sha256()
    for b in itertools.islice(batches, None):
        h.update(np.ascontiguousarray(b).tobytes())
    return h.hexdigest()
