"""The int8 model inside onnxruntime: the fp32 graph with fake quantization, thresholds fed as graph inputs.

Quantizers sit where `placement.place_quantizers` puts them (the points the QDQ export writes too): at the
blob each int8 layer reads, and at the output of each int8 weighted layer (after its ReLU when unsigned; read
quantized by every reader). A quantizer replaces x by  clip(round(x / s), lo, hi) * s  with s = T / 127 (T / 255
and lo = 0 when unsigned), T the threshold of the point's grid blob. Half-to-even rounding runs as
Clip(x, -T, T) -> QuantizeLinear -> DequantizeLinear (exactly the formula once x is clipped); half-away-from-zero
as the element-wise formula. For each int8 layer:
- its weights are replaced by their quantize-dequantize image (static: weight thresholds come from the table);
- its bias, in int32 mode, becomes round(b / (s * s_w)) * (s * s_w).
Everything that depends on a threshold T is a graph input computed from the table by `Int8Graph.feeds` in
float32 numpy (the scale `scale:<value>`, the clip bounds `low:`/`high:<value>`, the int32-rounded bias
`bias:<layer>`), so trying another threshold is a new feed, not a new session, and the graph holds no per-run
scalar arithmetic (onnxruntime pays a fixed cost per node). Which layers are int8 is structural: changing it (a
fallback) builds a new graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..convert.converter import ConvertedModel
from ..errors import ConfigError
from .placement import Placement, place_quantizers
from .spec import BiasMode, Rounding, WEIGHTED_TYPES
from .table import CalibrationTable
from .weights import fake_quantize_weights, from_output_matrix, quantize_bias, quantize_matrix, to_output_matrix

SCALE, LOW, HIGH, BIAS, MULT = "scale:", "low:", "high:", "bias:", "mult:"
ADD_A, ADD_B, ADD_FIXED = "add_a:", "add_b:", "add_fixed:"
# An output point's producer writes `<tensor>#fp32` and the quantizer writes `<tensor>`.
PRIVATE = "#fp32"


@dataclass(frozen=True)
class BiasFeed:
    layer: str
    value: str  # the blob whose scale the bias is rounded at
    bias: np.ndarray  # float32 (M,)
    weight_scale: np.ndarray  # float32 (M,) s_w


@dataclass(frozen=True)
class IntegerLayer:
    """An int8 layer computed as onnxruntime's integer kernel does (QLinearConv, QGemm): integer inputs, weights
    and bias, the int32 sum (exact in float32 below 2^24), times the multiplier (s_in * s_w) / s_out, then the
    output point's rounding and clipping."""

    layer: str
    input_value: str  # grid of its input
    output_value: str  # grid of its output point
    bias: np.ndarray | None  # float32 (M,)
    weight_scale: np.ndarray  # float32 (M,)
    mult_shape: tuple[int, ...]  # (1, M, 1, 1) for Conv, (M,) for Gemm/MatMul


@dataclass(frozen=True)
class IntegerAdd:
    """An Eltwise sum computed as onnxruntime's QLinearAdd does (MLAS, x86): on the stored bytes a, b (zero points
    za, zb: 0 for uint8, 128 for signed blobs stored as uint8), r = fma(a, s_a/s_c, fma(b, s_b/s_c, F)) in float32
    with F = z_c - (za s_a/s_c + zb s_b/s_c), rounded half to even (measured bit for bit against onnxruntime 1.32
    on all 65536 byte pairs, 20 scale draws; plain float additions missed 3 of 1.3 million)."""

    layer: str
    a: str  # grids of the two inputs and of the output
    b: str
    out: str
    zero_points: tuple[int, int, int]


@dataclass
class Int8Graph:
    """A ConvertedModel whose graph simulates int8, plus what to feed it."""

    converted: ConvertedModel  # same net/post steps; `.model` is the simulating graph
    feed_inputs: dict[str, list[str]]  # value -> the graph inputs that depend on its threshold
    per_channel: dict[str, int]  # value -> channel count, for values with per-channel thresholds
    biases: list[BiasFeed]
    spec: object
    structure: tuple  # what a cached session depends on
    placement: Placement | None = None  # where the quantizers are (shared with the QDQ export)
    # tensor of the graph -> the net value it equals when nothing is quantized (a quantizer's output, or the
    # private output of an output point's producer): what a run with every other blob in fp32 feeds for it
    sources: dict[str, str] = field(default_factory=dict)
    integer_layers: list[IntegerLayer] = field(default_factory=list)
    integer_adds: list[IntegerAdd] = field(default_factory=list)
    tensor_types: dict[str, int] = field(default_factory=dict)  # tensors that are not float32 -> ONNX type

    def elem_type(self, tensor: str) -> int:
        return self.tensor_types.get(tensor, TensorProto.FLOAT)

    def net_value(self, tensor: str) -> str:
        return self.sources.get(tensor, tensor)

    def feeds(self, table: CalibrationTable) -> dict[str, np.ndarray]:
        """Every threshold-dependent input, in float32 numpy with the arithmetic the graph would use."""
        spec = self.spec
        out: dict[str, np.ndarray] = {}
        scales: dict[str, np.float32] = {}
        for value in self.feed_inputs:
            entry = table.blobs[value]
            levels = np.float32(spec.umax if entry.unsigned else spec.qmax)
            if value in self.per_channel:
                t = entry.channel_thresholds
                if t is None or t.size != self.per_channel[value]:
                    raise ConfigError(f"blob {entry.blob!r} needs {self.per_channel[value]} per-channel thresholds")
                t = np.asarray(t, dtype=np.float32)
                rank = len(self.converted.shapes[value])
                bshape = (1, t.size) + (1,) * (rank - 2)
                out[SCALE + value] = (t / levels).astype(np.float32)
                if spec.rounding is Rounding.HALF_EVEN:
                    out[HIGH + value] = t.reshape(bshape)
                    low = np.zeros_like(t) if entry.unsigned else (t / levels * np.float32(spec.qmin)).astype(np.float32)
                    out[LOW + value] = low.reshape(bshape)
                else:
                    out[SCALE + value] = out[SCALE + value].reshape(bshape)
            else:
                t = np.float32(entry.threshold)
                scales[value] = entry.scale(spec)
                out[SCALE + value] = np.asarray(scales[value], dtype=np.float32)
                if spec.rounding is Rounding.HALF_EVEN:
                    out[HIGH + value] = np.asarray(t, dtype=np.float32)
                    low = np.float32(0) if entry.unsigned else np.float32(scales[value] * np.float32(spec.qmin))
                    out[LOW + value] = np.asarray(low, dtype=np.float32)
        for b in self.biases:
            q, sb = quantize_bias(b.bias, scales[b.value], b.weight_scale, spec.rounding)
            out[BIAS + b.layer] = (q * sb).astype(np.float32)
        for layer in self.integer_layers:
            s_in, s_out = scales[layer.input_value], scales[layer.output_value]
            # onnxruntime's requantization multiplier, in its float32 order: (x_scale * w_scale) / y_scale
            mult = ((s_in * layer.weight_scale).astype(np.float32) / s_out).astype(np.float32)
            out[MULT + layer.layer] = mult.reshape(layer.mult_shape)
            if layer.bias is not None:
                q, _ = quantize_bias(layer.bias, s_in, layer.weight_scale, spec.rounding)
                out[BIAS + layer.layer] = q.astype(np.float32)
        for add in self.integer_adds:
            s_c = scales[add.out]
            r_a, r_b = np.float32(scales[add.a] / s_c), np.float32(scales[add.b] / s_c)
            za, zb, zc = (np.float32(z) for z in add.zero_points)
            out[ADD_A + add.layer] = np.asarray(r_a, dtype=np.float32)
            out[ADD_B + add.layer] = np.asarray(r_b, dtype=np.float32)
            out[ADD_FIXED + add.layer] = np.asarray(np.float32(zc - np.float32(np.float32(r_a * za) + np.float32(r_b * zb))),
                                                    dtype=np.float32)
        return out


    def frozen(self, table: CalibrationTable, keep: tuple[str, ...] = ()) -> onnx.ModelProto:
        """The graph with every threshold-dependent input replaced by a constant from `table`, except the inputs
        of the values in `keep`. Constant biases and scales let onnxruntime optimise the graph as it does fp32
        (its blocked NCHWc convolutions need a constant bias: measured 3x faster on yolov3_nano_voc)."""
        feeds = self.feeds(table)
        kept = {n for v in keep for n in self.feed_inputs.get(v, ())}
        model = onnx.ModelProto()
        model.CopyFrom(self.converted.model)
        frozen = [i for i in model.graph.input if i.name in feeds and i.name not in kept]
        for i in frozen:
            model.graph.input.remove(i)
            model.graph.initializer.append(numpy_helper.from_array(feeds[i.name], i.name))
        return model


def _round_np(x: np.ndarray, rounding: Rounding) -> np.ndarray:
    if rounding is Rounding.HALF_EVEN:
        return np.round(x)
    return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


class _Emitter:
    def __init__(self) -> None:
        self.types: dict[str, int] = {}  # tensors that are not float32 (ONNX element type), for partial graphs
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}#q{self.count}"

    def const(self, stem: str, value) -> str:
        n = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), n))
        return n

    def const_typed(self, stem: str, value: np.ndarray) -> str:
        n = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def node(self, op: str, inputs: list[str], stem: str, **attrs) -> str:
        out = self.name(f"{stem}/{op}")
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        if op == "Cast":
            self.types[out] = attrs["to"]
        elif any(i in self.types for i in inputs):  # arithmetic keeps its inputs' type (float64 in QLinearAdd's)
            self.types[out] = next(self.types[i] for i in inputs if i in self.types)
        return out

    def round(self, x: str, rounding: Rounding, stem: str) -> str:
        if rounding is Rounding.HALF_EVEN:
            return self.node("Round", [x], stem)
        # half away from zero: sign(x) * floor(|x| + 0.5)
        mag = self.node("Floor", [self.node("Add", [self.node("Abs", [x], stem), self.const(stem, 0.5)], stem)],
                        stem)
        return self.node("Mul", [self.node("Sign", [x], stem), mag], stem)


def build_int8_graph(converted: ConvertedModel, table: CalibrationTable, integer: bool = True) -> Int8Graph:
    """The simulating graph: a fake quantizer at every point of `place_quantizers` (the same points the QDQ
    export writes), fake-quantized weights, int32-rounded biases; with `integer` (and an onnxruntime target)
    the layers onnxruntime runs as integer kernels in their integer arithmetic. Without it every layer computes
    in float on dequantized values (the same model up to float rounding; `Tuner.score_isolated` measures one
    blob with the others in fp32, which needs the float form)."""
    spec = table.spec
    model = onnx.ModelProto()
    model.CopyFrom(converted.model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    node_by_name = {n.name: n for n in graph.node}
    em = _Emitter()
    feed_inputs: dict[str, list[str]] = {}
    per_channel: dict[str, int] = {}
    biases: list[BiasFeed] = []
    placement = place_quantizers(converted, table)
    sources: dict[str, str] = {}
    for layer in (e.layer for e in table.quantized_layers()):
        if layer not in converted.records:
            raise ConfigError(f"layer {layer!r} of the table is not in the converted net "
                              f"({converted.net.proto_path})")
    adds = _integer_add_candidates(converted, table, placement, node_by_name) if integer else {}
    integer = _integer_candidates(converted, table, placement, node_by_name) if integer else {}
    for value in placement.grids():
        if value not in table.blobs:
            raise ConfigError(f"blob {value!r} is read by an int8 layer but has no threshold in the table")
        _grid_inputs(graph, value, table, converted, spec, feed_inputs, per_channel)
    for point in placement.points:
        if point.is_output:
            # The producer writes a private name; the quantizer's output takes the tensor's name, so every reader
            # (graph outputs and post steps included) reads the quantized blob, as in an int8 engine's memory.
            private = point.tensor + PRIVATE
            for n in node_by_name.values():
                for i, o in enumerate(n.output):
                    if o == point.tensor:
                        n.output[i] = private
            if point.kind == "output" and (point.layer in integer or point.layer in adds):
                # rounds the layer's sum in steps, not its float image: ReLUs between are the clip at 0
                _level_quantizer(em, _steps(point.layer), point.grid, table, spec, output_name=point.tensor)
            else:
                _quantizer(em, private, point.grid, table, spec, per_channel, output_name=point.tensor)
            sources[private] = point.tensor
        else:
            dq = _quantizer(em, point.tensor, point.grid, table, spec, per_channel)
            sources[dq] = point.tensor
            for node_name in point.readers:
                node = node_by_name[node_name]
                for i, inp in enumerate(node.input):
                    if inp == point.tensor:
                        node.input[i] = dq
    integer_layers: list[IntegerLayer] = []
    integer_adds: list[IntegerAdd] = []
    for entry in table.quantized_layers():
        record = converted.records[entry.layer]
        value = entry.input_value
        if entry.layer in adds:
            add = _integer_add(em, graph, node_by_name[record.nodes[0]], entry, adds[entry.layer], table)
            integer_adds.append(add)
            for grid in dict.fromkeys((add.a, add.b, add.out)):
                feed_inputs[grid] += [ADD_A + add.layer, ADD_B + add.layer, ADD_FIXED + add.layer]
            continue
        if entry.layer in integer:
            layer = _integer_layer(em, graph, record, entry, inits, node_by_name, spec, integer[entry.layer], converted)
            integer_layers.append(layer)
            feed_inputs[value].append(MULT + entry.layer)
            if layer.output_value != value:
                feed_inputs[layer.output_value].append(MULT + entry.layer)
            if layer.bias is not None:
                feed_inputs[value].append(BIAS + entry.layer)
            continue
        if record.type in WEIGHTED_TYPES and record.weight and entry.weight_thresholds is not None:
            int32_bias = spec.bias is BiasMode.INT32 and value not in per_channel
            bias = _quantize_weights(graph, [node_by_name[n] for n in record.nodes], node_by_name[record.main_node],
                                     record, entry, inits, spec, value if int32_bias else None)
            if bias is not None:
                biases.append(bias)
                feed_inputs[value].append(BIAS + entry.layer)

    graph.ClearField("node")
    graph.node.extend(_toposort(list(node_by_name.values()) + em.nodes, graph))
    graph.initializer.extend(em.inits)
    _drop_unused(graph)
    structure = (tuple(e.layer for e in table.quantized_layers()),
                 tuple((e.layer, None if e.weight_thresholds is None else e.weight_thresholds.tobytes())
                       for e in table.quantized_layers()),
                 tuple(sorted(per_channel)), tuple((p.tensor, p.grid) for p in placement.points), spec)
    return Int8Graph(replace(converted, model=model), feed_inputs, per_channel, biases, spec, structure, placement,
                     sources, integer_layers, integer_adds, dict(em.types))


def _integer_candidates(converted: ConvertedModel, table: CalibrationTable, placement: Placement,
                        node_by_name) -> dict[str, str]:
    """Layers simulated in onnxruntime's integer arithmetic (layer -> its output grid): with an onnxruntime
    target, int32 bias and per-tensor activations, the Conv/Gemm/MatMul layers whose output point follows them
    (onnxruntime fuses those into QLinearConv/QGemm). The others (no output point: a float output) compute in
    float on dequantized values, as onnxruntime does for them."""
    spec = table.spec
    if not spec.target.onnxruntime or spec.bias is not BiasMode.INT32 or spec.granularity.activations_per_channel \
            or spec.rounding is not Rounding.HALF_EVEN:
        return {}
    out = {}
    for entry in table.quantized_layers():
        record = converted.records[entry.layer]
        grid = placement.output_grid.get(entry.layer)
        if grid is None or entry.weight_thresholds is None or not record.weight or record.main_node is None:
            continue
        if node_by_name[record.main_node].op_type in ("Conv", "Gemm", "MatMul"):
            out[entry.layer] = grid
    return out


def _integer_add_candidates(converted: ConvertedModel, table: CalibrationTable, placement: Placement,
                            node_by_name) -> dict[str, str]:
    """Eltwise layers simulated as onnxruntime's QLinearAdd (layer -> output grid): one binary Add whose inputs
    are the layer's two quantized blobs, with an output point (onnxruntime fuses DQ, DQ -> Add -> Q)."""
    spec = table.spec
    if not spec.target.onnxruntime or spec.granularity.activations_per_channel or spec.rounding is not Rounding.HALF_EVEN:
        return {}
    out = {}
    for entry in table.quantized_layers():
        record = converted.records[entry.layer]
        grid = placement.output_grid.get(entry.layer)
        if grid is None or entry.type != "Eltwise" or len(record.nodes) != 1 or len(entry.extra_inputs) != 1:
            continue
        node = node_by_name[record.nodes[0]]
        if node.op_type == "Add" and list(node.input) == [entry.input_value, entry.extra_inputs[0]]:
            out[entry.layer] = grid
    return out


def _integer_add(em: _Emitter, graph, node, entry, output_grid: str, table: CalibrationTable) -> IntegerAdd:
    """QLinearAdd's arithmetic beside the float Add (which keeps the layer's output in its units for reports):
    the stored bytes of both inputs, the two fused multiply-adds in float64 (exact products and sum, then one
    rounding to float32: what an FMA computes), rounding half to even; writes the output in steps."""
    layer = entry.layer
    a, b = entry.input_value, entry.extra_inputs[0]
    zps = tuple(0 if table.blobs[g].unsigned else 128 for g in (a, b, output_grid))
    for name in (ADD_A, ADD_B, ADD_FIXED):
        graph.input.append(helper.make_tensor_value_info(name + layer, TensorProto.FLOAT, []))

    def stored(tensor: str, grid: str, zero: int) -> str:  # the byte onnxruntime holds, as float64
        q = em.node("Round", [em.node("Div", [tensor, SCALE + grid], layer)], layer)
        return em.node("Cast", [em.node("Add", [q, em.const(layer, float(zero))], layer)], layer, to=TensorProto.DOUBLE)

    def wide(name: str) -> str:
        return em.node("Cast", [name + layer], layer, to=TensorProto.DOUBLE)

    def fma(x: str, y: str, z: str) -> str:  # float32(x*y + z), products and sums exact in float64
        return em.node("Cast", [em.node("Add", [em.node("Mul", [x, y], layer), z], layer)], layer,
                       to=TensorProto.FLOAT)

    inner = fma(stored(node.input[1], b, zps[1]), wide(ADD_B), wide(ADD_FIXED))
    r = fma(stored(node.input[0], a, zps[0]), wide(ADD_A), em.node("Cast", [inner], layer, to=TensorProto.DOUBLE))
    em.nodes.append(helper.make_node("Sub", [em.node("Round", [r], layer), em.const(layer, float(zps[2]))],
                                     [_steps(layer)], name=f"{layer}/steps"))
    return IntegerAdd(layer, a, b, output_grid, zps)


def _integer_layer(em: _Emitter, graph, record, entry, inits, node_by_name, spec, output_value: str,
                   converted: ConvertedModel) -> IntegerLayer:
    """Rewrite one layer into integer form: its input divided by its scale and rounded (the int8 values, exactly),
    integer-valued weights, the integer bias as the fed input `bias:<layer>`, and the sum multiplied by the fed
    `mult:<layer>`, so that the layer's output is in steps of its output grid, as onnxruntime's requantization
    computes it before rounding (the output point's `_level_quantizer` rounds and clips)."""
    main = node_by_name[record.main_node]
    layer = entry.layer
    value = entry.input_value
    q_in = em.node("Round", [em.node("Div", [main.input[0], SCALE + value], layer)], layer)
    main.input[0] = q_in
    w_init = inits[record.weight]
    weight = numpy_helper.to_array(w_init)
    group = next((a.i for a in main.attribute if a.name == "group"), 1)
    q, s_w = quantize_matrix(to_output_matrix(weight, main.op_type, group), entry.weight_thresholds, spec.rounding,
                             spec.qmax)
    w_init.CopyFrom(numpy_helper.from_array(from_output_matrix(q, weight, main.op_type, group).astype(np.float32),
                                            record.weight))
    bias = None
    if record.bias is not None:
        bias = numpy_helper.to_array(inits[record.bias]).astype(np.float32).reshape(-1)
        name = BIAS + layer
        graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [bias.size]))
        for n in (node_by_name[x] for x in record.nodes):
            for i, inp in enumerate(n.input):
                if inp == record.bias:
                    n.input[i] = name
    out_rank = len(converted.shapes[record.outputs[0]])
    channels = s_w.size
    mult_shape = (1, channels) + (1,) * (out_rank - 2) if main.op_type == "Conv" else (channels,)
    graph.input.append(helper.make_tensor_value_info(MULT + layer, TensorProto.FLOAT, list(mult_shape)))
    # The layer's last node writes its output (the Conv/Gemm itself, or the bias Add after a MatMul).
    last = next(node_by_name[n] for n in reversed(record.nodes)
                if node_by_name[n].output[0] in (record.outputs[0], record.outputs[0] + PRIVATE))
    written = last.output[0]
    acc = f"{layer}/int32_sum"
    last.output[0] = acc
    em.nodes.append(helper.make_node("Mul", [acc, MULT + layer], [_steps(layer)], name=f"{layer}/requantize"))
    # the layer's own output in its units (what reports compare with fp32); the output point reads the steps
    em.nodes.append(helper.make_node("Mul", [_steps(layer), SCALE + output_value], [written],
                                     name=f"{layer}/in_units"))
    return IntegerLayer(layer, value, output_value, bias, s_w.astype(np.float32), mult_shape)


def _steps(layer: str) -> str:
    return f"{layer}/steps"


def _level_quantizer(em: _Emitter, tensor: str, value: str, table: CalibrationTable, spec, output_name: str) -> str:
    """The output point of an integer layer: its input is already in steps (sum x multiplier), so round half to
    even, clip to the levels and multiply by the scale: onnxruntime's requantization, then its dequantization."""
    blob = table.blobs[value]
    low, high = (0.0, float(spec.umax)) if blob.unsigned else (float(spec.qmin), float(spec.qmax))
    levels = em.node("Clip", [em.node("Round", [tensor], value), em.const(value, low), em.const(value, high)], value)
    em.nodes.append(helper.make_node("Mul", [levels, SCALE + value], [output_name], name=em.name(f"{value}/Mul")))
    return output_name


def _grid_inputs(graph, value: str, table: CalibrationTable, converted: ConvertedModel, spec,
                 feed_inputs: dict[str, list[str]], per_channel: dict[str, int]) -> None:
    """The graph inputs that carry `value`'s threshold (scale, and clip bounds for half-to-even rounding)."""
    blob = table.blobs[value]
    shape = converted.shapes[value]
    channels = int(shape[1]) if blob.channel_thresholds is not None else None
    if channels is not None:
        per_channel[value] = channels
    bshape = [1, channels] + [1] * (len(shape) - 2) if channels is not None else []
    scale = SCALE + value
    if spec.rounding is Rounding.HALF_EVEN:
        graph.input.append(helper.make_tensor_value_info(scale, TensorProto.FLOAT, [channels] if channels else []))
        for name in (LOW + value, HIGH + value):
            graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, bshape))
        feed_inputs[value] = [scale, LOW + value, HIGH + value]
    else:
        graph.input.append(helper.make_tensor_value_info(scale, TensorProto.FLOAT, bshape))
        feed_inputs[value] = [scale]


def _quantizer(em: _Emitter, tensor: str, value: str, table: CalibrationTable, spec, per_channel: dict[str, int],
               output_name: str | None = None) -> str:
    """Nodes computing clip(round(x / s), lo, hi) * s of `tensor` with the fed scale and bounds of blob `value`;
    returns the quantized tensor (named `output_name` when given)."""
    blob = table.blobs[value]
    levels = spec.umax if blob.unsigned else spec.qmax
    channels = per_channel.get(value)
    scale = SCALE + value
    if spec.rounding is Rounding.HALF_EVEN:
        zero_dtype = np.uint8 if blob.unsigned else np.int8
        if channels is None:
            clipped = em.node("Clip", [tensor, LOW + value, HIGH + value], value)
            zero = em.const_typed(value, np.zeros((), zero_dtype))
            attrs = {}
        else:
            clipped = em.node("Max", [em.node("Min", [tensor, HIGH + value], value), LOW + value], value)
            zero = em.const_typed(value, np.zeros(channels, zero_dtype))
            attrs = {"axis": 1}
        # Clipping to [-T, T] first keeps QuantizeLinear off -128, so this equals the formula exactly.
        q = em.node("QuantizeLinear", [clipped, scale, zero], value, **attrs)
        out = em.node("DequantizeLinear", [q, scale, zero], value, **attrs)
    else:
        lo = 0.0 if blob.unsigned else float(spec.qmin)
        q = em.round(em.node("Div", [tensor, scale], value), spec.rounding, value)
        clipped = em.node("Clip", [q, em.const(value, lo), em.const(value, float(levels))], value)
        out = em.node("Mul", [clipped, scale], value)
    if output_name is not None:
        em.nodes[-1].output[0] = output_name
        return output_name
    return out


def _quantize_weights(graph, layer_nodes: list, node, record, entry, inits, spec,
                      input_value: str | None) -> BiasFeed | None:
    """Static fake quantization of the weights. In int32 bias mode (`input_value` given) the layer's bias
    becomes the graph input `bias:<layer>`, fed round(b / (s_in*s_w)) * (s_in*s_w); per-channel activations
    have no single accumulator scale, so their bias stays fp32."""
    w_init = inits[record.weight]
    weight = numpy_helper.to_array(w_init)
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    wq = fake_quantize_weights(weight, node.op_type, group, entry.weight_thresholds, spec.rounding, spec.qmax)
    w_init.CopyFrom(numpy_helper.from_array(wq.astype(np.float32), record.weight))
    if record.bias is None or input_value is None:
        return None
    bias = numpy_helper.to_array(inits[record.bias]).astype(np.float32).reshape(-1)
    t_w = np.asarray(entry.weight_thresholds, dtype=np.float32).reshape(-1)
    s_w = (np.broadcast_to(t_w, bias.shape) / np.float32(spec.qmax)).astype(np.float32)
    name = BIAS + entry.layer
    graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [bias.size]))
    for n in layer_nodes:  # the Conv/Gemm's third input, or the Add after a MatMul
        for i, inp in enumerate(n.input):
            if inp == record.bias:
                n.input[i] = name
    return BiasFeed(entry.layer, input_value, bias, s_w)


def _drop_unused(graph) -> None:
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(keep)


def _toposort(nodes: list, graph) -> list:
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    producers: dict[str, int] = {}
    for idx, n in enumerate(nodes):
        for o in n.output:
            producers[o] = idx
    order, state = [], [0] * len(nodes)  # 0 new, 1 visiting, 2 done

    def visit(i: int) -> None:
        stack = [(i, iter(nodes[i].input))]
        state[i] = 1
        while stack:
            j, inputs = stack[-1]
            for name in inputs:
                if name in available or name not in producers:
                    continue
                k = producers[name]
                if state[k] == 0:
                    state[k] = 1
                    stack.append((k, iter(nodes[k].input)))
                    break
            else:
                stack.pop()
                state[j] = 2
                order.append(nodes[j])

    for i in range(len(nodes)):
        if state[i] == 0:
            visit(i)
    return order
