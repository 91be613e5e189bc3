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
table it delivers. The biases are graph inputs of the simulation (`bias:<layer>`), so correcting a layer is a
new feed, not a new session; a layer whose bias is not fed (--bias fp32, per-channel activations) gets its bias
written into a copy of the graph.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..convert.converter import ConvertedModel
from ..progress import Progress
from ..runtime import Engine
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
    for batch in batches:
        for start in range(0, len(batch), CHUNK):
            got = engine.run_tensors(batch[start:start + CHUNK], fetch, extra_feeds=feeds)
            for layer in wanted:
                y = got[tensors[layer]].astype(np.float64)
                y = np.moveaxis(y, axes[layer], 0).reshape(y.shape[axes[layer]], -1)
                sums[layer] = y.sum(axis=1) + sums.get(layer, 0.0)
                count[layer] += y.shape[1]
    return {layer: sums[layer] / count[layer] for layer in wanted}


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
    shifts: dict[str, np.ndarray] = {}
    with Progress(len(layers), "bias correction", unit="layer") as bar:
        for layer in layers:
            # the graph up to this layer's output, every threshold and bias so far frozen in as a constant: a
            # short session that onnxruntime optimises as fp32 (a fed bias is 3x slower on yolov3_nano_voc)
            engine = _prefix_engine(_with_biases(graph, biases), table, tensors[layer], threads)
            mean = _means(batches, engine, {layer: tensors[layer]}, axes)[layer]
            shift = (mean - fp32[layer]).astype(np.float32)
            # From the bias as the simulation ran it (its int32 rounding included): the corrected bias then rounds
            # to within half a step of the mean it must meet, where the float bias minus the shift could land a
            # whole step off (its own rounding added to the new one).
            biases[layer] = (_effective_bias(graph, table, layer, biases[layer]) - shift).astype(np.float32)
            shifts[layer] = shift
            if BIAS + layer not in graph.feeds(table):  # a static bias (fp32): written into the graph itself
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


def _prefix_engine(graph: Int8Graph, table: CalibrationTable, tensor: str, threads: int) -> Engine:
    """An engine for the frozen int8 graph cut after `tensor` (only the nodes it depends on)."""
    model = graph.frozen(table)
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
    return Engine(dataclasses.replace(graph.converted, model=model, post_steps=[]), threads=threads,
                  simulation=True)
