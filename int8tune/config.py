"""Typed configuration, built once at the edge (main.py / cli.py) from the command line.

The package never sees argv or untyped dicts; each command gets a frozen dataclass, echoed at the start of the
run and stored with its outputs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .executors import ExecutorKind, ExecutorSettings
from .quant.spec import DEFAULT_QUANTIZE_TYPES


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if hasattr(value, "value") and not isinstance(value, (int, float, str)):
        return value.value  # enums
    return value


class ConfigBase:
    executor: ExecutorKind
    ray_address: str | None

    def to_dict(self) -> dict[str, Any]:
        return {k: _jsonable(v) for k, v in asdict(self).items()}  # type: ignore[call-overload]

    def describe(self) -> str:
        width = max(len(f.name) for f in fields(self))  # type: ignore[arg-type]
        return "\n".join(f"  {k:<{width}} = {json.dumps(v)}" for k, v in self.to_dict().items())

    def execution(self) -> ExecutorSettings:
        """Where the run's batches execute (--executor, --ray_address)."""
        return ExecutorSettings(self.executor, self.ray_address)

    def _check_executor(self) -> None:
        # the enum from its value (the CLI, YAML and API give strings); an unknown name lists the valid ones
        object.__setattr__(self, "executor", ExecutorSettings(self.executor).kind)
        if self.ray_address is not None and self.executor is not ExecutorKind.RAY:
            raise ConfigError(f"--ray_address {self.ray_address} is for --executor ray (found --executor "
                              f"{self.executor.value})")


@dataclass(frozen=True)
class ModelConfig(ConfigBase):
    proto: Path
    model: Path
    input_shape: tuple[int, ...] | None = None  # --input_shape: another input size for a fully convolutional net
    # --corrected_model: the weights written by --adaround/--bias_correction (corrected.caffemodel); the int8
    # model quantizes them and is measured against --model
    corrected_model: Path | None = None

    def __post_init__(self) -> None:
        for key in ("proto", "model", "corrected_model"):
            path = getattr(self, key)
            if path is None and key == "corrected_model":
                continue
            if not path.is_file():
                raise ConfigError(f"--{key} {path}: " + ("is a directory, expected a file" if path.is_dir()
                                                          else "no such file"))


@dataclass(frozen=True)
class DataConfig(ConfigBase):
    data_list: Path
    image_params: Path
    dataset_path: Path | None = None
    data_limit: int | None = None
    batch_size: int = 1

    def __post_init__(self) -> None:
        if not self.data_list.exists():
            raise ConfigError(f"--data_list {self.data_list}: no such file or folder")
        if not self.image_params.is_file():
            raise ConfigError(f"--image_params {self.image_params}: " + (
                "is a directory, expected a file" if self.image_params.is_dir() else "no such file"))
        if self.data_limit is not None and self.data_limit <= 0:
            raise ConfigError(f"--data_limit must be positive, found {self.data_limit}")
        if self.batch_size <= 0:
            raise ConfigError(f"--batch_size must be positive, found {self.batch_size}")


@dataclass(frozen=True)
class CheckConfig(ConfigBase):
    model: ModelConfig
    data: DataConfig
    tolerance: float = 1e-4
    json_path: Path | None = None
    output_path: Path | None = None  # report.log + report.html

    def __post_init__(self) -> None:
        if not self.tolerance > 0:
            raise ConfigError(f"--tolerance must be positive, found {self.tolerance}")


LEVERS = ("adaround", "bias_correction")  # the weight levers, in the order a calibration runs them
# The levers calibrate, main.sh and the API apply unless told otherwise (--no_bias_correction): bias correction
# was better than or level with the plain table on held-out images of every shared model and costs one pass per
# layer; AdaRound helps more on some nets (SqueezeNet, landmark106) but not all (res10) and costs minutes
# (docs/weight_levers.md "The default").
DEFAULT_LEVERS = ("bias_correction",)


@dataclass(frozen=True)
class QuantConfig(ConfigBase):
    """What the int8 model is (see quant/spec.py) and how its first table is calibrated."""

    method: str = "auto"
    weight_method: str = "minmax"
    granularity: str = "mix"
    rounding: str = "half_to_even"
    bias: str = "int32"
    unsigned: bool = False
    target: str = "onnxruntime"  # quant/spec.py Target: the engine whose integer arithmetic is simulated
    equalize: bool = False  # cross-layer equalization of the weights first (caffe/equalize.py)
    # The weight levers: True asked for, False refused; None left to the front end's default (off until
    # with_default_levers resolves it: DEFAULT_LEVERS are on where the run calibrates and they apply).
    adaround: bool | None = False  # learn each weight's rounding on the calibration images (quant/adaround.py)
    bias_correction: bool | None = False  # each int8 layer's mean error off its bias (quant/bias_correction.py)
    by_default: tuple[str, ...] = ()  # the levers on because they are the default, not asked for (may be skipped)
    quantize_types: tuple[str, ...] = DEFAULT_QUANTIZE_TYPES
    ignore_layer_names: tuple[str, ...] = ()
    ignore_layer_types: tuple[str, ...] = ()
    percentile: float = 99.99
    bins: int = 2048

    def __post_init__(self) -> None:
        from .quant.calibrators import ACTIVATION_CALIBRATORS, WEIGHT_CALIBRATORS
        from .quant.spec import BiasMode, Granularity, Rounding, Target

        if self.method != "auto":
            ACTIVATION_CALIBRATORS.get(self.method)
        WEIGHT_CALIBRATORS.get(self.weight_method)
        for enum, key in ((Granularity, "granularity"), (Rounding, "rounding"), (BiasMode, "bias"),
                          (Target, "target")):
            value = getattr(self, key)
            if value not in {e.value for e in enum}:
                raise ConfigError(f"--{key} must be one of {', '.join(e.value for e in enum)}, found {value!r}")
        if self.unsigned and not Target(self.target).unsigned_activations:
            raise ConfigError(f"--unsigned: --target {self.target} runs signed int8 activations only; uint8 "
                              f"activations are for --target onnxruntime or onnxruntime_vnni (which use them anyway)")
        if Target(self.target).onnxruntime and self.rounding != Rounding.HALF_EVEN.value:
            raise ConfigError(f"--rounding {self.rounding}: onnxruntime's QuantizeLinear rounds half to even; use "
                              f"--rounding half_to_even with --target {self.target}")
        if self.adaround and "adaround" not in self.by_default:
            from .quant.adaround import refuse_adaround

            why = refuse_adaround(self.spec(), self.weight_method)
            if why is not None:
                raise ConfigError(why)
        if not 0 < self.percentile <= 100:
            raise ConfigError(f"--percentile must be in (0, 100], found {self.percentile}")
        if self.bins < 128:
            raise ConfigError(f"--bins must be at least 128 (KL merges into 128 bins), found {self.bins}")

    @property
    def levers(self) -> tuple[str, ...]:
        """The weight levers asked for, as their options (for messages)."""
        return tuple(f"--{k}" for k in LEVERS if getattr(self, k))

    def with_default_levers(self, calibrates: bool) -> "QuantConfig":
        """Each lever left to the default (None) resolved: on when it is one of DEFAULT_LEVERS, the run
        calibrates a table from images (no given table, no --corrected_model, not --simplified) and these settings
        allow it (AdaRound: per-channel min-max weights); else off."""
        from .quant.adaround import refuse_adaround

        values, on = {}, []
        for lever in LEVERS:
            asked = getattr(self, lever)
            if asked is not None:
                values[lever] = asked
                continue
            values[lever] = calibrates and lever in DEFAULT_LEVERS and (
                lever != "adaround" or refuse_adaround(self.spec(), self.weight_method) is None)
            on += [lever] if values[lever] else []
        return replace(self, **values, by_default=tuple(on))

    def spec(self):
        from .quant.spec import BiasMode, Granularity, QuantSpec, Rounding, Target

        target = Target(self.target)
        # The engine's own int8 layers (onnxruntime: Eltwise sums) join the user's types; ignore lists still win.
        types = tuple(self.quantize_types) + tuple(t for t in target.int8_types if t not in self.quantize_types)
        return QuantSpec(target=target, quantize_types=types, ignore_layer_names=tuple(self.ignore_layer_names),
                         ignore_layer_types=tuple(self.ignore_layer_types), granularity=Granularity(self.granularity),
                         rounding=Rounding(self.rounding), bias=BiasMode(self.bias), unsigned=self.unsigned)


@dataclass(frozen=True)
class CalibrateConfig(ConfigBase):
    model: ModelConfig
    data: DataConfig
    quant: QuantConfig
    output_path: Path
    simplified: bool = False
    measure_images: int = 32  # images kept in memory for the auto choice and the difference check
    threads: int = 2
    executor: ExecutorKind = ExecutorKind.LOCAL  # where the batches run (executors/): same results either way
    ray_address: str | None = None  # --executor ray: the cluster (None: this machine's, see executors/base.py)

    def __post_init__(self) -> None:
        self._check_executor()


@dataclass(frozen=True)
class TuneConfig(ConfigBase):
    """Settings shared by test, tune and the whole loop (auto / main.sh)."""

    model: ModelConfig
    data: DataConfig
    quant: QuantConfig
    output_path: Path
    calibration_model: Path | None = None
    calibration_proto: Path | None = None
    metric: str = "square"
    metric_module: Path | None = None  # --metric_module: a file of the user's metrics, loaded before the run
    metric_params: dict = None  # type: ignore[assignment]
    objective: str = "outputs"
    int8_layer: str = ""
    tune_layer: str = ""
    tune_diff: float | None = None
    search: str = "both_directions"
    step_ratio: float = 0.1
    steps: int = 8
    patience: int = 2
    multipliers: tuple[float, ...] = ()
    search_subset: int = -1
    min_gain: float = 0.01
    output_veto: float = 2.0  # refuse a move that multiplies one model output's distance by more (0: off)
    confirm: str = "all"  # tune/tuner.py Confirm: where a move found on the searched batches must prove itself
    restarts: int = 4  # whole-net tuning runs (tune/restarts.py)
    restart_pick: str = "best"  # which restart's table is kept: best (objective), mean (of the moves), validation
    validation_list: Path | None = None  # auto: images held out of tuning, scored before/after (and for the pick)
    # auto without --validation_list: this share of the images is held back from calibration and tuning, to
    # choose the delivered table on (pipeline/selection.py); 0: tune on every image and deliver the tuned pick
    holdout: float = 0.25
    strategy: str = "layerwise"
    max_iter_per_node: int = 3
    acc_drop_skip: float = 0.05
    target_accuracy: float | None = None
    threshold: float = 1.0  # largest accuracy drop allowed, in percent points (OpenVINO's --threshold)
    progress: str = "print"
    fallback: bool = True
    bayesian_trials: int = 30
    tiebreak: str | None = None
    threads: int = 2
    resume: bool = True
    plots: int = 6  # how many of the worst layers get a histogram plot
    executor: ExecutorKind = ExecutorKind.LOCAL  # where the batches run (executors/): same results either way
    ray_address: str | None = None  # --executor ray: the cluster (None: this machine's, see executors/base.py)

    def __post_init__(self) -> None:
        self._check_executor()
        if self.metric_params is None:
            object.__setattr__(self, "metric_params", {})
        if self.model.corrected_model is not None and self.quant.levers:
            raise ConfigError(f"--corrected_model {self.model.corrected_model} holds weights the levers already "
                              f"corrected; {' and '.join(self.quant.levers)} would correct them again: give one or the "
                              f"other")
        if self.quant.levers and (self.calibration_proto is not None or self.calibration_model is not None):
            raise ConfigError(f"{' and '.join(self.quant.levers)} correct the weights while calibrating, for the "
                              f"table they calibrate; with a given table (--calibration_proto/--calibration_model) "
                              f"give the weights the run that wrote it corrected, --corrected_model "
                              f"corrected.caffemodel, instead")
        for key in ("calibration_model", "calibration_proto", "metric_module"):
            path = getattr(self, key)
            if path is not None and not path.is_file():
                raise ConfigError(f"--{key} {path}: " + ("is a directory, expected a file" if path.is_dir()
                                                          else "no such file"))
        if self.step_ratio <= 0 or self.steps <= 0 or self.patience <= 0:
            raise ConfigError("--step_ratio, --steps and --patience must be positive")
        if any(m <= 0 for m in self.multipliers):
            raise ConfigError(f"--multipliers must all be positive, found {list(self.multipliers)}")
        if self.output_veto != 0 and self.output_veto <= 1:
            raise ConfigError(f"--output_veto is a factor above 1 (or 0 for off), found {self.output_veto}")
        if self.restarts <= 0:
            raise ConfigError(f"--restarts must be positive, found {self.restarts}")
        if self.restart_pick not in ("best", "mean", "validation"):
            raise ConfigError(f"--restart_pick must be best, mean or validation, found {self.restart_pick!r}")
        if not 0 <= self.holdout < 0.5:
            raise ConfigError(f"--holdout is the share of the images held back from tuning, in [0, 0.5); found "
                              f"{self.holdout}")
        if self.validation_list is not None and not self.validation_list.exists():
            raise ConfigError(f"--validation_list {self.validation_list}: no such file or folder")
        if self.max_iter_per_node <= 0:
            raise ConfigError(f"--max_iter_per_node must be positive, found {self.max_iter_per_node}")
        if self.threshold < 0:
            raise ConfigError(f"--threshold is an accuracy drop in percent and cannot be negative ({self.threshold})")
        if self.progress not in ("print", "bar", "none"):
            raise ConfigError(f"--progress must be print, bar or none, found {self.progress!r}")
