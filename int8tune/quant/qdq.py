"""Export of the int8 model as a QDQ ONNX model that onnxruntime really runs with int8 kernels.

Placement (measured on onnxruntime 1.32; see tests/test_qdq.py): onnxruntime turns DQ -> Conv -> Q into
QLinearConv only when the convolution's own output is quantized. With signed int8, DQ -> Conv -> Relu -> Q stays
an fp32 FusedConv; with DQ -> Conv -> Q -> DQ -> Relu -> Q both convolutions are int8. So, per int8 layer:

- input: QuantizeLinear/DequantizeLinear with the blob's threshold (int8 zero point 0, or uint8 zero point 0 for
  unsigned blobs); one pair per blob, shared by its int8 consumers;
- weights: int8 initializer + DequantizeLinear (per output channel: axis 0 for Conv/Gemm, 1 for MatMul/ConvTranspose);
  bias: int32 initializer at s_in * s_w + DequantizeLinear;
- output: a Q/DQ pair on the layer's output tensor. Its scale is that of the blob the output becomes after any
  in-place ReLU (Q then ReLU equals ReLU then Q for a zero-point-0 quantizer, so this matches the simulation
  exactly), or the output's own calibrated threshold when the output feeds fp32 layers (an extra requantization
  that the simulation does not have: listed in `ExportReport.requantized`), or none when no threshold is known
  (the layer then stays fp32 in onnxruntime: listed in `ExportReport.fp32_in_runtime`).

`count_int8_kernels` loads the model in onnxruntime with default graph optimisation and counts the int8 kernels
(QLinearConv, QGemm, QLinearMatMul, MatMulIntegerToFloat, ConvInteger, ...) of the optimised graph.
"""

from __future__ import annotations

import collections
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from ..convert.converter import ConvertedModel
from ..errors import ConfigError
from .spec import Granularity, WEIGHTED_TYPES
from .table import CalibrationTable
from .weights import from_output_matrix, quantize_matrix, to_output_matrix

INT8_KERNELS = frozenset({"QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat", "ConvInteger",
                          "MatMulInteger", "DynamicQuantizeMatMul", "QAttention"})


@dataclass
class ExportReport:
    int8_layers: list[str] = field(default_factory=list)
    requantized: list[str] = field(default_factory=list)  # layers given an output quantizer not in the simulation
    fp32_in_runtime: list[str] = field(default_factory=list)  # no output threshold: onnxruntime keeps them fp32
    notes: list[str] = field(default_factory=list)


def export_qdq(converted: ConvertedModel, table: CalibrationTable) -> tuple[onnx.ModelProto, ExportReport]:
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
    consumers: dict[str, list] = collections.defaultdict(list)
    for n in nodes:
        for i in n.input:
            consumers[i].append(n)
    graph_outputs = {o.name for o in g.output}
    new_nodes: list = []
    new_inits: list = []
    report = ExportReport()
    qdq_of: dict[str, str] = {}  # tensor -> its dequantized replacement

    def const(name, array):
        new_inits.append(numpy_helper.from_array(array, name))
        return name

    def qdq(tensor: str, threshold: float, unsigned: bool, grid_of: str | None = None) -> str:
        """Q/DQ pair on `tensor` (once); `grid_of` names the blob whose threshold it borrows, for reading."""
        if tensor in qdq_of:
            return qdq_of[tensor]
        levels = spec.umax if unsigned else spec.qmax
        scale = const(f"{tensor}/qdq_scale", np.float32(threshold / levels))
        zp = const(f"{tensor}/qdq_zero", np.uint8(0) if unsigned else np.int8(0))
        q, dq = f"{tensor}/quantized", f"{tensor}/dequantized"
        new_nodes.append(helper.make_node("QuantizeLinear", [tensor, scale, zp], [q], name=q))
        new_nodes.append(helper.make_node("DequantizeLinear", [q, scale, zp], [dq], name=dq))
        qdq_of[tensor] = dq
        return dq

    producer = {o: n for n in nodes for o in n.output}
    dropped: set[str] = set()  # ReLU nodes made redundant by an unsigned quantizer just before them
    for entry in table.quantized_layers():
        record = converted.records[entry.layer]
        for value in (entry.input_value, *entry.extra_inputs):
            blob = table.blobs[value]
            target = _quantization_point(value, record, by_name, producer)
            dq = qdq(target, blob.threshold, blob.unsigned)
            for node_name in record.nodes:
                node = by_name[node_name]
                if target != value and node.output[0] == target:
                    continue  # the layer's own Flatten keeps reading the fp32 value
                for i, inp in enumerate(node.input):
                    if inp == target:
                        node.input[i] = dq
        if record.type not in WEIGHTED_TYPES or not record.weight or entry.weight_thresholds is None:
            continue
        main = by_name[record.main_node]
        blob = table.blobs[entry.input_value]
        s_in = np.float32(blob.threshold / (spec.umax if blob.unsigned else spec.qmax))
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
            bias = numpy_helper.to_array(inits[record.bias]).astype(np.float64)
            b_scale = (s_in * (s_w if per_channel else np.full(bias.size, s_w[0]))).astype(np.float32)
            bq = np.clip(np.round(bias / b_scale), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
            bqn = const(f"{record.bias}/int32", bq)
            bsn = const(f"{record.bias}/scale", b_scale)
            bzn = const(f"{record.bias}/zero", np.zeros(bias.size, np.int32))
            b_dq = f"{record.bias}/dequantized"
            new_nodes.append(helper.make_node("DequantizeLinear", [bqn, bsn, bzn], [b_dq], name=b_dq, axis=0))
            for n in (by_name[x] for x in record.nodes):
                for i, inp in enumerate(n.input):
                    if inp == record.bias:
                        n.input[i] = b_dq
        _quantize_output(entry.layer, main, record, table, consumers, graph_outputs, qdq, report, dropped)
        report.int8_layers.append(entry.layer)

    if dropped:
        report.notes.append(f"{len(dropped)} ReLU(s) after unsigned quantizers became identities")
    _dequantized_graph_outputs(nodes + new_nodes, graph_outputs, qdq_of)
    more_nodes, more_inits = _unique_quantizers(nodes + new_nodes, graph_outputs, {t.name: t for t in new_inits})
    new_nodes += more_nodes
    new_inits += more_inits
    g.ClearField("node")
    from .simulate import _toposort

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


# Ops that commute with a zero-point-0 quantizer of one scale: quantizing before them or after them gives the same
# numbers (Relu: q(relu(x)) = relu(q(x)); Concat with one scale for all inputs; max pooling; pure data movement).
TRANSPARENT_OPS = frozenset({"Relu", "Concat", "MaxPool", "Identity", "Flatten", "Reshape", "Transpose"})


def _downstream_entry(out: str, table, consumers, graph_outputs):
    """The first quantized blob reached from `out` through transparent ops only (each tensor on the way read by
    that single op), and whether a Relu was passed; (None, False) when there is none."""
    active = set(table.active_blobs())
    tensor, relu = out, False
    for _ in range(64):
        if tensor in active:
            return table.blobs[tensor], relu
        readers = consumers.get(tensor, [])
        if tensor in graph_outputs or len(readers) != 1 or readers[0].op_type not in TRANSPARENT_OPS:
            return None, relu
        relu = relu or readers[0].op_type == "Relu"
        tensor = readers[0].output[0]
    return None, relu


def _quantize_output(layer, main, record, table, consumers, graph_outputs, qdq, report: ExportReport,
                     dropped: set[str]) -> None:
    """Give the layer's output a quantizer so that onnxruntime can fuse the layer into an int8 kernel.

    Preferably with the threshold of the quantized blob it flows into through transparent ops (ReLU, Concat,
    max pooling, reshapes): the quantizer then lands on the grid the simulation uses anyway and adds no error.
    Otherwise the output's own calibrated threshold (an extra requantization, reported), or none (fp32 in
    onnxruntime, reported)."""
    out = main.output[0]
    entry, relu = _downstream_entry(out, table, consumers, graph_outputs)
    if entry is not None:
        # An unsigned quantizer clips negatives, which only a ReLU on the way makes harmless.
        unsigned = entry.unsigned and (relu or entry.value == out)
        if entry.unsigned and not unsigned:
            report.requantized.append(layer)
        dq = qdq(out, entry.threshold, unsigned, entry.value)
        _rewire(out, dq, consumers)
        readers = consumers.get(out, [])
        if unsigned and len(readers) == 1 and readers[0].op_type == "Relu" and readers[0].output[0] not in graph_outputs:
            # The unsigned quantizer already clips at 0: the ReLU is the identity on its output. Dropping it lets
            # onnxruntime chain int8 kernels (a DQ -> Relu -> Q left between them stays in fp32).
            readers[0].op_type = "Identity"  # onnxruntime removes it, and with it the DQ -> Q pair around it
            dropped.add(readers[0].name)
        return
    if out in table.blobs:
        _rewire(out, qdq(out, table.blobs[out].threshold, table.blobs[out].unsigned), consumers)
        report.requantized.append(layer)
        return
    readers = consumers.get(out, [])
    if len(readers) == 1 and readers[0].op_type == "Relu" and readers[0].output[0] in table.blobs:
        entry = table.blobs[readers[0].output[0]]
        _rewire(out, qdq(out, entry.threshold, entry.unsigned), consumers)
        report.requantized.append(layer)
        return
    report.fp32_in_runtime.append(layer)


def _dequantized_graph_outputs(all_nodes: list, graph_outputs: set[str], qdq_of: dict[str, str]) -> None:
    """A graph output that got a quantizer is served by its DequantizeLinear under the original name: onnxruntime
    does not fuse a node whose output is a graph output, and users read the int8 model's outputs by name."""
    for out in graph_outputs & set(qdq_of):
        fp32_name, dq = f"{out}/fp32", qdq_of[out]
        for n in all_nodes:
            for i, o in enumerate(n.output):
                if o == out:
                    n.output[i] = fp32_name
                elif o == dq:
                    n.output[i] = out
            for i, inp in enumerate(n.input):
                if inp == out:
                    n.input[i] = fp32_name
                elif inp == dq:
                    n.input[i] = out


def _unique_quantizers(all_nodes: list, graph_outputs: set[str], inits: dict[str, onnx.TensorProto]
                       ) -> tuple[list, list]:
    """One QuantizeLinear/DequantizeLinear pair, with its own scale and zero-point initializers, per consumer.

    Measured on onnxruntime 1.32: a Q whose DQ output feeds two convolutions (SqueezeNet's expand layers share
    the squeeze output) leaves both in fp32, and identical Q nodes are merged back by common-subexpression
    elimination unless their scale/zero-point initializers are distinct. Same values, so same arithmetic."""
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
            extra_inits.append(_renamed(inits[q.input[1]], scale))
            extra_inits.append(_renamed(inits[q.input[2]], zero))
            extra_nodes.append(helper.make_node("QuantizeLinear", [q.input[0], scale, zero], [f"{stem}/q"],
                                                name=f"{stem}/quantize"))
            extra_nodes.append(helper.make_node("DequantizeLinear", [f"{stem}/q", scale, zero], [stem],
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


def _rewire(tensor: str, replacement: str, consumers) -> None:
    """Every reader of `tensor` reads its dequantized image instead (its own QuantizeLinear excepted)."""
    for n in consumers.get(tensor, []):
        if n.op_type == "QuantizeLinear" and n.name == f"{tensor}/quantized":
            continue
        for i, inp in enumerate(n.input):
            if inp == tensor:
                n.input[i] = replacement


def _drop_unused_initializers(g) -> None:
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    g.ClearField("initializer")
    g.initializer.extend(keep)


def count_int8_kernels(model: onnx.ModelProto, threads: int = 1) -> tuple[int, collections.Counter]:
    """Number of int8 kernels in onnxruntime's optimised graph (default optimisation), and all op counts."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optimised.onnx"
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(path)
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
        optimised = onnx.load(str(path))
    ops = collections.Counter(n.op_type for n in optimised.graph.node)
    return sum(ops[k] for k in INT8_KERNELS), ops
