"""Does the exported QDQ model, deployed the ordinary way, compute what the tool measured?

Every figure the tool reports (calibration differences, tuning scores, accuracy) comes from its simulation of the
int8 model (quant/simulate.py). A user deploys something else: model_int8_qdq.onnx in an onnxruntime session
with default options, whose graph optimiser rewrites the QuantizeLinear/DequantizeLinear pairs into integer
kernels (QLinearConv, QGemm, QLinearAdd) chosen for this CPU. The two are meant to be one model (the "one model"
rule of placement.py), but three things can make them differ, and none of them shows in the simulation:

- the CPU: on x86 without VNNI, onnxruntime's U8S8 kernels add pairs of products in a saturating int16
  (hostcpu.py); a table for `--target onnxruntime_vnni` (or ncnn/tensorrt) has 8-bit weights that can overflow it;
- the target: ncnn and TensorRT tables are signed and their engines round and clip their own way; the QDQ file
  is only onnxruntime's approximation of them;
- a bug: an export that writes another scale, zero point or bias than the simulation uses.

`check_export` runs both on the same images (the calibration or tuning images) and compares the ONNX graph
outputs, in quantization steps of each output; `render_export_check` turns the result into report.log lines.
For the onnxruntime targets the simulation computes onnxruntime's integer arithmetic (QLinearConv, QGemm,
QLinearAdd), so on an exact CPU every value is equal and the report says so. Layers it computes in float (float
islands, signed targets, half-away rounding) can still differ by a flipped rounding now and then; hence the
bounds below, which allow rare flips of a few steps but not a systematic error.

When the default session is not bit-identical, the check looks twice more: the same file at ORT_ENABLE_EXTENDED
(the level the simulation runs at, without the NCHWc float convolutions of ORT_ENABLE_ALL), and the distance from
fp32 of both the simulation and the deployed file. Layers left in fp32 (ignored, fallen back) are computed in
float between int8 layers; NCHWc sums them in another order, and a last-bit difference flips the next quantizer's
rounding now and then, flips that grow downstream (yolov3_nano_voc with layer2-conv in fp32: 6 % of output values
beyond one step, past the bounds, while the extended session is exact and the distance from fp32 moves by 1-3 %).
The report then says which of the two it is, instead of blaming the int8 arithmetic.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from ..convert.converter import ConvertedModel
from ..errors import DataError
from ..hostcpu import Int8Path, describe_host, host_int8_path
from ..runtime import Engine
from .simulate import build_int8_graph
from .spec import Target
from .table import CalibrationTable

# A value "differs" when it is more than one step from the simulation; 1.01 rather than 1 so that a single
# rounding flip, which moves a value by exactly one step (up to float rounding of that step), is not counted.
ONE_STEP = 1.01
# At most this fraction of an output's values may differ by more than one step. A rounding flip at one quantizer
# moves its value by one step, and what it feeds by a fraction of a step (one input step times one weight), so a
# flip upstream can add up to more than one step downstream, but only for a few values; a wrong scale, zero point,
# bias or saturating kernel moves a large share of them (a 10 % scale error: most values of the output).
MAX_BEYOND_FRACTION = 0.01
# No value may be further than this many steps from the simulation. Flips that meet in one sum stay within a few
# steps; a saturated int16 pair or a wrong scale moves values by ten steps and more. Measured with onnxruntime
# 1.32 on a VNNI host, 8-12 calibration images, default tables: lenet_mnist, squeezenet_v1.0, res10_ssd_face,
# landmark106, yoloface_500k_v2 and yolov3_nano_voc bit-identical to the integer-exact simulation. With an earlier,
# not yet exact state of the simulation, rare one-step flips (the first at an Eltwise sum) grew layer after layer
# (yolov3_nano_voc: 8 steps, 11 % of values beyond one; yoloface_500k_v2: 6 steps, 0.6 %; landmark106: 2 steps,
# 0.12 %): what this check is meant to show. A weight scale 10 % off (tests/test_verify.py): 12 steps, 73 %;
# squeezenet with a --target onnxruntime_vnni table on emulated AVX2 (scripts/emulate_avx2.sh): 77 steps, 67 %.
# Raise the bound only with measurements of exact arithmetic beyond it.
MAX_STEPS = 4.0
# An output that stays in float (no quantizer: a Softmax, a head whose layer stays fp32) has no step; its
# differences are counted in this fraction of its fp32 range, the step an 8-bit quantizer of that range would
# have, so that the same two bounds apply to every output.
FLOAT_UNIT_FRACTION = 1.0 / 255.0


@dataclass(frozen=True)
class OutputCheck:
    """How far one graph output of the deployed model is from the simulation, over every image checked.

    `step` is the output's quantization step (threshold / 255 unsigned, / 127 signed), or None for an output in
    float; then differences are in `unit` = FLOAT_UNIT_FRACTION of the output's fp32 range (`fp32_range`)."""

    name: str
    step: float | None
    max_steps: float  # largest |deployed - simulated|, in steps (in `unit`s when step is None)
    beyond_one_step: float  # fraction of values differing by more than ONE_STEP steps
    square: float  # sum (deployed - simulated)^2 / sum simulated^2: scale-free, the tuner's "square" metric
    values: int = 0  # elements compared
    unit: float = 0.0  # the step, or FLOAT_UNIT_FRACTION * fp32_range for a float output
    fp32_range: float | None = None  # max - min of the fp32 model's output (float outputs only)

    @property
    def agrees(self) -> bool:
        """Rounding flips only: few values beyond one step, none beyond MAX_STEPS."""
        return bool(self.beyond_one_step <= MAX_BEYOND_FRACTION and self.max_steps <= MAX_STEPS)


@dataclass(frozen=True)
class ExportCheck:
    """The deployed QDQ model against the simulation: per-output figures and where they were measured."""

    outputs: tuple[OutputCheck, ...]
    images: int
    host: str  # describe_host()
    int8_path: Int8Path
    target: Target
    runtime: str = ort.__version__  # onnxruntime version of the deployed session
    # Measured only when the default session is not bit-identical to the simulation (see check_export):
    extended: tuple[OutputCheck, ...] | None = None  # the same file in a session at ORT_ENABLE_EXTENDED
    fp32_square: tuple[tuple[str, float, float], ...] = ()  # (output, simulated, deployed) square distance from fp32
    float_layers: tuple[str, ...] = ()  # the table's layers left in fp32 (computed in float inside the graph)

    @property
    def exact(self) -> bool:
        """Every value of every output equal to the simulation."""
        return all(o.max_steps == 0 for o in self.outputs)

    @property
    def extended_exact(self) -> bool:
        """The file at ORT_ENABLE_EXTENDED computes the simulation exactly: what differs in the default session
        comes from the highest optimisation level's float kernels, not from the int8 arithmetic."""
        return self.extended is not None and all(o.max_steps == 0 for o in self.extended)

    @property
    def agrees(self) -> bool:
        """Every output within the rounding bounds (MAX_BEYOND_FRACTION of values beyond one step, none beyond
        MAX_STEPS steps)."""
        return all(o.agrees for o in self.outputs)

    def differing(self) -> list[OutputCheck]:
        return [o for o in self.outputs if not o.agrees]

    def advice(self) -> list[str]:
        """Why the deployed model may differ and what to do, for this host and target; [] when it agrees."""
        if self.agrees:
            return []
        lines: list[str] = []
        if not self.target.onnxruntime:
            lines.append(f"the table is made for {self.target.value} (signed int8 activations, that engine's "
                         f"rounding and clipping); the QDQ file is an onnxruntime approximation of it: measure "
                         f"{self.target.value} with its own table file, or re-calibrate with --target onnxruntime "
                         f"for a QDQ model that computes what was measured")
        if self.int8_path is Int8Path.AVX2 and not self.target.pair_safe_weights:
            lines.append(f"this CPU's int8 kernels saturate pairs of products (x86 without VNNI: int16 sums) and "
                         f"the table's 8-bit weights (--target {self.target.value}) can overflow them; re-calibrate "
                         f"with --target onnxruntime, or run with session option session.x64quantprecision=1 "
                         f"(exact U8U8 kernels, slower)")
        if not lines and self.extended_exact:
            lines.append(self._float_kernels())
        if not lines:
            names = ", ".join(o.name for o in self.differing())
            hint = ("; this CPU adds pairs of products in int16 and the table's weights are meant to stay clear of "
                    "that: a session with option session.x64quantprecision=1 tells whether saturation is the cause"
                    if self.int8_path is Int8Path.AVX2 else "")
            lines.append(f"the differences on {names} exceed rounding (see the figures per output above): the "
                         f"export and the simulation disagree on this host{hint}; keep this report.log and the "
                         f"table (onnxruntime {self.runtime}) to investigate")
        return lines

    def _float_kernels(self) -> str:
        layers = (f"the layer(s) left in fp32 ({', '.join(self.float_layers[:6])}"
                  f"{', ...' if len(self.float_layers) > 6 else ''})" if self.float_layers else "the float parts")
        return (f"the int8 arithmetic is exact: the same file in a session at graph_optimization_level "
                f"ORT_ENABLE_EXTENDED computes what was measured, every value equal. The default level "
                f"(ORT_ENABLE_ALL) runs {layers} with NCHWc convolutions that sum in another order; a last-bit "
                f"difference moves a value across the next quantizer's rounding boundary and such flips grow "
                f"downstream. Deploy with ORT_ENABLE_EXTENDED to run exactly what was measured (slower: that level "
                f"also gives up NCHWc where it is fast), or judge the flips by the distances from fp32 above")


def check_export(converted: ConvertedModel, table: CalibrationTable, qdq_model: onnx.ModelProto,
                 batches: Sequence[np.ndarray | Mapping[str, np.ndarray]], threads: int = 2) -> ExportCheck:
    """Run the simulation (thresholds frozen as constants) and `qdq_model` in a default onnxruntime CPU session
    (no options: what a user deploys, kernels and graph rewrites chosen for this CPU) on the same `batches`, and
    compare the ONNX graph outputs. Statistics are accumulated batch by batch, so only one batch's outputs are in
    memory at a time. Outputs without a threshold in the table (float) are measured against the range of the
    fp32 model's output, which takes one more pass over the batches, with the fp32 model."""
    if not batches:
        raise DataError("the deployed model check needs at least one image")
    graph = build_int8_graph(converted, table)
    sim = Engine(dataclasses.replace(graph.converted, model=graph.frozen(table)), simulation=True, threads=threads)
    names = [o.name for o in qdq_model.graph.output]
    steps = {n: _step(table, n) for n in names}
    float_names = [n for n in names if steps[n] is None]
    ranges = _fp32_ranges(converted, float_names, batches, threads) if float_names else {}
    units = {n: steps[n] if steps[n] is not None else FLOAT_UNIT_FRACTION * ranges[n] for n in names}
    deployed = ort.InferenceSession(qdq_model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs, images = _compare(deployed, sim, batches, names, steps, units, ranges)
    check = ExportCheck(outputs, images, describe_host(), host_int8_path(), table.spec.target,
                        float_layers=tuple(e.layer for e in table.layers.values() if not e.int8))
    if check.exact:
        return check
    # Not bit-identical: say whether it is the int8 arithmetic or the float kernels of the highest optimisation
    # level (NCHWc, which the simulation does not use: runtime.session_options), and what the difference does to
    # the distance from fp32 that every figure of the report is.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    extended = ort.InferenceSession(qdq_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dataclasses.replace(check, extended=_compare(extended, sim, batches, names, steps, units, ranges)[0],
                               fp32_square=_fp32_squares(converted, deployed, sim, batches, names, threads))


def _compare(deployed: ort.InferenceSession, sim: Engine, batches, names: list[str], steps, units, ranges
             ) -> tuple[tuple[OutputCheck, ...], int]:
    """Per output, `deployed` against the simulation over every batch; and the number of images."""
    acc = {n: _Accumulator() for n in names}
    images = 0
    for batch in batches:
        feeds = sim.feeds(batch)
        images += int(next(iter(feeds.values())).shape[0])
        simulated = sim.run_tensors(feeds, names)
        measured = dict(zip(names, deployed.run(names, feeds)))
        for n in names:
            acc[n].add(n, measured[n], simulated[n], units[n])
    return tuple(acc[n].result(n, steps[n], units[n], ranges.get(n)) for n in names), images


def _fp32_squares(converted: ConvertedModel, deployed: ort.InferenceSession, sim: Engine, batches,
                  names: list[str], threads: int) -> tuple[tuple[str, float, float], ...]:
    """Per output, the square distance (sum of squared differences over sum of squares) from the fp32 model of
    the simulation and of the deployed file: does the difference between them matter?"""
    fp32 = Engine(converted, threads=threads)
    sums = {n: np.zeros(3) for n in names}  # simulated diff^2, deployed diff^2, fp32^2
    for batch in batches:
        feeds = sim.feeds(batch)
        ref = fp32.run_tensors(batch, names)
        simulated = sim.run_tensors(feeds, names)
        measured = dict(zip(names, deployed.run(names, feeds)))
        for n in names:
            r = ref[n].astype(np.float64)
            sums[n] += [np.sum((simulated[n] - r) ** 2), np.sum((measured[n] - r) ** 2), np.sum(r * r)]
    return tuple((n, float(v[0] / v[2]) if v[2] else 0.0, float(v[1] / v[2]) if v[2] else 0.0)
                 for n, v in sums.items())


def render_export_check(check: ExportCheck, model_name: str = "model_int8_qdq.onnx",
                        images_kind: str = "calibration") -> list[str]:
    """report.log lines: where it ran, one line per graph output, a verdict, and advice when it differs."""
    lines = [f"deployed model check: {model_name} in a default onnxruntime session on this host ({check.host}), "
             f"{check.images} {images_kind} image(s):"]
    for o in check.outputs:
        lines.append("  " + _output_line(o))
    if check.exact:
        lines.append("the deployed model computes what was measured, exactly: every value equal")
    elif check.agrees:
        lines.append("the deployed model computes what was measured (differences within rounding: at most "
                     f"{MAX_BEYOND_FRACTION:.0%} of values more than one step away, none more than "
                     f"{MAX_STEPS:g} steps)")
    else:
        worst = "; ".join(f"{o.name} ({100 * o.beyond_one_step:.3g} % beyond one step, at most "
                          f"{o.max_steps:.3g} steps)" for o in check.differing())
        lines.append(f"the deployed model DIFFERS from what was measured: {worst}")
    if check.extended is not None:
        same = ("every value equal" if check.extended_exact else
                "; ".join(_output_line(o) for o in check.extended))
        lines.append(f"  the same file at graph_optimization_level ORT_ENABLE_EXTENDED: {same}")
    if check.fp32_square:
        lines.append("  distance from fp32 on these images (square), measured -> deployed: " + "; ".join(
            f"{n} {a:.4g} -> {b:.4g}" for n, a, b in check.fp32_square))
    lines += ["  " + a for a in check.advice()]
    return lines


# --- helpers ----------------------------------------------------------------------------------------------------

def _step(table: CalibrationTable, name: str) -> float | None:
    """The quantization step of a graph output that has a quantizer, else None (the output is float)."""
    entry = table.blobs.get(name)
    if entry is None:
        return None
    spec = table.spec
    return float(entry.scale(spec))


def _fp32_ranges(converted: ConvertedModel, names: list[str], batches, threads: int) -> dict[str, float]:
    """max - min of each named output of the fp32 model over every batch (the reference for float outputs)."""
    engine = Engine(converted, threads=threads)
    low = {n: np.inf for n in names}
    high = {n: -np.inf for n in names}
    for batch in batches:
        for n, v in engine.run_tensors(batch, names).items():
            finite = v[np.isfinite(v)]
            if finite.size:
                low[n] = min(low[n], float(finite.min()))
                high[n] = max(high[n], float(finite.max()))
    return {n: high[n] - low[n] if high[n] >= low[n] else 0.0 for n in names}


class _Accumulator:
    """Running statistics of |deployed - simulated| for one output, in float64."""

    def __init__(self) -> None:
        self.max_abs = 0.0
        self.beyond = 0
        self.count = 0
        self.diff_sq = 0.0
        self.ref_sq = 0.0

    def add(self, name: str, measured: np.ndarray, simulated: np.ndarray, unit: float) -> None:
        if measured.shape != simulated.shape:
            raise DataError(f"output {name!r}: the QDQ model gives shape {measured.shape}, the simulation "
                            f"{simulated.shape}; the export does not match the net")
        m = measured.astype(np.float64)
        s = simulated.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            d = np.where(m == s, 0.0, np.abs(m - s))  # equal infinities are equal
        d[~np.isfinite(d)] = np.inf  # a NaN on one side only counts as an infinite difference
        self.count += d.size
        if d.size:
            self.max_abs = max(self.max_abs, float(d.max()))
        self.beyond += int(np.count_nonzero(d > ONE_STEP * unit)) if unit > 0 else int(np.count_nonzero(d))
        with np.errstate(over="ignore"):
            self.diff_sq += float(np.sum(d * d))
            self.ref_sq += float(np.sum(np.square(s[np.isfinite(s)])))

    def result(self, name: str, step: float | None, unit: float, fp32_range: float | None) -> OutputCheck:
        if unit > 0:
            max_steps = self.max_abs / unit
        else:  # a constant float output: any difference is unbounded in units of its (zero) range
            max_steps = 0.0 if self.max_abs == 0 else float("inf")
        if self.ref_sq > 0:
            square = self.diff_sq / self.ref_sq
        else:
            square = 0.0 if self.diff_sq == 0 else float("inf")
        beyond = self.beyond / self.count if self.count else 0.0
        return OutputCheck(name, step, max_steps, beyond, square, self.count, unit, fp32_range)


def _output_line(o: OutputCheck) -> str:
    if o.step is not None:
        where = f"{o.name}:"
        unit = f"one step ({o.step:.4g})"
    else:
        where = f"{o.name} (float output, steps of 1/255 of its fp32 range {o.fp32_range:.4g}):"
        unit = "one step"
    if o.max_steps == 0:
        return f"{where} equal to the simulation on all {o.values} values"
    return (f"{where} {100 * o.beyond_one_step:.3g} % of values more than {unit} from the simulation, at most "
            f"{o.max_steps:.3g} steps; square {o.square:.2g}")
