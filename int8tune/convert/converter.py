"""CaffeNet -> ConvertedModel: an ONNX graph (fp32) plus the numpy steps that follow it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..caffe.net import CaffeNet
from ..errors import ModelError, UnsupportedLayerError
from . import layers as _layers  # noqa: F401  (fills the registry)
from .builder import GraphBuilder, LayerContext, LayerRecord, PostStep, Shape, make_value_info
from .registry import LAYER_CONVERTERS

OPSET = 17


@dataclass
class ConvertedModel:
    """The fp32 model as onnxruntime runs it, with the bookkeeping that maps it back to Caffe."""

    net: CaffeNet
    model: onnx.ModelProto  # graph outputs: the net's ONNX-computed outputs and post-step inputs
    shapes: dict[str, Shape]  # value -> shape at the prototxt's batch size
    records: dict[str, LayerRecord]  # layer name -> where it went
    post_steps: list[PostStep]
    numpy_values: set[str]

    @property
    def outputs(self) -> list[str]:
        return self.net.outputs

    @property
    def onnx_values(self) -> list[str]:
        """Values that exist as tensors in the ONNX graph (everything but post-step results)."""
        return [v for v in self.net.values() if v not in self.numpy_values]


def convert_net(net: CaffeNet) -> ConvertedModel:
    builder = GraphBuilder()
    builder.reserve(net.values())
    for name, shape in net.inputs.items():
        builder.shapes[name] = tuple(shape)
    for layer in net.layers:
        record = LayerRecord(layer.name, layer.type, list(layer.bottoms), list(layer.tops))
        builder.records[layer.name] = record
        ctx = LayerContext(builder, layer, record)
        try:
            convert = LAYER_CONVERTERS.get(layer.type)
        except KeyError:
            raise UnsupportedLayerError(
                f"{layer.describe()} in {net.proto_path or net.name}: layer type {layer.type!r} is not supported; "
                f"supported types: {', '.join(LAYER_CONVERTERS.names())}") from None
        if not layer.bottoms or not layer.tops:  # every supported type reads and writes at least one blob
            raise ModelError(f"{layer.describe()} in {net.proto_path or net.name}: has "
                             f"{len(layer.bottoms)} bottom(s) and {len(layer.tops)} top(s); a {layer.type} layer "
                             f"reads at least one blob and writes at least one")
        shapes = convert(ctx)
        _check_shapes(ctx, shapes)
        numpy_inputs = [b for b in layer.bottoms if b in builder.numpy_values]
        if record.runs_in == "onnx" and numpy_inputs:
            raise UnsupportedLayerError(
                f"{layer.describe()}: reads {numpy_inputs}, computed in numpy after the onnxruntime graph; only "
                f"numpy-step layers may follow a numpy-step layer")
        for top, shape in zip(layer.tops, shapes):
            builder.shapes[top] = tuple(int(d) for d in shape)

    graph_outputs = _graph_outputs(net, builder)
    graph = helper.make_graph(
        builder.nodes, net.name or "caffe_net",
        inputs=[make_value_info(n, s, batch_free=True) for n, s in net.inputs.items()],
        # rank known, every dimension left free (some outputs follow the batch, PriorBox constants do not): a
        # value_info without any shape fails onnx.checker, which other tools run on the exported graph
        outputs=[helper.make_tensor_value_info(v, TensorProto.FLOAT, [None] * len(builder.shapes[v]))
                 for v in graph_outputs],
        initializer=list(builder.initializers.values()),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="int8tune")
    model.ir_version = 8  # opset 17 needs IR >= 8; stay at the lowest that works for older runtimes
    return ConvertedModel(net=net, model=model, shapes=builder.shapes, records=builder.records,
                          post_steps=builder.post_steps, numpy_values=set(builder.numpy_values))


def _check_shapes(ctx: LayerContext, shapes) -> None:
    layer = ctx.layer
    if not isinstance(shapes, (list, tuple)) or len(shapes) != len(layer.tops):
        raise ModelError(f"converter for {layer.type} returned {shapes!r} for {layer.describe()}; expected one "
                         f"shape per top ({len(layer.tops)})")
    for top, shape in zip(layer.tops, shapes):
        if not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
            raise ModelError(f"{layer.describe()}: computed output {top!r} of shape {tuple(shape)}; every "
                             f"dimension must be positive (check the layer's parameters and input shape)")


def _graph_outputs(net: CaffeNet, builder: GraphBuilder) -> list[str]:
    out: list[str] = []
    for value in net.outputs:
        if value not in builder.numpy_values and value not in out:
            out.append(value)
    for step in builder.post_steps:
        for value in step.inputs:
            if value not in builder.numpy_values and value not in out:
                out.append(value)
    return out
