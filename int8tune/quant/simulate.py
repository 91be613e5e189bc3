"""The int8 model inside onnxruntime: the fp32 graph with fake quantization, thresholds fed as graph inputs.

For each int8 layer (see spec.py for the arithmetic):
- its input value x is replaced, for this layer only, by  clip(round(x / s), lo, hi) * s  with
  s = T / 127 (T / 255 and lo = 0 when unsigned). One fake quantizer per value, shared by every int8 layer
  reading it. Half-to-even rounding runs as Clip(x, -T, T) -> QuantizeLinear -> DequantizeLinear (exactly the
  formula once x is clipped); half-away-from-zero as the element-wise formula;
- its weights are replaced by their quantize-dequantize image (static: weight thresholds come from the table);
- its bias, in int32 mode, becomes round(b / (s * s_w)) * (s * s_w).
Everything that depends on a threshold T is a graph input computed from the table by `Int8Graph.feeds` in
float32 numpy (the scale `scale:<value>`, the clip bounds `low:`/`high:<value>`, the int32-rounded bias
`bias:<layer>`), so trying another threshold is a new feed, not a new session, and the graph holds no per-run
scalar arithmetic (onnxruntime pays a fixed cost per node). Which layers are int8 is structural: changing it (a
fallback) builds a new graph.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..convert.converter import ConvertedModel
from ..errors import ConfigError
from .spec import BiasMode, Rounding, WEIGHTED_TYPES
from .table import CalibrationTable
from .weights import fake_quantize_weights

SCALE, LOW, HIGH, BIAS = "scale:", "low:", "high:", "bias:"


@dataclass(frozen=True)
class BiasFeed:
    layer: str
    value: str  # the blob whose scale the bias is rounded at
    bias: np.ndarray  # float32 (M,)
    weight_scale: np.ndarray  # float32 (M,) s_w


@dataclass
class Int8Graph:
    """A ConvertedModel whose graph simulates int8, plus what to feed it."""

    converted: ConvertedModel  # same net/post steps; `.model` is the simulating graph
    feed_inputs: dict[str, list[str]]  # value -> the graph inputs that depend on its threshold
    per_channel: dict[str, int]  # value -> channel count, for values with per-channel thresholds
    biases: list[BiasFeed]
    spec: object
    structure: tuple  # what a cached session depends on

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
                    out[LOW + value] = (np.zeros_like(t) if entry.unsigned else -t).reshape(bshape)
                else:
                    out[SCALE + value] = out[SCALE + value].reshape(bshape)
            else:
                t = np.float32(entry.threshold)
                scales[value] = np.float32(t / levels)
                out[SCALE + value] = np.asarray(scales[value], dtype=np.float32)
                if spec.rounding is Rounding.HALF_EVEN:
                    out[HIGH + value] = np.asarray(t, dtype=np.float32)
                    out[LOW + value] = np.asarray(np.float32(0) if entry.unsigned else -t, dtype=np.float32)
        for b in self.biases:
            sb = (scales[b.value] * b.weight_scale).astype(np.float32)
            q = _round_np(b.bias / sb, spec.rounding)
            out[BIAS + b.layer] = (q * sb).astype(np.float32)
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
        return out

    def round(self, x: str, rounding: Rounding, stem: str) -> str:
        if rounding is Rounding.HALF_EVEN:
            return self.node("Round", [x], stem)
        # half away from zero: sign(x) * floor(|x| + 0.5)
        mag = self.node("Floor", [self.node("Add", [self.node("Abs", [x], stem), self.const(stem, 0.5)], stem)],
                        stem)
        return self.node("Mul", [self.node("Sign", [x], stem), mag], stem)


def build_int8_graph(converted: ConvertedModel, table: CalibrationTable) -> Int8Graph:
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
    quantized: dict[str, str] = {}  # value -> its fake-quantized tensor

    for entry in table.quantized_layers():
        record = converted.records.get(entry.layer)
        if record is None:
            raise ConfigError(f"layer {entry.layer!r} of the table is not in the converted net "
                              f"({converted.net.proto_path})")
        for value in (entry.input_value, *entry.extra_inputs):
            if value not in table.blobs:
                raise ConfigError(f"layer {entry.layer!r} reads {value!r}, which has no threshold in the table")
            if value not in quantized:
                quantized[value] = _fake_quantizer(em, graph, value, table, converted, spec, feed_inputs,
                                                   per_channel)
            for node_name in record.nodes:
                node = node_by_name[node_name]
                for i, inp in enumerate(node.input):
                    if inp == value:
                        node.input[i] = quantized[value]
        value = entry.input_value
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
                 tuple(sorted(per_channel)), spec)
    return Int8Graph(replace(converted, model=model), feed_inputs, per_channel, biases, spec, structure)


def _fake_quantizer(em: _Emitter, graph, value: str, table: CalibrationTable, converted: ConvertedModel, spec,
                    feed_inputs: dict[str, list[str]], per_channel: dict[str, int]) -> str:
    """Nodes computing clip(round(x / s), lo, hi) * s for `value`, reading the fed scale and bounds."""
    blob = table.blobs[value]
    shape = converted.shapes[value]
    levels = spec.umax if blob.unsigned else spec.qmax
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
        zero_dtype = np.uint8 if blob.unsigned else np.int8
        if channels is None:
            clipped = em.node("Clip", [value, LOW + value, HIGH + value], value)
            zero = em.const_typed(value, np.zeros((), zero_dtype))
            attrs = {}
        else:
            clipped = em.node("Max", [em.node("Min", [value, HIGH + value], value), LOW + value], value)
            zero = em.const_typed(value, np.zeros(channels, zero_dtype))
            attrs = {"axis": 1}
        # Clipping to [-T, T] first keeps QuantizeLinear off -128, so this equals the formula exactly.
        q = em.node("QuantizeLinear", [clipped, scale, zero], value, **attrs)
        return em.node("DequantizeLinear", [q, scale, zero], value, **attrs)
    graph.input.append(helper.make_tensor_value_info(scale, TensorProto.FLOAT, bshape))
    feed_inputs[value] = [scale]
    lo = 0.0 if blob.unsigned else -float(levels)
    q = em.round(em.node("Div", [value, scale], value), spec.rounding, value)
    clipped = em.node("Clip", [q, em.const(value, lo), em.const(value, float(levels))], value)
    return em.node("Mul", [clipped, scale], value)


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
