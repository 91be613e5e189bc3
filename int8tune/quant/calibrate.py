"""Calibration: which layers run int8, statistics of the blobs they read, thresholds, the CalibrationTable.

    plan = plan_quantization(net, spec)                 # layers + the blobs they read; ignore lists validated
    stats = collect_statistics(engine, plan_values, batches)   # two streamed passes
    table = build_table(net, converted, plan, stats, spec, method, weight_method, options)

`net` is the folded net (BatchNorm/Scale merged into convolutions, caffe/fold.py), as int8 engines quantize it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from ..caffe.net import CaffeNet
from ..convert.converter import ConvertedModel
from ..convert.registry import LAYER_CONVERTERS
from ..errors import ConfigError
from ..executors import Executor, LocalExecutor, Shared, WorkerContext
from ..log import logger
from ..progress import Progress
from ..runtime import Engine, on_worker
from .calibrators import ACTIVATION_CALIBRATORS, CalibratorOptions, calibrate_activation, calibrate_weights
from .placement import nonnegative_values, own_output_values
from .saturation import Pairing, is_depthwise, kernel_order, pair_safe_thresholds
from .spec import WEIGHTED_TYPES, QuantSpec
from .stats import BlobStatistics, HistogramPart, RangePart, StatsCollector, histogram_part, range_part
from .table import BlobEntry, CalibrationTable, LayerEntry
from .weights import to_output_matrix

Batches = Callable[[], Iterable[np.ndarray]]  # a fresh iterator of input batches per call (one per pass)


@dataclass(frozen=True)
class PlannedLayer:
    layer: str
    type: str
    inputs: tuple[str, ...]  # values it reads that get quantized
    int8: bool
    note: str = ""


def plan_quantization(net: CaffeNet, spec: QuantSpec) -> list[PlannedLayer]:
    """The layers of quantize_types, each marked int8 or ignored. Unknown names in the ignore lists are errors."""
    names = {layer.name for layer in net.layers}
    unknown = [n for n in spec.ignore_layer_names if n not in names]
    if unknown:
        raise ConfigError(f"ignore list names layers that are not in {net.proto_path or net.name}: "
                          f"{', '.join(unknown)} (layer names are case-sensitive)")
    present_types = {layer.type for layer in net.layers}
    for t in (*spec.ignore_layer_types, *spec.quantize_types):
        if t not in LAYER_CONVERTERS:
            raise ConfigError(f"layer type {t!r} (in --quantize_types or an ignore list) is not a Caffe layer type "
                              f"known here; known: {', '.join(LAYER_CONVERTERS.names())}")
    for t in spec.ignore_layer_types:
        if t not in present_types:
            logger.warning("ignored layer type %s does not occur in this net", t)
    plan = []
    for layer in net.layers:
        if layer.type not in spec.quantize_types:
            continue
        note = ""
        if layer.name in spec.ignore_layer_names:
            note = "ignored by name"
        elif layer.type in spec.ignore_layer_types:
            note = "ignored by type"
        plan.append(PlannedLayer(layer.name, layer.type, tuple(dict.fromkeys(layer.bottoms)), not note, note))
    if not any(p.int8 for p in plan):
        raise ConfigError(f"no layer to quantize: none of the types {', '.join(spec.quantize_types)} remains after "
                          f"the ignore lists")
    return plan


def planned_values(plan: list[PlannedLayer]) -> list[str]:
    return list(dict.fromkeys(v for p in plan for v in p.inputs))


def output_values(converted: ConvertedModel, plan: list[PlannedLayer]) -> list[str]:
    """The outputs of the int8 layers of `plan` that get a threshold of their own (placement.own_output_values)."""
    read_by_int8 = {v for p in plan if p.int8 for v in p.inputs}
    return own_output_values(converted, [(p.layer, p.type) for p in plan if p.int8], read_by_int8)


def collect_statistics(engine: Engine, values: list[str], batches: Batches, bins: int, per_channel: bool,
                       progress: bool = True, total: int | None = None,
                       executor: Executor | None = None) -> dict[str, BlobStatistics]:
    """Two streamed passes over the data: absmax and moments, then |x| histograms. Memory: one histogram per
    blob (per channel with per-channel activations), whatever the number of images.

    `total`: the number of batches one pass yields, if known; the progress then estimates the time left.
    `executor`: where the batches run (default: here); each batch gives its parts, folded in batch order, so the
    statistics are the same wherever the batches ran."""
    executor = executor or LocalExecutor()
    shapes = engine.converted.shapes
    channels = {v: int(shapes[v][1]) if len(shapes[v]) > 1 else 1 for v in values}
    collector = StatsCollector(values, channels, bins=bins, per_channel=per_channel)
    job = StatsJob(executor.share(engine), tuple(values), per_channel)
    # One progress over both passes, so that the estimate covers the whole step, not just the pass under way
    with Progress(2 * total if total is not None else None, "calibration statistics", unit="batch",
                  enabled=progress) as bar:
        for chunks in executor.imap(range_parts, batches(), shared=job, progress=bar):
            for parts in chunks:  # in image order: the float sums add up as one process adds them
                for v, part in parts.items():
                    collector.add_range(v, part)
        stats = collector.statistics
        histogram_job = HistogramJob(job, bins, {v: stats[v].absmax for v in values},
                                     {v: stats[v].channel_absmax for v in values} if per_channel else None)
        for parts in executor.imap(histogram_parts, batches(), shared=histogram_job, progress=bar):
            for v, part in parts.items():
                collector.add_histogram(v, part)
    return collector.statistics


@dataclass(frozen=True)
class StatsJob:
    engine: Shared  # the fp32 Engine
    values: tuple[str, ...]
    per_channel: bool


@dataclass(frozen=True)
class HistogramJob:
    stats: StatsJob
    bins: int
    absmax: dict[str, float]  # pass 1's, over every image
    channel_absmax: dict[str, np.ndarray] | None


def range_parts(ctx: WorkerContext, job: StatsJob, batch: np.ndarray) -> list[dict[str, RangePart]]:
    """Pass 1 of one batch: per run of STATS_CHUNK images, each blob's part (kept apart, so that the float sums
    are added in the order one process adds them)."""
    engine = on_worker(ctx, job.engine)
    out = []
    # A few images per run: every requested blob of every image comes back at once, so a batch of 10 SqueezeNet
    # images held about 1 GB of activations (measured peak 1.9 GB; 2 images keep it small).
    for start in range(0, len(batch), STATS_CHUNK):
        outputs = engine.run(batch[start:start + STATS_CHUNK], job.values)
        parts = {}
        for v in job.values:
            part = range_part(outputs[v], v, job.per_channel)
            if part is not None:
                parts[v] = part
        out.append(parts)
        del outputs
    return out


def histogram_parts(ctx: WorkerContext, job: HistogramJob, batch: np.ndarray) -> dict[str, HistogramPart]:
    """Pass 2 of one batch: each blob's counts (summed over the batch's runs: integers, exact in any order)."""
    engine = on_worker(ctx, job.stats.engine)
    out: dict[str, HistogramPart] = {}
    for start in range(0, len(batch), STATS_CHUNK):
        outputs = engine.run(batch[start:start + STATS_CHUNK], job.stats.values)
        for v in job.stats.values:
            channel_absmax = job.channel_absmax.get(v) if job.channel_absmax is not None else None
            part = histogram_part(outputs[v], job.absmax[v], job.bins, channel_absmax)
            out[v] = out[v] + part if v in out else part
        del outputs
    return out


STATS_CHUNK = 2


def all_thresholds(stats: BlobStatistics, options: CalibratorOptions) -> dict[str, float]:
    """Every activation calibrator's threshold for one blob (per tensor), for the statistics CSV."""
    hist = stats.tensor_histogram()
    return {name: calibrate_activation(name, hist, options) for name in ACTIVATION_CALIBRATORS.names()}


def build_table(net: CaffeNet, converted: ConvertedModel, plan: list[PlannedLayer],
                stats: dict[str, BlobStatistics], spec: QuantSpec, method: str | dict[str, str],
                weight_method: str, options: CalibratorOptions) -> CalibrationTable:
    """Thresholds for every planned blob (per tensor, or per channel with per_channel granularity) and weight
    thresholds for every weighted layer. `method` may map values to calibrator names (a per-blob choice)."""
    table = CalibrationTable(model=net.name, spec=spec)
    signs = unsigned_values(converted, spec, stats)
    for value in planned_values(plan):
        s = stats[value]
        name = method if isinstance(method, str) else method[value]
        unsigned = value in signs
        opts = options if options.unsigned == unsigned else _with(options, unsigned=unsigned)
        threshold = calibrate_activation(name, s.tensor_histogram(), opts)
        channel_t = None
        if spec.granularity.activations_per_channel and s.channel_histograms is not None:
            channel_t = np.array([calibrate_activation(name, s.channel_histogram(c), opts)
                                  for c in range(s.channels)], dtype=np.float64)
        table.blobs[value] = BlobEntry(value=value, blob=net.blob_of[value], threshold=float(threshold),
                                       channel_thresholds=channel_t, unsigned=unsigned, calibrator=name,
                                       absmax=float(s.absmax))
    for p in plan:
        weights = None
        if p.type in WEIGHTED_TYPES:
            weights = layer_weight_thresholds(converted, p.layer, weight_method, spec, options)
        table.layers[p.layer] = LayerEntry(layer=p.layer, type=p.type, input_value=p.inputs[0],
                                           extra_inputs=p.inputs[1:], weight_thresholds=weights,
                                           weight_method=weight_method if weights is not None else "",
                                           int8=p.int8, note=p.note)
    return table


def unsigned_values(converted: ConvertedModel, spec: QuantSpec, stats: dict[str, BlobStatistics]) -> set[str]:
    """Blobs quantized as unsigned (T/255, [0, 255]): with unsigned activations (the onnxruntime targets, or
    --unsigned), those that cannot be negative by the net's structure (after a ReLU, ...) and were >= 0 on the
    calibration images, and a net input that was >= 0 on them (images in [0, 1] or [0, 255])."""
    if not spec.unsigned_blobs:
        return set()
    structural = nonnegative_values(converted) | set(converted.net.inputs)
    return {v for v, s in stats.items() if s.non_negative and v in structural}


def layer_weight_thresholds(converted: ConvertedModel, layer: str, weight_method: str, spec: QuantSpec,
                            options: CalibratorOptions) -> np.ndarray:
    """Per-output-channel (or one per-tensor) thresholds of a layer's ONNX weights (BN/Scale already folded)."""
    weight, op_type, group = layer_weight(converted, layer)
    return weight_thresholds(weight, op_type, group, weight_method, spec, options)


def layer_weight(converted: ConvertedModel, layer: str) -> tuple[np.ndarray, str, int]:
    """(the ONNX-layout weights, the op type of the node carrying them, its group) of a weighted layer."""
    from onnx import numpy_helper

    record = converted.records[layer]
    init = next(t for t in converted.model.graph.initializer if t.name == record.weight)
    node = next(n for n in converted.model.graph.node if n.name == record.main_node)
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return numpy_helper.to_array(init), node.op_type, group


def weight_thresholds(weight: np.ndarray, op_type: str, group: int, weight_method: str, spec: QuantSpec,
                      options: CalibratorOptions) -> np.ndarray:
    """The weight thresholds the export gives these ONNX-layout weights: the weight calibrator per output channel
    (or one per tensor), then what the target needs (`pair_safe_for_target`). One function, so that what is
    written as weights (quant/adaround.py) is quantized back exactly as it was rounded."""
    matrix = to_output_matrix(np.asarray(weight).astype(np.float64), op_type, group)
    if not spec.granularity.weights_per_channel:
        matrix = matrix.reshape(1, -1)
    thresholds = calibrate_weights(weight_method, matrix, _with(options, unsigned=False))
    return pair_safe_for_target(weight, op_type, group, thresholds, spec)


def target_weight_thresholds(converted: ConvertedModel, layer: str, thresholds: np.ndarray, spec: QuantSpec
                             ) -> np.ndarray:
    """`thresholds` of a layer's weights as the target can run them (see pair_safe_for_target)."""
    weight, op_type, group = layer_weight(converted, layer)
    return pair_safe_for_target(weight, op_type, group, thresholds, spec)


def pair_safe_for_target(weight: np.ndarray, op_type: str, group: int, thresholds: np.ndarray, spec: QuantSpec
                         ) -> np.ndarray:
    """`thresholds` as the target can run them: for --target onnxruntime, widened on the output channels where a
    pair of same-sign weights could overflow the int16 sums of onnxruntime's AVX2 kernels (x86 without VNNI add
    pairs of u8 x s8 products in a saturating int16; quant/saturation.py). Depthwise kernels are exact."""
    if not spec.target.pair_safe_weights or op_type not in ("Conv", "Gemm", "MatMul") \
            or is_depthwise(op_type, np.shape(weight), group):
        return thresholds
    # rows in the kernel's K order (per-tensor thresholds: the widest any row needs)
    pairs = kernel_order(np.asarray(weight).astype(np.float64), op_type, group)
    return pair_safe_thresholds(pairs, thresholds, spec.qmax, Pairing.KERNEL)


def with_target_weights(converted: ConvertedModel, table: CalibrationTable) -> tuple[CalibrationTable, list[str]]:
    """A table whose weight thresholds the target can run (see target_weight_thresholds), and the layers that had
    to change: a table imported from another tool or edited by hand may hold 8-bit weights that saturate."""
    out, changed = table, []
    for e in table.layers.values():
        if e.weight_thresholds is None or e.layer not in converted.records or not converted.records[e.layer].weight:
            continue
        widened = target_weight_thresholds(converted, e.layer, e.weight_thresholds, table.spec)
        if not np.array_equal(widened, e.weight_thresholds):
            if out is table:
                out = table.copy()
            out.layers[e.layer].weight_thresholds = widened
            changed.append(e.layer)
    return out, changed


def _with(options: CalibratorOptions, **changes) -> CalibratorOptions:
    from dataclasses import replace

    return replace(options, **changes)
