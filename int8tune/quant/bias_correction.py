"""Empirical bias correction (`--bias_correction`): each int8 layer's bias minus the mean of its int8 error.

Quantizing weights and inputs shifts the mean of a layer's output: E[W~ x~] != E[W x] per output channel, and a
shifted mean passes through ReLUs and pooling into everything downstream (Nagel et al., DFQ, ICCV 2019, section
4.2; Finkelstein et al., 2019). The empirical correction measures the shift on the calibration images,

    delta_c = E[y_int8_c - y_fp32_c]  (over images and positions, y before the activation)

and subtracts it from the bias of channel c. Layers are corrected one by one from the input side, each measured
with the layers upstream already corrected and quantized, so a correction also absorbs what the upstream
corrections left. y_int8 is what the simulation computes (quant/simulate.build_int8_graph, the integer path of
the onnxruntime targets): the bias there is already the int32 bias the export writes, round(b / (s_in * s_w)), so
the measured shift includes its rounding, and the corrected bias is rounded the same way again: what is left of
the mean error is at most half a step of the int32 bias, s_in * s_w / 2 per channel. y_fp32 comes from
`reference`, the fp32 model the user gave (with --adaround the int8 weights differ from it, and the correction
removes the mean of that difference too).

The correction depends on the table (its thresholds set s_in and the rounding); calibrate computes it with the
table it delivers.

The int8 graph is run once from the input side, not once per layer: a session of the whole prefix per layer cost
O(L^2) (13 of the 18 s on yolov3_nano_voc). The tensors computed so far, under the biases corrected so far, are
carried per chunk of images (_CarriedPrefix): a layer's segment holds only the nodes between those tensors and
its output, and starts from them. Correcting a layer makes stale every carried tensor computed from its bias (its
own output among them), so the next segment runs its convolution again from the carried input: every node runs
at most twice. A tensor is kept only while a node that will run again reads it (yolov3_nano_voc, 14 images: at
most 66 MiB carried). Each segment has every threshold and the biases corrected so far frozen in as constants
(a fed bias is 3x slower on yolov3_nano_voc: onnxruntime's fp32 optimisations need a constant); a static bias
(--bias fp32, per-channel activations) is written into a copy of the graph. The simulation sessions run at
ORT_ENABLE_EXTENDED, where every cut of a table's graph computes the same bits (runtime.session_options), and
the chunks of images are those of the per-layer prefixes: the corrected biases are bit for bit those of a
prefix per layer (_WholePrefixes, kept as the reference tests/test_bias_correction.py compares with), 3.7x
(squeezenet_v1.0) to 7.6x (yoloface_500k_v2) faster on the shared models.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..convert.converter import ConvertedModel
from ..progress import Progress
from ..runtime import Engine, GraphSession, input_feeds, needed_for
from .emit import BIAS, PRIVATE
from .simulate import Int8Graph, build_int8_graph
from .table import CalibrationTable
from .weights import quantize_bias

CHUNK = 4  # images per run: every corrected layer's output comes back at once


@dataclass(frozen=True)
class CorrectedLayer:
    layer: str
    shift: np.ndarray  # (M,) float32 subtracted from the (folded) bias, in the layer's output units
    residual: np.ndarray | None = None  # (M,) the mean int8 error left, measured after every layer was corrected
    step: np.ndarray | None = None  # (M,) the int32 bias step s_in * s_w (None when the bias stays fp32)

    def describe(self) -> str:
        text = f"{self.layer}: mean error per channel up to {float(np.abs(self.shift).max()):.3g} removed"
        if self.residual is not None:
            text += f", {float(np.abs(self.residual).max()):.3g} left"
        return text


@dataclass(frozen=True)
class SkippedLayer:
    layer: str
    reason: str


def _channel_axis(shape: tuple[int, ...], op_type: str) -> int:
    return len(shape) - 1 if op_type == "MatMul" else 1


def _means(batches, engine: Engine, tensors: dict[str, str], axes: dict[str, int], feeds=None,
           only: str | None = None) -> dict[str, np.ndarray]:
    """Per layer, the mean over images and positions of each channel of its output tensor (float64)."""
    wanted = [only] if only is not None else list(tensors)
    sums: dict[str, np.ndarray] = {}
    count: dict[str, int] = dict.fromkeys(wanted, 0)
    fetch = list(dict.fromkeys(tensors.values()))  # one session for every run: the same outputs each time
    for chunk in _chunks(batches):
        got = engine.run_tensors(chunk, fetch, extra_feeds=feeds)
        for layer in wanted:
            total, n = _channel_sums(got[tensors[layer]], axes[layer])
            sums[layer] = total + sums.get(layer, 0.0)
            count[layer] += n
    return {layer: sums[layer] / count[layer] for layer in wanted}


def _chunks(batches) -> list[np.ndarray]:
    """The images as every run takes them, CHUNK at a time within each batch: the same chunks, the same sums."""
    return [batch[start:start + CHUNK] for batch in batches for start in range(0, len(batch), CHUNK)]


def _channel_sums(y: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    """The float64 sum of each channel of `y` over images and positions, and how many values each sum holds."""
    # channels first in float32, then float64: the same values in the same order as converting first, so the
    # same sums, and 4x faster on a 64x80x80 output (half the bytes strided)
    y = np.moveaxis(y, axis, 0).reshape(y.shape[axis], -1).astype(np.float64)
    return y.sum(axis=1), y.shape[1]


def _with_biases(graph: Int8Graph, biases: dict[str, np.ndarray]) -> Int8Graph:
    """The same graph fed other biases (the fed bias of the integer layers and of the float int32-bias layers)."""
    return dataclasses.replace(
        graph, integer_layers=[dataclasses.replace(l, bias=biases[l.layer]) if l.layer in biases and l.bias is not None
                               else l for l in graph.integer_layers],
        biases=[dataclasses.replace(b, bias=biases[b.layer]) if b.layer in biases else b for b in graph.biases])


def _bias_scales(graph: Int8Graph, table: CalibrationTable, layer: str) -> tuple[np.float32, np.ndarray] | None:
    """(s_in, s_w) of a layer whose int32 bias the graph feeds, else None (its bias stays float)."""
    spec = table.spec
    for l in graph.integer_layers:
        if l.layer == layer and l.bias is not None:
            return table.blobs[l.input_value].scale(spec), l.weight_scale
    for b in graph.biases:
        if b.layer == layer:
            return table.blobs[b.value].scale(spec), b.weight_scale
    return None


def _fed_step(graph: Int8Graph, table: CalibrationTable, layer: str) -> np.ndarray | None:
    """The int32 bias step s_in * s_w of a layer whose bias the graph feeds, else None."""
    scales = _bias_scales(graph, table, layer)
    return None if scales is None else (scales[0] * scales[1]).astype(np.float32)


def _effective_bias(graph: Int8Graph, table: CalibrationTable, layer: str, bias: np.ndarray) -> np.ndarray:
    """The bias as the int8 model adds it: q_b * s_in * s_w for an int32 bias (quant/weights.quantize_bias, as the
    simulation and the export compute it), else the float bias."""
    scales = _bias_scales(graph, table, layer)
    if scales is None:
        return bias
    q, step = quantize_bias(bias, scales[0], scales[1], table.spec.rounding)
    return (q * step.astype(np.float64)).astype(np.float32)


def correct_biases(converted: ConvertedModel, reference: ConvertedModel, table: CalibrationTable,
                   batches: list[np.ndarray], threads: int = 2, skip: dict[str, str] | None = None
                   ) -> tuple[dict[str, np.ndarray], list[CorrectedLayer | SkippedLayer]]:
    """The corrected bias of every int8 weighted layer of `table` (float32, ONNX layout (M,)), and what was done
    per layer. `converted`: the folded net whose weights the int8 model quantizes; `reference`: the fp32 model
    it is measured against (the same net, maybe other weights); `skip`: layers left alone, with the reason."""
    return _correct_biases(converted, reference, table, batches, threads, skip, carried=True)


def _correct_biases(converted: ConvertedModel, reference: ConvertedModel, table: CalibrationTable,
                    batches: list[np.ndarray], threads: int, skip: dict[str, str] | None, carried: bool
                    ) -> tuple[dict[str, np.ndarray], list[CorrectedLayer | SkippedLayer]]:
    """correct_biases, each layer measured on the carried prefix (`carried`) or on a prefix of its own (the
    reference: O(L^2), the same bits)."""
    skip = skip or {}
    inits = {t.name: t for t in converted.model.graph.initializer}
    nodes = {n.name: n for n in converted.model.graph.node}
    layers, skipped = [], []
    for e in table.quantized_layers():
        record = converted.records[e.layer]
        if e.weight_thresholds is None or not record.weight:
            continue
        if e.layer in skip:
            skipped.append(SkippedLayer(e.layer, skip[e.layer]))
            continue
        if record.bias is None:
            skipped.append(SkippedLayer(e.layer, "no bias to correct (bias_term: false, and no BatchNorm/Scale "
                                                 "folded into it)"))
            continue
        layers.append(e.layer)
    biases = {l: numpy_helper.to_array(inits[converted.records[l].bias]).astype(np.float32).reshape(-1)
              for l in layers}
    graph = build_int8_graph(converted, table)
    outputs = {l: converted.records[l].outputs[0] for l in layers}
    axes = {l: _channel_axis(converted.shapes[outputs[l]], nodes[converted.records[l].main_node].op_type)
            for l in layers}
    # In the int8 graph, a layer whose output is an output point writes its raw (unrounded) output privately.
    tensors = {l: outputs[l] + PRIVATE if outputs[l] + PRIVATE in graph.sources else outputs[l] for l in layers}
    fp32 = _means(batches, Engine(reference, threads=threads), outputs, axes)
    fed = graph.feeds(table)
    # what correcting each layer changes: its fed bias, or the initializer of a static one
    bias_inputs = [BIAS + l if BIAS + l in fed else converted.records[l].bias for l in layers]
    prefix = (_CarriedPrefix if carried else _WholePrefixes)(
        graph, batches, [tensors[l] for l in layers], [axes[l] for l in layers], bias_inputs, threads)
    shifts: dict[str, np.ndarray] = {}
    with Progress(len(layers), "bias correction", unit="layer") as bar:
        for k, layer in enumerate(layers):
            # every threshold and the biases so far frozen into the sessions as constants: onnxruntime then
            # optimises them as fp32 (a fed bias is 3x slower on yolov3_nano_voc)
            mean = prefix.mean(k, _with_biases(graph, biases), table)
            shift = (mean - fp32[layer]).astype(np.float32)
            # From the bias as the simulation ran it (its int32 rounding included): the corrected bias then rounds
            # to within half a step of the mean it must meet, where the float bias minus the shift could land a
            # whole step off (its own rounding added to the new one).
            biases[layer] = (_effective_bias(graph, table, layer, biases[layer]) - shift).astype(np.float32)
            shifts[layer] = shift
            if BIAS + layer not in fed:  # a static bias (fp32): written into the graph itself
                graph = _static_bias(graph, converted.records[layer].bias, biases[layer])
            bar.update()
    final = _with_biases(graph, biases)
    engine = Engine(dataclasses.replace(final.converted, model=final.frozen(table)), threads=threads,
                    simulation=True)
    residual = _means(batches, engine, tensors, axes)
    results: list[CorrectedLayer | SkippedLayer] = [
        CorrectedLayer(l, shifts[l], (residual[l] - fp32[l]).astype(np.float32), _fed_step(graph, table, l))
        for l in layers]
    order = {e.layer: k for k, e in enumerate(table.quantized_layers())}
    return biases, sorted(results + skipped, key=lambda r: order[r.layer])


def _static_bias(graph: Int8Graph, name: str, bias: np.ndarray) -> Int8Graph:
    model = type(graph.converted.model)()
    model.CopyFrom(graph.converted.model)
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(bias.reshape(numpy_helper.to_array(t).shape), name))
    return dataclasses.replace(graph, converted=dataclasses.replace(graph.converted, model=model))


class _WholePrefixes:
    """Each layer measured on a session of its own: the whole graph up to its output (O(L^2); the reference the
    carried prefix must equal bit for bit)."""

    def __init__(self, graph: Int8Graph, batches, targets: list[str], axes: list[int], bias_inputs: list[str],
                 threads: int) -> None:
        self.batches, self.targets, self.axes, self.threads = batches, targets, axes, threads

    def mean(self, k: int, graph: Int8Graph, table: CalibrationTable) -> np.ndarray:
        engine = _prefix_engine(graph.converted, graph.frozen(table), self.targets[k], self.threads)
        return _means(self.batches, engine, {k: self.targets[k]}, {k: self.axes[k]})[k]


def _prefix_engine(converted: ConvertedModel, model: onnx.ModelProto, tensor: str, threads: int) -> Engine:
    """An engine for the frozen int8 graph `model` (edited in place) cut after `tensor` (only the nodes it
    depends on)."""
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    needed, stack = set(), [tensor]
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(node.input)
    kept = [n for n in nodes if id(n) in needed]
    model.graph.ClearField("node")
    model.graph.node.extend(kept)
    used = {i for n in kept for i in n.input}
    inits = [t for t in model.graph.initializer if t.name in used]
    model.graph.ClearField("initializer")
    model.graph.initializer.extend(inits)
    outputs = [o for o in model.graph.output if o.name == tensor]
    model.graph.ClearField("output")
    model.graph.output.extend(outputs or [helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None)])
    inputs = [i for i in model.graph.input if i.name in used]
    model.graph.ClearField("input")
    model.graph.input.extend(inputs)
    return Engine(dataclasses.replace(converted, model=model, post_steps=[]), threads=threads, simulation=True)


class _CarriedPrefix:
    """The int8 graph run once from the input side across the layers: per chunk of images, the tensors computed
    so far under the biases corrected so far (`known`), which each layer's segment starts from."""

    def __init__(self, graph: Int8Graph, batches, targets: list[str], axes: list[int], bias_inputs: list[str],
                 threads: int) -> None:
        # the same nodes at every layer: correcting a bias changes a constant's value, never the graph
        self.nodes = list(graph.converted.model.graph.node)
        self.chunks = [input_feeds(graph.converted.net.inputs, c) for c in _chunks(batches)]
        self.targets, self.axes = targets, axes
        self.elem_type, self.threads = graph.elem_type, threads
        self.biases_of = _bias_masks(self.nodes, bias_inputs)
        self.last_use = _last_uses(self.nodes, targets)
        self.names: frozenset[str] = frozenset()  # the tensors held for every chunk
        self.known: list[dict[str, np.ndarray]] = [{} for _ in self.chunks]

    def mean(self, k: int, graph: Int8Graph, table: CalibrationTable) -> np.ndarray:
        """The mean per channel of layer k's output in `graph` (fed the biases corrected so far); then forgets
        what correcting layer k makes stale."""
        target = self.targets[k]
        segment = needed_for(self.nodes, {target}, self.names)
        keep = self._kept_after(k, {o for n in segment for o in n.output})
        fetch = [target] + sorted(o for n in segment for o in n.output if o in keep and o != target)
        session = _segment(graph, table, segment, fetch, self.names, self.threads) if segment else None
        inputs = [i.name for i in session.model.graph.input] if session else []
        sums, count = 0.0, 0
        for c, (feeds, known) in enumerate(zip(self.chunks, self.known)):
            got = (dict(zip(fetch, session.run(fetch, {i: feeds[i] if i in feeds else known[i] for i in inputs})))
                   if session else {})
            total, n = _channel_sums(got[target] if target in got else known[target], self.axes[k])
            sums, count = total + sums, count + n
            self.known[c] = {t: v for t, v in {**known, **got}.items() if t in keep}
        self.names = frozenset(keep)
        return sums / count

    def _kept_after(self, k: int, produced: set[str]) -> set[str]:
        """Of the tensors known once layer k's segment has run, those still valid after its correction (not
        computed from its bias) that a later segment may start from: a later layer's output, or an input of a node
        a later layer needs that will run again (an output not known, or computed from a later layer's bias).
        The others are dropped: calibration holds up to 32 images, and every tensor of a 416x416 detector would
        not fit."""
        left = {t for t in self.names | produced if not self.biases_of.get(t, 0) >> k & 1}
        again = [n for n in self.nodes if self.last_use.get(id(n), -1) > k
                 and any(o and (o not in left or self.biases_of.get(o, 0) >> (k + 1)) for o in n.output)]
        return left & ({i for n in again for i in n.input} | set(self.targets[k + 1:]))


def _bias_masks(nodes: list[onnx.NodeProto], bias_inputs: list[str]) -> dict[str, int]:
    """Per tensor, the layers whose bias it is computed from (transitively): bit k for layer k."""
    mask: dict[str, int] = {}
    for k, b in enumerate(bias_inputs):
        mask[b] = mask.get(b, 0) | 1 << k
    for node in nodes:  # graph order is topological
        m = 0
        for i in node.input:
            m |= mask.get(i, 0)
        if m:
            for o in node.output:
                mask[o] = mask.get(o, 0) | m
    return mask


def _last_uses(nodes: list[onnx.NodeProto], targets: list[str]) -> dict[int, int]:
    """Per node (by id), the last layer whose output needs it; nodes no layer's output needs are left out."""
    last: dict[str, int] = {}
    for k, t in enumerate(targets):
        last[t] = k
    out: dict[int, int] = {}
    for node in reversed(nodes):
        k = max((last.get(o, -1) for o in node.output), default=-1)
        if k >= 0:
            out[id(node)] = k
            for i in node.input:
                last[i] = max(last.get(i, -1), k)
    return out


def _segment(graph: Int8Graph, table: CalibrationTable, nodes: list[onnx.NodeProto], fetch: list[str],
             available: frozenset[str], threads: int) -> GraphSession:
    """A simulation session of `nodes` of `graph` computing `fetch`, from the net inputs and the `available`
    tensors they read (fed as inputs; not one a node here computes again: a tensor has one definition). Every
    threshold and bias is frozen in as graph.frozen(table) freezes it, for only the constants these nodes read
    (freezing the whole graph copied every weight at every layer)."""
    model = graph.converted.model
    used = {i for n in nodes for i in n.input}
    produced = {o for n in nodes for o in n.output}
    fed = sorted(used & available - produced)
    feeds = graph.feeds(table)
    constants = ([t for t in model.graph.initializer if t.name in used]
                 + [numpy_helper.from_array(feeds[i.name], i.name) for i in model.graph.input
                    if i.name in feeds and i.name in used])
    g = helper.make_graph(
        nodes, "segment",
        inputs=[i for i in model.graph.input if i.name in used and i.name not in feeds]
        + [helper.make_tensor_value_info(t, graph.elem_type(t), None) for t in fed],
        outputs=[helper.make_tensor_value_info(t, graph.elem_type(t), None) for t in fetch],
        initializer=constants,
    )
    m = helper.make_model(g, opset_imports=model.opset_import)
    m.ir_version = model.ir_version
    return GraphSession(m, threads)
