"""Where the int8 model quantizes: one decision shared by the simulation (simulate.py) and the export (qdq.py).

Both build their graph from the same `Placement`, so what test.sh, tune.sh and main.sh score is, quantizer for
quantizer, what the exported QDQ model computes (the "one model" rule). A quantizer on a tensor replaces it by
clip(round(x / s), lo, hi) * s, with s the threshold of its *grid* blob over 127 (or 255 when unsigned).

- **Input points**: the blob each int8 layer reads (its own threshold), read quantized by that layer's nodes.
- **Output points**: the output of each int8 weighted layer (Convolution, InnerProduct, ...), so that an int8
  engine writes it in int8 and the next int8 layer reads it without a float round trip:
  * placed after the ReLUs that follow the layer when its grid is unsigned (onnxruntime then fuses
    Conv -> Relu -> QuantizeLinear(uint8, zero point 0) into one QLinearConv and drops the Relu), on the layer's
    own output otherwise (Conv -> QuantizeLinear(int8) fuses; a signed quantizer commutes with ReLU);
  * with the grid of the quantized blob the output flows into through ops that commute with a quantizer of one
    scale (ReLU, max pooling, nearest upsampling, Concat, reshapes): quantizing before them or after them gives the
    same numbers, and the engine keeps them in int8 (MaxPool/Resize run on uint8, Concat of one scale is a copy);
  * else with the output's own calibrated threshold (calibration collects it), for instance a YOLO head or a
    convolution feeding an Eltwise sum;
  * none when a layer that stays fp32 (ignored, fallen back) reads it: that layer reads float, so the producer
    writes float (reported in `Placement.float_outputs`).
  An output point is read quantized by every reader, graph outputs included: the blob is int8 in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from ..convert.converter import ConvertedModel
from .spec import WEIGHTED_TYPES
from .table import CalibrationTable

# ONNX ops after which a quantizer of one scale gives the same numbers as before them (zero point 0): max(q(x))
# = q(max(x)) for a monotonic rounding, relu(q(x)) = q(relu(x)), data movement does not change values.
TRANSPARENT_OPS = frozenset({"Relu", "Concat", "MaxPool", "Identity", "Flatten", "Reshape", "Transpose", "Squeeze",
                             "Unsqueeze"})
# Int8 layers whose output gets a quantizer of its own (an int8 engine writes it in int8): the weighted ones, and
# Eltwise (onnxruntime's QLinearAdd).
OUTPUT_TYPES = WEIGHTED_TYPES | {"Eltwise"}
# Ops whose output is >= 0 whatever their input, and ops that keep an input's sign.
_NONNEGATIVE_OPS = frozenset({"Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Softplus"})
_SIGN_KEEPING_OPS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Concat", "Identity",
                               "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Resize", "Add", "Sum",
                               "Max", "Slice", "Split", "Mul", "Tile", "Pad"})


@dataclass(frozen=True)
class QuantPoint:
    tensor: str  # the ONNX tensor that is quantized
    grid: str  # the table blob (value) whose threshold and sign give the scale
    unsigned: bool
    layer: str  # the layer it serves: the reader (input point) or the writer (output point)
    readers: tuple[str, ...] | None  # node names that read the quantized tensor; None: every reader
    kind: str = "input"  # "input", "output" (right after `layer` and its ReLUs) or "carried" (through an op)

    @property
    def is_output(self) -> bool:
        return self.readers is None


@dataclass
class Placement:
    points: list[QuantPoint] = field(default_factory=list)
    output_grid: dict[str, str] = field(default_factory=dict)  # int8 weighted layer -> its output point's grid
    float_outputs: dict[str, str] = field(default_factory=dict)  # int8 weighted layer -> why it writes float

    def grids(self) -> list[str]:
        """Every blob whose threshold the int8 model uses, in graph order (what tuning moves)."""
        return list(dict.fromkeys(p.grid for p in self.points))

def place_quantizers(converted: ConvertedModel, table: CalibrationTable) -> Placement:
    graph = converted.model.graph
    nodes = list(graph.node)
    node_by_name = {n.name: n for n in nodes}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in graph.output}
    layer_of_node = {name: layer for layer, r in converted.records.items() for name in r.nodes}
    fp32_layers = {e.layer for e in table.layers.values() if not e.int8}
    active = set(table.active_blobs())
    per_channel = table.spec.granularity.activations_per_channel
    placement = Placement()
    taken: dict[str, int] = {}  # tensor -> index of its point

    for entry in table.quantized_layers():
        record = converted.records[entry.layer]
        for value in (entry.input_value, *entry.extra_inputs):
            readers = tuple(n for n in record.nodes if value in node_by_name[n].input)
            if value in taken:
                old = placement.points[taken[value]]
                if old.readers is not None:
                    placement.points[taken[value]] = QuantPoint(old.tensor, old.grid, old.unsigned, old.layer,
                                                                old.readers + readers, old.kind)
                continue
            taken[value] = len(placement.points)
            placement.points.append(QuantPoint(value, value, table.blobs[value].unsigned, entry.layer, readers))
        if per_channel or entry.type not in OUTPUT_TYPES or not record.outputs:
            continue
        out = _output_point(entry.layer, record.outputs[0], table, active, consumers, graph_outputs,
                            layer_of_node, fp32_layers)
        if isinstance(out, str):
            placement.float_outputs[entry.layer] = out
            continue
        placement.output_grid[entry.layer] = out.grid
        if out.tensor in taken:  # an input point on the same tensor has the same grid: it becomes an output point
            placement.points[taken[out.tensor]] = out
        else:
            taken[out.tensor] = len(placement.points)
            placement.points.append(out)
    if not per_channel:
        _carry_forward(nodes, placement, taken, graph_outputs)
    return placement


def _carry_forward(nodes, placement: Placement, taken: dict[str, int], graph_outputs: set[str]) -> None:
    """Grids carried through transparent ops: the output of a max pooling (nearest upsampling, reshape, ReLU,
    Concat of one grid) whose input is quantized for every reader gets a point on the same grid. It changes no
    number (the values are on that grid already) and lets the engine run the op on int8 instead of between a
    dequantize and a requantize (yolov3's SPP max poolings and upsampling)."""
    for node in nodes:  # graph order is topological
        if not _transparent(node) or not node.output or node.output[0] in taken or node.output[0] in graph_outputs:
            continue
        data = [i for i in node.input[:1 if node.op_type not in ("Concat",) else None] if i]
        points = [placement.points[taken[i]] if i in taken else None for i in data]
        if not points or any(p is None or not (p.is_output or node.name in p.readers) for p in points):
            continue
        if len({p.grid for p in points}) != 1:
            continue
        first = points[0]
        taken[node.output[0]] = len(placement.points)
        placement.points.append(QuantPoint(node.output[0], first.grid, first.unsigned, first.layer, None, "carried"))


def _output_point(layer: str, out: str, table, active, consumers, graph_outputs, layer_of_node,
                  fp32_layers) -> QuantPoint | str:
    """The output point of an int8 weighted layer writing `out`, or the reason it writes float."""
    chain_end = relu_chain_end(out, consumers, graph_outputs)
    grid = downstream_grid(chain_end, active, consumers, graph_outputs)
    if grid is None:
        grid = next((v for v in (chain_end, out) if v in table.blobs), None)
    if grid is None:
        return "no threshold for its output (calibrate again to collect it)"
    unsigned = table.blobs[grid].unsigned
    tensor = chain_end if unsigned else out
    for reader in consumers.get(tensor, []):
        owner = layer_of_node.get(reader.name)
        if owner in fp32_layers:
            return f"read by fp32 layer {owner}"
    return QuantPoint(tensor, grid, unsigned, layer, None, "output")


def relu_chain_end(out: str, consumers, graph_outputs) -> str:
    """The tensor after the ReLUs right after a layer's output (in-place ReLU layers write new versions)."""
    for _ in range(8):
        readers = consumers.get(out, [])
        if out in graph_outputs or len(readers) != 1 or readers[0].op_type != "Relu":
            break
        out = readers[0].output[0]
    return out


def own_output_values(converted: ConvertedModel, layers: list[tuple[str, str]], read_by_int8: set[str]) -> list[str]:
    """The outputs of int8 layers ((name, Caffe type)) that need a threshold of their own: those of weighted layers
    and Eltwise sums that do not flow, through transparent ops, into a blob an int8 layer reads (whose threshold
    they share). The value is the one after the layer's ReLUs, where its quantizer sits. Calibration collects
    statistics for these; `place_quantizers` then finds them in the table."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in converted.model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in converted.model.graph.output}
    out: list[str] = []
    for layer, type_ in layers:
        record = converted.records[layer]
        if type_ not in OUTPUT_TYPES or not record.outputs:
            continue
        end = relu_chain_end(record.outputs[0], consumers, graph_outputs)
        if downstream_grid(end, read_by_int8, consumers, graph_outputs) is None:
            out.append(end)
    return list(dict.fromkeys(out))


def downstream_grid(tensor: str, active, consumers, graph_outputs) -> str | None:
    """The first quantized blob reached from `tensor` through transparent ops, each tensor on the way read by
    that one op only."""
    for _ in range(64):
        if tensor in active:
            return tensor
        readers = consumers.get(tensor, [])
        if tensor in graph_outputs or len(readers) != 1 or not _transparent(readers[0]):
            return None
        tensor = readers[0].output[0]
    return None


def _transparent(node: onnx.NodeProto) -> bool:
    if node.op_type == "Resize":  # nearest neighbour copies values; linear interpolation makes new ones
        return any(a.name == "mode" and a.s == b"nearest" for a in node.attribute)
    return node.op_type in TRANSPARENT_OPS


def nonnegative_values(converted: ConvertedModel) -> set[str]:
    """Tensors that cannot be negative whatever the input image: outputs of ReLU-like ops, and of ops that keep
    the sign of inputs that are all non-negative (max/average pooling, Concat, sums, reshapes, nearest or linear
    resizing). A blob that merely happened to be >= 0 on the calibration images is not in it: an unsigned
    quantizer would clip it to 0 on other images."""
    out: set[str] = set()
    for node in converted.model.graph.node:  # graph order is topological
        data_inputs = [i for i in node.input[:1 if node.op_type in ("Resize", "Reshape", "Slice", "Split", "Tile",
                                                                   "Pad", "Squeeze", "Unsqueeze") else None] if i]
        if node.op_type in _NONNEGATIVE_OPS:
            out.update(node.output)
        elif node.op_type == "Clip" and len(node.input) > 1 and node.input[1]:
            low = _constant(converted.model, node.input[1])
            if low is not None and low >= 0:
                out.update(node.output)
        elif node.op_type in _SIGN_KEEPING_OPS and data_inputs and all(i in out for i in data_inputs):
            out.update(node.output)
    return out


def _constant(model: onnx.ModelProto, name: str) -> float | None:
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.name == name:
            a = numpy_helper.to_array(t)
            return float(a.min()) if a.size else None
    return None
