"""The graph under construction and the context one layer converter sees.

A converter is a function `convert(ctx: LayerContext) -> list[shape]` registered per Caffe type. It emits
ONNX nodes through `ctx.node`, constants through `ctx.const`, and returns the shape of each top (with the
batch size the prototxt declares; the graph itself keeps the batch dimension free). Layers with no faithful
ONNX form run as a numpy step after the onnxruntime graph (`ctx.post_step`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..caffe.net import Layer
from ..errors import ModelError, UnsupportedLayerError

Shape = tuple[int, ...]


@dataclass
class LayerRecord:
    """Where a Caffe layer ended up in the ONNX graph; the int8 transform works from this."""

    name: str
    type: str
    inputs: list[str]  # value names the layer reads
    outputs: list[str]  # value names it writes
    nodes: list[str] = field(default_factory=list)  # ONNX node names emitted for it
    main_node: str | None = None  # the Conv/ConvTranspose/Gemm/MatMul carrying the weights
    weight: str | None = None  # initializer name of the (ONNX-layout) weights of main_node
    weight_axis: int = 0  # axis of `weight` that indexes output channels (per-channel quantization)
    bias: str | None = None  # initializer name of the bias of main_node, if any
    runs_in: str = "onnx"  # "onnx" or "numpy" (a post step)


@dataclass
class PostStep:
    """A layer computed in numpy after the onnxruntime graph (e.g. DetectionOutput's NMS)."""

    layer: str
    fn: Callable[[list[np.ndarray]], list[np.ndarray]]
    inputs: list[str]
    outputs: list[str]


class GraphBuilder:
    """Accumulates nodes, initializers and records while the converter walks the net."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.shapes: dict[str, Shape] = {}
        self.records: dict[str, LayerRecord] = {}
        self.post_steps: list[PostStep] = []
        self.numpy_values: set[str] = set()  # values produced by post steps (not in the ONNX graph)
        self._names: set[str] = set()

    def unique(self, name: str) -> str:
        candidate, k = name, 1
        while candidate in self._names:
            k += 1
            candidate = f"{name}#{k}"
        self._names.add(candidate)
        return candidate

    def reserve(self, names: Sequence[str]) -> None:
        self._names.update(names)


class LayerContext:
    """What one converter sees: its layer, input tensors and shapes, and emitters for the graph."""

    def __init__(self, builder: GraphBuilder, layer: Layer, record: LayerRecord) -> None:
        self.builder = builder
        self.layer = layer
        self.param = layer.param
        self.record = record
        self.inputs: list[str] = list(layer.bottoms)
        self.outputs: list[str] = list(layer.tops)
        self.shapes: list[Shape] = [builder.shapes[b] for b in layer.bottoms]

    # -- errors --------------------------------------------------------------------------------------
    def fail(self, message: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(f"{self.layer.describe()}: {message}")

    def expect_bottoms(self, *counts: int) -> None:
        if len(self.inputs) not in counts:
            raise ModelError(f"{self.layer.describe()}: expects {' or '.join(map(str, counts))} bottom(s), "
                             f"found {len(self.inputs)}")

    def expect_tops(self, *counts: int) -> None:
        if len(self.outputs) not in counts:
            raise ModelError(f"{self.layer.describe()}: expects {' or '.join(map(str, counts))} top(s), "
                             f"found {len(self.outputs)}")

    # -- weights -------------------------------------------------------------------------------------
    def weight(self, index: int, shape: Shape | None = None, what: str = "weights") -> np.ndarray:
        """Learned blob `index`, reshaped to `shape` (legacy 4-D blobs of the same size are accepted)."""
        blobs = self.layer.blobs
        if index >= len(blobs):
            raise ModelError(f"{self.layer.describe()}: needs {what} (blob {index}) but the caffemodel holds "
                             f"{len(blobs)} blob(s) for it")
        array = blobs[index]
        if not np.isfinite(array).all():
            # The loader refuses such a caffemodel; this catches what folding or equalization computed from it.
            raise ModelError(f"{self.layer.describe()}: {what} (blob {index}) hold "
                             f"{int(np.count_nonzero(~np.isfinite(array)))} NaN/inf value(s) of {array.size} (after "
                             f"BatchNorm/Scale folding or equalization, if any: check those layers' weights)")
        if shape is None or tuple(array.shape) == tuple(shape):
            return array
        if array.size == int(np.prod(shape)) and _legacy_compatible(array.shape, shape):
            return array.reshape(shape)
        raise ModelError(f"{self.layer.describe()}: {what} (blob {index}) have shape {tuple(array.shape)}, "
                         f"expected {tuple(shape)} from the prototxt and the input shape")

    # -- emitters ------------------------------------------------------------------------------------
    def tmp(self, suffix: str) -> str:
        return self.builder.unique(f"{self.layer.name}/{suffix}")

    def const(self, suffix: str, array: np.ndarray | Sequence, dtype=np.float32) -> str:
        name = self.tmp(suffix)
        self.builder.initializers[name] = numpy_helper.from_array(np.asarray(array, dtype=dtype), name)
        return name

    def int64s(self, suffix: str, values: Sequence[int]) -> str:
        return self.const(suffix, np.asarray(list(values), dtype=np.int64), dtype=np.int64)

    def node(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str] | int = 1,
             main: bool = False, **attrs) -> list[str]:
        """Emit one node; `outputs` are tensor names or a count of fresh temporaries. Returns the outputs."""
        if isinstance(outputs, int):
            outputs = [self.tmp(op_type.lower()) for _ in range(outputs)]
        name = self.builder.unique(self.layer.name if main else f"{self.layer.name}/{op_type}")
        self.builder.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=name, **attrs))
        self.record.nodes.append(name)
        if main:
            self.record.main_node = name
        return list(outputs)

    def identity(self, source: str, target: str) -> None:
        self.node("Identity", [source], [target])

    def post_step(self, fn: Callable[[list[np.ndarray]], list[np.ndarray]]) -> None:
        """Run this layer in numpy after the onnxruntime graph, reading its bottoms, writing its tops."""
        self.record.runs_in = "numpy"
        self.builder.post_steps.append(PostStep(self.layer.name, fn, list(self.inputs), list(self.outputs)))
        self.builder.numpy_values.update(self.outputs)


def _legacy_compatible(found: Shape, expected: Shape) -> bool:
    """Caffe's legacy 4-D blobs (num, channels, height, width) pad small shapes with leading ones."""
    squeeze = lambda s: tuple(d for d in s if d != 1)  # noqa: E731 - tiny local helper
    return squeeze(found) == squeeze(expected)


def make_value_info(name: str, shape: Shape, batch_free: bool, elem_type=TensorProto.FLOAT):
    dims: list = list(shape)
    if batch_free and dims:
        dims[0] = "N"
    return helper.make_tensor_value_info(name, elem_type, dims)
