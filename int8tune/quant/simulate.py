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
from .emit import ADD_A, ADD_B, ADD_FIXED, BIAS, HIGH, LOW, MULT, PRIVATE, SCALE, _Emitter
from .integer import (
    IntegerAdd,
    IntegerLayer,
    integer_add,
    integer_add_candidates,
    integer_candidates,
    integer_layer,
    level_quantizer,
    steps_of,
)
from .placement import Placement, place_quantizers
from .spec import WEIGHTED_TYPES, BiasMode, Rounding
from .table import CalibrationTable
from .weights import fake_quantize_weights, quantize_bias


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
            levels = np.float32(entry.levels(spec))
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
                    low = (np.zeros_like(t) if entry.unsigned
                           else (t / levels * np.float32(spec.qmin)).astype(np.float32))
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
            out[ADD_FIXED + add.layer] = np.asarray(
                np.float32(zc - np.float32(np.float32(r_a * za) + np.float32(r_b * zb))), dtype=np.float32)
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

    def frozen_model(self, table: CalibrationTable) -> ConvertedModel:
        """The int8 model of exactly `table` as a ConvertedModel (thresholds frozen in): what an Engine runs for a
        whole-model evaluation, here or shipped to the workers of an executor."""
        return replace(self.converted, model=self.frozen(table))


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
    adds = integer_add_candidates(converted, table, placement, node_by_name) if integer else {}
    integer = integer_candidates(converted, table, placement, node_by_name) if integer else {}
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
                level_quantizer(em, steps_of(point.layer), point.grid, table, spec, output_name=point.tensor)
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
            add = integer_add(em, graph, node_by_name[record.nodes[0]], entry, adds[entry.layer], table)
            integer_adds.append(add)
            for grid in dict.fromkeys((add.a, add.b, add.out)):
                feed_inputs[grid] += [ADD_A + add.layer, ADD_B + add.layer, ADD_FIXED + add.layer]
            continue
        if entry.layer in integer:
            layer = integer_layer(em, graph, record, entry, inits, node_by_name, spec, integer[entry.layer], converted)
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
    levels = blob.levels(spec)
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
