"""Typed configuration, built once at the edge (main.py / cli.py) from the command line.

The package never sees argv or untyped dicts; each command gets a frozen dataclass, echoed at the start of the
run and stored with its outputs. TuneConfig groups its settings by job (MeasureConfig, BlobSearchConfig,
DeliveryConfig, AccuracyConfig, RunConfig); each group validates its own fields. The options themselves stay flat
(--step_ratio, `restarts:` in a YAML file, tune(restarts=2)), and so does TuneConfig.to_dict(): the trial log's
fingerprint of the settings is the same for the same options however the groups are cut.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError
from .executors import ExecutorKind, ExecutorSettings
from .progress import ProgressMode
from .quant.spec import DEFAULT_QUANTIZE_TYPES

E = TypeVar("E", bound=Enum)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, Enum):
        return value.value
    return value


def enum_option(enum: type[E], option: str, value: Any) -> E:
    """The member of `enum` that `value` names (the CLI, YAML and API give strings); anything else is an error
    naming the option and every valid value."""
    try:
        return enum(value)
    except ValueError:
        raise ConfigError(f"--{option} must be one of {', '.join(e.value for e in enum)}, found {value!r}") from None


def _either(enum: type[Enum]) -> str:
    """`a, b or c`: the values of `enum`, for messages."""
    values = [e.value for e in enum]
    return f"{', '.join(values[:-1])} or {values[-1]}"


def _check_file(option: str, path: Path | None) -> None:
    if path is not None and not path.is_file():
        raise ConfigError(f"--{option} {path}: " + ("is a directory, expected a file" if path.is_dir()
                                                     else "no such file"))


# What each candidate threshold is scored by (--objective). model: the chosen metric on the model's outputs;
# outputs: the square distance of the model's outputs whatever the metric (dense: every output value counts, where
# a detection metric rests on the few cells holding objects); layer: the square distance of the tuned layer's own
# output (the original tool's tune_diff); guarded: the square distance of the model's outputs searches, and a move
# is kept only when the metric on the model's outputs improves too (on the searched images, then on all): the
# dense distance is the steadier guide, the metric is what the user judges by, and a move that only one of them
# sees is the likelier chance.
class Objective(str, Enum):
    MODEL = "model"
    OUTPUTS = "outputs"
    LAYER = "layer"
    GUARDED = "guarded"

    @property
    def on_model_outputs(self) -> bool:
        return self is not Objective.LAYER

    @property
    def dense(self) -> bool:
        """Scored by the square distance of the model's outputs whatever the metric."""
        return self in (Objective.OUTPUTS, Objective.GUARDED)


class Confirm(str, Enum):
    """Where a move found on the searched batches must prove itself (with --search_subset): on the batches the
    search did not see (its score there is free of the search's selection bias: the best of many candidates on
    the same images looks better there than it is), or on every batch (the searched ones included)."""

    UNSEEN = "unseen"
    ALL = "all"


class RestartPick(str, Enum):
    """Which restart's table a run keeps: the best objective on the tuning images, the geometric mean of the
    restarts' threshold moves, or the best metric on held-out images (a Judge)."""

    BEST = "best"
    MEAN = "mean"
    VALIDATION = "validation"


LAYERWISE = "layerwise"  # --strategy: threshold search blob by blob with restarts; the others are tune/strategies.py's


class ConfigBase:
    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values, under their option names: a group of options (OptionGroup) is listed flat,
        a nested config (model, data, quant) as a dict of its own."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, OptionGroup):
                out.update(value.to_dict())
            else:
                out[f.name] = _jsonable(asdict(value) if is_dataclass(value) else value)
        return out

    def describe(self) -> str:
        settings = self.to_dict()
        width = max(len(k) for k in settings)
        return "\n".join(f"  {k:<{width}} = {json.dumps(v)}" for k, v in settings.items())


class OptionGroup(ConfigBase):
    """A group of TuneConfig's settings, by job. Its field names are the option names (--step_ratio, `restarts:`
    in a YAML file, tune(restarts=2)): TuneConfig.to_dict() lists them flat, and TuneConfig.from_options hands each
    option to the group that holds it."""


class Execution:
    """Where the batches run: --executor and --ray_address (CalibrateConfig, and TuneConfig's RunConfig)."""

    executor: ExecutorKind
    ray_address: str | None

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
# The levers calibrate, main.sh and the API apply unless told otherwise (--no_adaround, --no_bias_correction). On
# held-out images of the shared models, with --equalize chosen as by default, both levers beat bias correction alone
# on four of five (SqueezeNet top-1 0.660 -> 0.685, fp32 0.675; yoloface box F1 0.936 -> 0.968; yolov3 0.933 ->
# 0.943; landmark106 -24 % square) and lost one face of 53 on res10 (docs/weight_levers.md "The default"). With
# the sequential solver (adaround_solver, the default since 983fb29) res10 finds all 53 faces.
DEFAULT_LEVERS = ("adaround", "bias_correction")


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
    # Cross-layer equalization of the weights first (caffe/equalize.py). None, the default: decided where it can be
    # (pipeline/equalize_choice.py: a run that calibrates measures both ways; one given a table follows its record).
    equalize: bool | None = None
    # The weight levers: True asked for, False refused; None left to the front end's default (off until
    # with_default_levers resolves it: DEFAULT_LEVERS are on where the run calibrates and they apply).
    adaround: bool | None = False  # learn each weight's rounding on the calibration images (quant/adaround.py)
    adaround_solver: str = "sequential"  # quant/adaround.Solver: how it is learned
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
        from .quant.rounding_solver import solver_named

        solver_named(self.adaround_solver)
        if self.adaround and "adaround" not in self.by_default:
            from .quant.adaround import refuse_adaround

            why = refuse_adaround(self.spec(), self.weight_method)
            if why is not None:
                raise ConfigError(why)
        if self.equalize not in (True, False, None):
            raise ConfigError(f"equalize: true, false, or left out (the default: equalized where it measures "
                              f"better), found {self.equalize!r}")
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
class CalibrateConfig(ConfigBase, Execution):
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
class MeasureConfig(OptionGroup):
    """What the int8 model is judged by: the metric on the model's outputs, and what each candidate threshold is
    scored by."""

    metric: str = "square"
    metric_module: Path | None = None  # --metric_module: a file of the user's metrics, loaded before the run
    metric_params: dict = field(default_factory=dict)
    objective: Objective = Objective.OUTPUTS
    output_veto: float = 2.0  # refuse a move that multiplies one model output's distance by more (0: off)

    def __post_init__(self) -> None:
        if self.metric_params is None:  # `metric_params:` left empty in a YAML file
            object.__setattr__(self, "metric_params", {})
        _check_file("metric_module", self.metric_module)
        object.__setattr__(self, "objective", enum_option(Objective, "objective", self.objective))
        if self.output_veto != 0 and self.output_veto <= 1:
            raise ConfigError(f"--output_veto is a factor above 1 (or 0 for off), found {self.output_veto}")


@dataclass(frozen=True)
class BlobSearchConfig(OptionGroup):
    """How one blob's threshold is searched (tune/search.py) and when a move found is kept."""

    search: str = "both_directions"  # a name of tune/search.py's SEARCHES (checked there when the run starts)
    step_ratio: float = 0.1
    steps: int = 8
    patience: int = 2
    multipliers: tuple[float, ...] = ()
    search_subset: int = -1  # search on this many batches, the largest difference first (-1: half of 6 or more)
    min_gain: float = 0.01
    confirm: Confirm = Confirm.ALL  # where a move found on the searched batches must prove itself

    def __post_init__(self) -> None:
        if self.step_ratio <= 0 or self.steps <= 0 or self.patience <= 0:
            raise ConfigError("--step_ratio, --steps and --patience must be positive")
        if any(m <= 0 for m in self.multipliers):
            raise ConfigError(f"--multipliers must all be positive, found {list(self.multipliers)}")
        object.__setattr__(self, "confirm", enum_option(Confirm, "confirm", self.confirm))


@dataclass(frozen=True)
class DeliveryConfig(OptionGroup):
    """How many whole-net tuning runs (tune/restarts.py), and which table is delivered: the images it is chosen
    on and the pick among the restarts."""

    restarts: int = 4  # whole-net tuning runs
    restart_pick: RestartPick = RestartPick.BEST  # which restart's table is kept
    validation_list: Path | None = None  # auto: images held out of tuning, scored before/after (and for the pick)
    # auto without --validation_list: this share of the images is held back from calibration and tuning, to
    # choose the delivered table on (pipeline/selection.py); 0: tune on every image and deliver the tuned pick
    holdout: float = 0.25

    def __post_init__(self) -> None:
        if self.restarts <= 0:
            raise ConfigError(f"--restarts must be positive, found {self.restarts}")
        if self.restart_pick not in {p.value for p in RestartPick}:
            raise ConfigError(f"--restart_pick must be {_either(RestartPick)}, found {self.restart_pick!r}")
        object.__setattr__(self, "restart_pick", RestartPick(self.restart_pick))
        if not 0 <= self.holdout < 0.5:
            raise ConfigError(f"--holdout is the share of the images held back from tuning, in [0, 0.5); found "
                              f"{self.holdout}")
        if self.validation_list is not None and not self.validation_list.exists():
            raise ConfigError(f"--validation_list {self.validation_list}: no such file or folder")


@dataclass(frozen=True)
class AccuracyConfig(OptionGroup):
    """The accuracy goal and the strategy that reaches for it (docs/accuracy_strategies.md)."""

    strategy: str = LAYERWISE  # LAYERWISE, or a name of tune/strategies.py's STRATEGIES (checked when the run starts)
    max_iter_per_node: int = 3
    acc_drop_skip: float = 0.05
    target_accuracy: float | None = None
    threshold: float = 1.0  # largest accuracy drop allowed, in percent points (OpenVINO's --threshold)
    fallback: bool = True
    bayesian_trials: int = 30
    tiebreak: str | None = None  # a name of tune/objectives.py's OBJECTIVES (checked when the run starts)

    def __post_init__(self) -> None:
        if self.max_iter_per_node <= 0:
            raise ConfigError(f"--max_iter_per_node must be positive, found {self.max_iter_per_node}")
        if self.threshold < 0:
            raise ConfigError(f"--threshold is an accuracy drop in percent and cannot be negative ({self.threshold})")

    @property
    def layerwise(self) -> bool:
        return self.strategy == LAYERWISE


@dataclass(frozen=True)
class RunConfig(OptionGroup, Execution):
    """How the run executes and what it leaves beside the results: threads and executor, progress output, the
    resumed trial log, plots."""

    threads: int = 2
    executor: ExecutorKind = ExecutorKind.LOCAL  # where the batches run (executors/): same results either way
    ray_address: str | None = None  # --executor ray: the cluster (None: this machine's, see executors/base.py)
    progress: ProgressMode = ProgressMode.PRINT
    resume: bool = True
    plots: int = 6  # how many of the worst layers get a histogram plot

    def __post_init__(self) -> None:
        self._check_executor()
        if self.progress not in {p.value for p in ProgressMode}:
            raise ConfigError(f"--progress must be {_either(ProgressMode)}, found {self.progress!r}")
        object.__setattr__(self, "progress", ProgressMode(self.progress))


@dataclass(frozen=True)
class TuneConfig(ConfigBase):
    """Settings shared by test, tune and the whole loop (auto / main.sh): the model, images and int8 model, the
    table to start from, each command's own option, and the groups of options by job."""

    model: ModelConfig
    data: DataConfig
    quant: QuantConfig
    output_path: Path
    calibration_model: Path | None = None
    calibration_proto: Path | None = None
    int8_layer: str = ""  # test: the layer whose output difference is reported
    tune_layer: str = ""  # tune: the int8 layer whose input threshold is swept
    tune_diff: float | None = None  # tune: the difference to compare the candidates with
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    blob_search: BlobSearchConfig = field(default_factory=BlobSearchConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.model.corrected_model is not None and self.quant.levers:
            raise ConfigError(f"--corrected_model {self.model.corrected_model} holds weights the levers already "
                              f"corrected; {' and '.join(self.quant.levers)} would correct them again: give one or the "
                              f"other")
        if self.quant.levers and (self.calibration_proto is not None or self.calibration_model is not None):
            raise ConfigError(f"{' and '.join(self.quant.levers)} correct the weights while calibrating, for the "
                              f"table they calibrate; with a given table (--calibration_proto/--calibration_model) "
                              f"give the weights the run that wrote it corrected, --corrected_model "
                              f"corrected.caffemodel, instead")
        for key in ("calibration_model", "calibration_proto"):
            _check_file(key, getattr(self, key))

    @classmethod
    def groups(cls) -> dict[str, type[OptionGroup]]:
        """Field name -> the group class it holds."""
        return {f.name: f.default_factory for f in fields(cls)  # type: ignore[misc]
                if isinstance(f.default_factory, type) and issubclass(f.default_factory, OptionGroup)}

    @classmethod
    def option_names(cls) -> set[str]:
        """Every option a TuneConfig holds by its flat name: the groups' fields and the commands' own options."""
        groups = cls.groups()
        own = {f.name for f in fields(cls) if f.name not in groups} - {"model", "data", "quant", "output_path"}
        return own | {f.name for group in groups.values() for f in fields(group)}

    @classmethod
    def from_options(cls, model: ModelConfig, data: DataConfig, quant: QuantConfig, output_path: Path,
                     **options: Any) -> TuneConfig:
        """A TuneConfig from flat options (the command line's, a YAML file's, the API's keywords), each handed to
        the group that holds it; an option left out keeps its default."""
        groups = cls.groups()
        owner = {f.name: name for name, group in groups.items() for f in fields(group)}
        unknown = sorted(set(options) - cls.option_names())
        if unknown:
            raise TypeError(f"TuneConfig has no option {', '.join(unknown)}")
        grouped: dict[str, dict[str, Any]] = {name: {} for name in groups}
        own = {}
        for key, value in options.items():
            if key in owner:
                grouped[owner[key]][key] = value
            else:
                own[key] = value
        return cls(model=model, data=data, quant=quant, output_path=output_path, **own,
                   **{name: groups[name](**values) for name, values in grouped.items()})
