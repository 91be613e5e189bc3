"""argparse namespaces -> typed configs (the one place raw options are interpreted)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import CalibrateConfig, DataConfig, ModelConfig, QuantConfig, TuneConfig
from ..errors import ConfigError
from ..executors import resolve_address
from ..quant.spec import DEFAULT_QUANTIZE_TYPES


def split_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def read_name_file(path: Path, option: str) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"{option} {path}: cannot read ({e})") from e
    return [l.split("#", 1)[0].strip() for l in lines if l.split("#", 1)[0].strip()]


def names_option(text: str, option: str) -> list[str]:
    """Comma-separated names, or a file holding one per line (the seed tool's ignore_layer_list)."""
    if text and os.path.isfile(text):
        return read_name_file(Path(text), option)
    return split_list(text)


def default_threads(value: int | None) -> int:
    return value or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def input_shape(text: str | None) -> tuple[int, ...] | None:
    """--input_shape N,C,H,W (or NxCxHxW)."""
    if not text:
        return None
    try:
        shape = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError as e:
        raise ConfigError(f"--input_shape {text!r}: expected N,C,H,W (four integers)") from e
    if len(shape) != 4 or min(shape) <= 0:
        raise ConfigError(f"--input_shape {text!r}: expected four positive integers N,C,H,W")
    return shape


def model_config(args) -> ModelConfig:
    return ModelConfig(proto=args.proto, model=args.model, input_shape=input_shape(getattr(args, "input_shape", None)),
                       corrected_model=getattr(args, "corrected_model", None))


def data_config(args) -> DataConfig:
    return DataConfig(data_list=args.data_list, image_params=args.image_params, dataset_path=args.dataset_path,
                      data_limit=args.data_limit, batch_size=args.batch_size)


def calibrates(args) -> bool:
    """Whether this command calibrates a table from images, where the default weight levers apply: calibrate
    (not --simplified) and main.sh without a given table; not with --corrected_model (the weights are fixed)."""
    if not hasattr(args, "bias_correction") or getattr(args, "simplified", False):
        return False
    if getattr(args, "corrected_model", None) is not None:
        return False
    return getattr(args, "calibration_proto", None) is None and getattr(args, "calibration_model", None) is None


def quant_config(args) -> QuantConfig:
    """The int8 model's settings; a command without some of these options (test reads them from the table) gets
    the defaults. The weight levers not given on the command line get their defaults (QuantConfig.
    with_default_levers)."""
    d = QuantConfig()

    def arg(name: str, default=None):
        return getattr(args, name, default)

    names = (split_list(arg("ignore_layer_names", ""))
             + names_option(arg("ignore_layer_list", ""), "--ignore_layer_list"))
    if arg("ignore_layer_names_path"):
        names += read_name_file(args.ignore_layer_names_path, "--ignore_layer_names_path")
    types = split_list(arg("ignore_layer_types", ""))
    if arg("ignore_layer_types_path"):
        types += read_name_file(args.ignore_layer_types_path, "--ignore_layer_types_path")
    quantize = list(DEFAULT_QUANTIZE_TYPES) + [t for t in split_list(arg("quantize_types", ""))
                                              if t not in DEFAULT_QUANTIZE_TYPES]
    return QuantConfig(method=arg("method", d.method), weight_method=arg("weight_method", d.weight_method),
                       granularity=arg("granularity", d.granularity), rounding=arg("rounding", d.rounding),
                       bias=arg("bias", d.bias), unsigned=arg("unsigned", d.unsigned), target=arg("target", d.target),
                       equalize=arg("equalize", d.equalize), adaround=arg("adaround"),
                       adaround_solver=arg("adaround_solver") or d.adaround_solver,
                       bias_correction=arg("bias_correction"), quantize_types=tuple(quantize),
                       ignore_layer_names=tuple(dict.fromkeys(names)), ignore_layer_types=tuple(dict.fromkeys(types)),
                       percentile=arg("percentile", d.percentile), bins=arg("bins", d.bins)
                       ).with_default_levers(calibrates(args))


def executor_options(args) -> dict:
    """--executor and --ray_address, the address resolved (--ray_address, else $RAY_ADDRESS) so that the echoed
    settings name the cluster."""
    return {"executor": args.executor, "ray_address": resolve_address(args.executor, args.ray_address)}


def calibrate_config(args) -> CalibrateConfig:
    return CalibrateConfig(model=model_config(args), data=data_config(args), quant=quant_config(args),
                           output_path=args.output_path, simplified=args.simplified,
                           measure_images=args.measure_images, threads=default_threads(args.threads),
                           **executor_options(args))


def metric_params(text: str, yolo_cfg: Path | None) -> dict:
    params: dict = {}
    if text:
        try:
            params = json.loads(Path(text).read_text() if os.path.isfile(text) else text)
        except (json.JSONDecodeError, OSError) as e:
            raise ConfigError(f"--metric_params: not valid JSON (or a readable JSON file): {e}") from e
        if not isinstance(params, dict):
            raise ConfigError(f"--metric_params must be a JSON object, found {type(params).__name__}")
    if yolo_cfg is not None:
        if not yolo_cfg.is_file():
            raise ConfigError(f"--yolo_cfg {yolo_cfg}: no such file")
        params.setdefault("cfg", str(yolo_cfg))
    return params


def default_objective(command: str) -> str:
    """auto: the dense square distance of the outputs (a detection metric over-fits a few tuning images, see
    docs/tuning.md); tune: --metric itself, so its candidates read in the units of test's model difference
    (--tune_diff)."""
    return "model" if command == "tune" else "outputs"


def tune_config(args) -> TuneConfig:
    """The options of test, tune or auto, each handed to its group of TuneConfig; an option the command does not
    have keeps its default."""
    module = getattr(args, "metric_module", None)
    if module is not None:  # the user's metrics must be registered before the run looks --metric up
        from ..metrics import load_metric_module

        load_metric_module(module)
    options = {name: getattr(args, name) for name in TuneConfig.option_names() if hasattr(args, name)}
    multipliers = tuple(float(m) for m in split_list(args.multipliers)) if getattr(args, "multipliers", "") else ()
    options.update(metric_params=metric_params(args.metric_params, args.yolo_cfg),
                   objective=getattr(args, "objective", None) or default_objective(args.command),
                   multipliers=multipliers, threads=default_threads(args.threads), **executor_options(args))
    if multipliers:
        options["search"] = "grid"
    return TuneConfig.from_options(model=model_config(args), data=data_config(args), quant=quant_config(args),
                                   output_path=args.output_path, **options)
