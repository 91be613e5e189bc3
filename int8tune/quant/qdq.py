"""Export of the int8 model as a QDQ ONNX model that onnxruntime runs with int8 kernels.

The quantizers are where `placement.place_quantizers` puts them, the same points the simulation fake-quantizes,
so the file computes what the tool measured (a QuantizeLinear/DequantizeLinear pair per point, with the grid's
scale; int8 weights with per-channel or per-tensor scales; int32 biases at s_in * s_w). The placement is the one
int8 engines run fastest: each convolution's output quantized after its ReLU (uint8 with zero point 0, which
onnxruntime fuses into QLinearConv), max pooling, nearest upsampling and Concat on one grid (run on uint8), sums
quantized on both inputs and the output (QLinearAdd). What onnxruntime makes of the file: quant/census.py.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..convert.converter import ConvertedModel
from ..errors import ConfigError
from .placement import place_quantizers
from .simulate import _toposort
from .spec import WEIGHTED_TYPES, Granularity
from .table import CalibrationTable
from .weights import from_output_matrix, quantize_bias, quantize_matrix, to_output_matrix


@dataclass
class ExportReport:
    int8_layers: list[str] = field(default_factory=list)
    fp32_in_runtime: dict[str, str] = field(default_factory=dict)  # int8 layer -> why its output stays float
    notes: list[str] = field(default_factory=list)


def export_qdq(converted: ConvertedModel, table: CalibrationTable) -> tuple[onnx.ModelProto, ExportReport]:
    """The int8 model as QDQ ONNX: a QuantizeLinear/DequantizeLinear pair at every point of `place_quantizers`
    (the points the simulation fake-quantizes), int8 weights and int32 biases behind DequantizeLinear."""
    spec = table.spec
    if spec.granularity is Granularity.PER_CHANNEL:
        raise ConfigError("QDQ export needs per-tensor activation thresholds (granularity mix or per_tensor); "
                          "per-channel activation quantizers are exactly what onnxruntime cannot run as int8")
    model = onnx.ModelProto()
    model.CopyFrom(converted.model)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    nodes = list(g.node)
    by_name = {n.name: n for n in nodes}
    producer = {o: n for n in nodes for o in n.output}
    new_nodes: list = []
    new_inits: list = []
    report = ExportReport()
    placement = place_quantizers(converted, table)

    def const(name, array):
        new_inits.append(numpy_helper.from_array(array, name))
        return name

    def qdq(tensor: str, grid: str, out_name: str | None = None) -> str:
        blob = table.blobs[grid]
        stem = out_name or tensor
        scale = const(f"{stem}/qdq_scale", blob.scale(spec))
        # Signed blobs as uint8 with zero point 128 (the same grid): onnxruntime would rewrite int8 to that anyway
        # (QDQS8ToU8Transformer), but only for a Q with a single DQ, which left such convolutions in float.
        zp = const(f"{stem}/qdq_zero", np.uint8(0 if blob.unsigned else 128))
        q, dq = f"{stem}/quantized", out_name or f"{stem}/dequantized"
        new_nodes.append(helper.make_node("QuantizeLinear", [tensor, scale, zp], [q], name=q))
        new_nodes.append(helper.make_node("DequantizeLinear", [q, scale, zp], [dq], name=f"{stem}/dequantize"))
        return dq

    for point in placement.points:
        if point.is_output:
            private = f"{point.tensor}/fp32"
            for n in nodes:
                for i, o in enumerate(n.output):
                    if o == point.tensor:
                        n.output[i] = private
            qdq(private, point.grid, out_name=point.tensor)
            continue
        record = converted.records[point.layer]
        target = _quantization_point(point.tensor, record, by_name, producer)
        dq = qdq(target, point.grid) if target == point.tensor else qdq(target, point.grid,
                                                                       out_name=f"{target}/dequantized")
        for node_name in record.nodes if target != point.tensor else point.readers:
            node = by_name[node_name]
            if target != point.tensor and node.output[0] == target:
                continue  # the layer's own Flatten keeps reading the float value
            for i, inp in enumerate(node.input):
                if inp == target:
                    node.input[i] = dq
    report.fp32_in_runtime = dict(placement.float_outputs)

    for entry in table.quantized_layers():
        record = converted.records[entry.layer]
        if record.type not in WEIGHTED_TYPES or not record.weight or entry.weight_thresholds is None:
            continue
        main = by_name[record.main_node]
        blob = table.blobs[entry.input_value]
        s_in = blob.scale(spec)
        group = next((a.i for a in main.attribute if a.name == "group"), 1)
        weight = numpy_helper.to_array(inits[record.weight])
        q, s_w = quantize_matrix(to_output_matrix(weight, main.op_type, group), entry.weight_thresholds,
                                 spec.rounding, spec.qmax)
        per_channel = spec.granularity.weights_per_channel
        axis = 1 if main.op_type in ("MatMul", "ConvTranspose") else 0
        if main.op_type == "ConvTranspose" and group > 1 and per_channel:
            raise ConfigError(f"layer {entry.layer!r}: per-channel weights of a grouped Deconvolution have no QDQ "
                              f"form (the output-channel axis is split across groups); use --granularity per_tensor")
        q_layout = from_output_matrix(q, weight, main.op_type, group).astype(np.int8)
        wq = const(f"{record.weight}/int8", q_layout)
        if per_channel:
            ws = const(f"{record.weight}/scale", s_w.astype(np.float32))
            wz = const(f"{record.weight}/zero", np.zeros(s_w.shape, np.int8))
            attrs = {"axis": axis}
        else:
            ws = const(f"{record.weight}/scale", np.float32(s_w[0]))
            wz = const(f"{record.weight}/zero", np.int8(0))
            attrs = {}
        w_dq = f"{record.weight}/dequantized"
        new_nodes.append(helper.make_node("DequantizeLinear", [wq, ws, wz], [w_dq], name=w_dq, **attrs))
        for i, inp in enumerate(main.input):
            if inp == record.weight:
                main.input[i] = w_dq
        if record.bias is not None:
            bias = numpy_helper.to_array(inits[record.bias]).astype(np.float32).reshape(-1)
            bq, b_scale = quantize_bias(bias, s_in, s_w if per_channel else np.full(bias.size, s_w[0]),
                                        spec.rounding)
            bq = bq.astype(np.int32)
            bqn = const(f"{record.bias}/int32", bq)
            bsn = const(f"{record.bias}/scale", b_scale)
            bzn = const(f"{record.bias}/zero", np.zeros(bias.size, np.int32))
            b_dq = f"{record.bias}/dequantized"
            new_nodes.append(helper.make_node("DequantizeLinear", [bqn, bsn, bzn], [b_dq], name=b_dq, axis=0))
            for n in (by_name[x] for x in record.nodes):
                for i, inp in enumerate(n.input):
                    if inp == record.bias:
                        n.input[i] = b_dq
        report.int8_layers.append(entry.layer)

    graph_outputs = {o.name for o in g.output}
    more_nodes, more_inits = _unique_quantizers(nodes + new_nodes, graph_outputs, {t.name: t for t in new_inits})
    new_nodes += more_nodes
    new_inits += more_inits
    g.ClearField("node")
    g.initializer.extend(new_inits)
    g.node.extend(_toposort(nodes + new_nodes, g))
    _drop_unused_initializers(g)
    model.producer_name = "int8tune-qdq"
    return model, report


def _quantization_point(value: str, record, by_name, producer) -> str:
    """Where a layer's input quantizer goes: on the value, or after the layer's own Flatten/Reshape when that
    feeds the main node (InnerProduct on a 4-D blob), because onnxruntime fuses only DQ directly before Gemm.
    Flattening does not change values, so the quantized numbers are the same."""
    if record.main_node is None:
        return value
    first = by_name[record.main_node].input[0]
    pre = producer.get(first)
    if pre is not None and pre.name in record.nodes and pre.op_type in ("Flatten", "Reshape") and pre.input[0] == value:
        return first
    return value


def _unique_quantizers(all_nodes: list, graph_outputs: set[str], inits: dict[str, onnx.TensorProto]
                       ) -> tuple[list, list]:
    """One DequantizeLinear, with its own scale and zero-point initializers, per consumer of a quantized tensor.

    Measured on onnxruntime 1.32: a DQ that feeds two convolutions (SqueezeNet's expand layers share the squeeze
    output) leaves both in fp32, and identical DQ nodes are merged back by common-subexpression elimination
    unless their initializers are distinct. The QuantizeLinear stays single: a Conv -> Relu -> Q is fused into
    one QLinearConv only when that Q is the Relu's only reader. Same values, so same arithmetic."""
    readers: dict[str, list] = collections.defaultdict(list)
    for n in all_nodes:
        for i in n.input:
            readers[i].append(n)
    producer = {o: n for n in all_nodes for o in n.output}
    extra_nodes, extra_inits = [], []
    for dq in [n for n in all_nodes if n.op_type == "DequantizeLinear"]:
        q = producer.get(dq.input[0])
        users = readers.get(dq.output[0], [])
        if q is None or q.op_type != "QuantizeLinear" or len(users) < 2 or dq.output[0] in graph_outputs:
            continue
        for k, user in enumerate(users[1:], 1):
            stem = f"{dq.output[0]}/{k}"
            scale, zero = f"{stem}/scale", f"{stem}/zero"
            extra_inits.append(_renamed(inits[dq.input[1]], scale))
            extra_inits.append(_renamed(inits[dq.input[2]], zero))
            extra_nodes.append(helper.make_node("DequantizeLinear", [dq.input[0], scale, zero], [stem],
                                                name=f"{stem}/dequantize"))
            for i, inp in enumerate(user.input):
                if inp == dq.output[0]:
                    user.input[i] = stem
    return extra_nodes, extra_inits


def _renamed(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    out = onnx.TensorProto()
    out.CopyFrom(tensor)
    out.name = name
    return out


def _drop_unused_initializers(g) -> None:
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    g.ClearField("initializer")
    g.initializer.extend(keep)


