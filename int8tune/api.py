"""Python API, in the shape of Intel Neural Compressor's `tune`, and `calibrate` alone:

    from int8tune.api import calibrate, tune
    result = tune(("deploy.prototxt", "weights.caffemodel"), q_dataloader, eval_dataloader=eval_batches,
                  config="tune.yaml", output_path="out")
    result.goal_met, result.score, result.table
    calibrated = calibrate(("deploy.prototxt", "weights.caffemodel"), q_dataloader, output_path="out_cal")
    calibrated.table, calibrated.difference, calibrated.delivery.qdq

`calibrate` is `int8tune calibrate` (workflow.calibrate_and_write, the function the command runs): its settings are
the command's options by name (method, target, equalize, adaround, bias_correction, measure_images, simplified,
threads, ...), and it writes what the command writes under `output_path`.

- `q_dataloader`: an iterable of input batches (float32 NCHW arrays, or (array, labels) pairs); calibration runs
  on it, and tuning too when no `eval_dataloader` is given. It is read into memory once.
- `q_func(table) -> table`: optional; receives the calibrated table before tuning (to adjust it).
- `eval_dataloader`: batches the metric is measured on; (array, labels) pairs give labels to task metrics.
- `eval_func(outputs, labels) -> float`: optional user metric, higher is better; `outputs` maps the model's
  output blobs to the int8 model's arrays for all eval batches, `labels` is None for unlabelled batches.
- `validation_dataloader`: optional held-out batches (same forms): `result.validation_score` is the metric of the
  tuned table on them, and `restart_pick="validation"` keeps the restart they score best.
- `resume_file`: the trial log (default `output_path`/trials.jsonl); a killed run restarted with the same inputs
  resumes from it.
- `config`: a YAML file or dict with main.sh's settings by their option names (strategy, metric, threshold, holdout,
  restarts, method, granularity, metric_module, ...); unknown keys are errors naming the key, and the few the API
  takes otherwise (validation_list: validation_dataloader) say what to pass. Keyword arguments override it.
The run is the one `int8tune auto` (main.sh) makes, through the same function (workflow.auto): every output the
CLI writes (calibration/, start/, tuned/ with the QDQ model checked on this CPU, layers.csv, plots/,
report.log, report.html, trials.jsonl) is written under `output_path`. The result also carries the run's
measurements (`result.run`: per-layer and per-output differences, restarts, held-out scores).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .config import LEVERS, CalibrateConfig, ModelConfig, QuantConfig, RestartPick, TuneConfig
from .errors import ConfigError
from .executors import resolve_address
from .log import logger
from .metrics import Direction, Metric
from .outputs import output_lock
from .workflow import AutoResult, CalibrateResult

# The TuneConfig options the API takes another way, or that belong to other commands: what to pass instead.
TAKEN_OTHERWISE = {
    "validation_list": "pass the held-out batches as validation_dataloader",
    "calibration_model": "the API always calibrates on q_dataloader; q_func(table) can adjust the table",
    "calibration_proto": "the API always calibrates on q_dataloader; q_func(table) can adjust the table",
    "int8_layer": "an option of test.sh (main.py test)",
    "tune_layer": "an option of tune.sh (main.py tune)",
    "tune_diff": "an option of tune.sh (main.py tune)",
}
# Settings the API and the YAML file accept: every other TuneConfig option by its flat name, as main.sh takes it
# (derived, so an option added to the CLI's loop reaches the API too), and the QuantConfig fields a run uses.
TUNE_KEYS = TuneConfig.option_names() - set(TAKEN_OTHERWISE)
QUANT_KEYS = {f.name for f in fields(QuantConfig)} - {"by_default"}
# `calibrate`'s own settings besides QUANT_KEYS: the CalibrateConfig options of `int8tune calibrate`.
CALIBRATE_KEYS = {f.name for f in fields(CalibrateConfig)} - {"model", "data", "quant", "output_path"}


TuneResult = AutoResult  # the name earlier versions returned


def load_settings(config: str | Path | Mapping | None, overrides: Mapping[str, Any],
                  valid: set[str] | None = None) -> dict[str, Any]:
    """Settings from a YAML file or dict, then the keyword overrides; every key validated against `valid`
    (default: `tune`'s settings)."""
    valid = TUNE_KEYS | QUANT_KEYS if valid is None else valid
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
    elsewhere = sorted((set(data) - valid) & set(TAKEN_OTHERWISE))
    if elsewhere:
        raise ConfigError(f"{source}: " + "; ".join(f"{k}: {TAKEN_OTHERWISE[k]}" for k in elsewhere))
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    return data


def _quant(values: Mapping[str, Any]) -> QuantConfig:
    """The QuantConfig of the settings, the levers not given left to their defaults (the API always calibrates)."""
    levers = {k: None for k in LEVERS}
    return QuantConfig(**{**levers, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()
                                       if k in QUANT_KEYS}}).with_default_levers(calibrates=True)


def calibrate(model: tuple[str | Path, str | Path], q_dataloader: Iterable, output_path: str | Path = "output/api",
              config: str | Path | Mapping | None = None, **settings) -> CalibrateResult:
    """`int8tune calibrate` (workflow.calibrate_and_write, the function the command runs) on batches from Python:
    the table, every format, the QDQ model checked on this CPU and the report, under `output_path`."""
    from .pipeline.images import Images
    from .pipeline.workspace import load_workspace
    from .workflow import calibrate_and_write

    values = load_settings(config, settings, CALIBRATE_KEYS | QUANT_KEYS)
    out = Path(output_path)
    proto, caffemodel = (Path(p) for p in model)
    quant = _quant(values)
    own = {k: v for k, v in values.items() if k in CALIBRATE_KEYS}
    if "executor" in own:  # ray: the address given, else $RAY_ADDRESS, else this machine's cluster
        own["ray_address"] = resolve_address(own["executor"], own.get("ray_address"))
    cfg = CalibrateConfig(model=ModelConfig(proto, caffemodel), data=None, quant=quant,  # type: ignore[arg-type]
                          output_path=out, **own)
    ws = load_workspace(proto, caffemodel, quant.equalize)
    images = Images.from_loader(q_dataloader, "q_dataloader")
    with output_lock(out):  # one run at a time per output folder, as on the command line
        return calibrate_and_write(cfg, ws, images)


def tune(model: tuple[str | Path, str | Path], q_dataloader: Iterable, q_func: Callable | None = None,
         eval_dataloader: Iterable | None = None, eval_func: Callable | None = None,
         resume_file: str | Path | None = None, config: str | Path | Mapping | None = None,
         output_path: str | Path = "output/api", validation_dataloader: Iterable | None = None,
         **settings) -> AutoResult:
    """main.sh's loop (workflow.auto, the same function `int8tune auto` runs) on batches from Python."""
    from .pipeline.images import Images
    from .pipeline.workspace import load_workspace
    from .workflow import auto

    values = load_settings(config, settings)
    out = Path(output_path)
    proto, caffemodel = (Path(p) for p in model)
    quant = _quant(values)
    tune_values = {k: v for k, v in values.items() if k in TUNE_KEYS}
    if tune_values.get("metric_module") is not None:  # as the command line does before the run: its metrics
        from .metrics import load_metric_module

        tune_values["metric_module"] = Path(tune_values["metric_module"])
        load_metric_module(tune_values["metric_module"])
    if "multipliers" in tune_values:
        tune_values["multipliers"] = tuple(tune_values["multipliers"])
    if "executor" in tune_values:  # ray: the address given, else $RAY_ADDRESS, else this machine's cluster
        tune_values["ray_address"] = resolve_address(tune_values["executor"], tune_values.get("ray_address"))
    cfg = TuneConfig.from_options(model=ModelConfig(proto, caffemodel), data=None, quant=quant,  # type: ignore[arg-type]
                                  output_path=out, **tune_values)
    if cfg.delivery.restart_pick is RestartPick.VALIDATION and validation_dataloader is None:
        raise ConfigError("restart_pick 'validation' scores the restarts on held-out batches: pass "
                          "validation_dataloader")
    ws = load_workspace(proto, caffemodel, quant.equalize)
    calibration = Images.from_loader(q_dataloader, "q_dataloader")
    evals = Images.from_loader(eval_dataloader, "eval_dataloader") if eval_dataloader is not None else calibration
    held_out = (Images.from_loader(validation_dataloader, "validation_dataloader")
                if validation_dataloader is not None else None)
    metric = _eval_metric(eval_func) if eval_func is not None else None
    with output_lock(out):  # one run at a time per output folder, as on the command line
        return auto(cfg, ws, evals, calibration_images=calibration, held_out_images=held_out, metric=metric,
                    adjust=q_func, log_path=Path(resume_file) if resume_file is not None else None,
                    echo=lambda text: logger.info("%s", text))


def _eval_metric(eval_func: Callable) -> Metric:
    def fn(fp32, int8, params):
        return eval_func(int8, params.get("labels"))

    return Metric("eval_func", fn, Direction.HIGHER, "the user's eval_func")
