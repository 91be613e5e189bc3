"""Layers simulated in onnxruntime's integer arithmetic (the onnxruntime targets), so that the simulation computes
what the exported file computes, bit for bit (tests/test_deployed.py):

- a convolution or inner product with an output point (onnxruntime fuses it into QLinearConv/QGemm): the int32
  sum of integer inputs, weights and bias (exact in float32 below 2^24), times the requantization multiplier
  (s_in * s_w) / s_out in float32, rounded half to even at its output point;
- an Eltwise sum with an output point (QLinearAdd): MLAS's fused multiply-adds on the stored bytes.

Computed in float on dequantized values instead, roundings flip now and then and the flips grow with depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..convert.converter import ConvertedModel
from .emit import ADD_A, ADD_B, ADD_FIXED, BIAS, MULT, PRIVATE, SCALE, _Emitter
from .placement import Placement
from .spec import BiasMode, Rounding
from .table import CalibrationTable
from .weights import from_output_matrix, quantize_matrix, to_output_matrix


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


def integer_candidates(converted: ConvertedModel, table: CalibrationTable, placement: Placement,
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


def integer_add_candidates(converted: ConvertedModel, table: CalibrationTable, placement: Placement,
                            node_by_name) -> dict[str, str]:
    """Eltwise layers simulated as onnxruntime's QLinearAdd (layer -> output grid): one binary Add whose inputs
    are the layer's two quantized blobs, with an output point (onnxruntime fuses DQ, DQ -> Add -> Q)."""
    spec = table.spec
    if (not spec.target.onnxruntime or spec.granularity.activations_per_channel
            or spec.rounding is not Rounding.HALF_EVEN):
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


def integer_add(em: _Emitter, graph, node, entry, output_grid: str, table: CalibrationTable) -> IntegerAdd:
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
                                     [steps_of(layer)], name=f"{layer}/steps"))
    return IntegerAdd(layer, a, b, output_grid, zps)


def integer_layer(em: _Emitter, graph, record, entry, inits, node_by_name, spec, output_value: str,
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
    em.nodes.append(helper.make_node("Mul", [acc, MULT + layer], [steps_of(layer)], name=f"{layer}/requantize"))
    # the layer's own output in its units (what reports compare with fp32); the output point reads the steps
    em.nodes.append(helper.make_node("Mul", [steps_of(layer), SCALE + output_value], [written],
                                     name=f"{layer}/in_units"))
    return IntegerLayer(layer, value, output_value, bias, s_w.astype(np.float32), mult_shape)


def steps_of(layer: str) -> str:
    return f"{layer}/steps"


def level_quantizer(em: _Emitter, tensor: str, value: str, table: CalibrationTable, spec, output_name: str) -> str:
    """The output point of an integer layer: its input is already in steps (sum x multiplier), so round half to
    even, clip to the levels and multiply by the scale: onnxruntime's requantization, then its dequantization."""
    blob = table.blobs[value]
    low, high = (0.0, float(spec.umax)) if blob.unsigned else (float(spec.qmin), float(spec.qmax))
    levels = em.node("Clip", [em.node("Round", [tensor], value), em.const(value, low), em.const(value, high)], value)
    em.nodes.append(helper.make_node("Mul", [levels, SCALE + value], [output_name], name=em.name(f"{value}/Mul")))
    return output_name
