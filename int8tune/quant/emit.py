"""Building blocks of the simulating graph: the names of its threshold-dependent inputs and a node emitter.

Shared by simulate.py (fake quantizers, weights, biases) and integer.py (onnxruntime's integer arithmetic).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .spec import Rounding

# Graph inputs fed from the table (Int8Graph.feeds): per blob its scale and clip bounds, per layer its bias, its
# requantization multiplier (integer convolutions) and QLinearAdd's constants (integer sums).
SCALE, LOW, HIGH, BIAS, MULT = "scale:", "low:", "high:", "bias:", "mult:"
ADD_A, ADD_B, ADD_FIXED = "add_a:", "add_b:", "add_fixed:"
# An output point's producer writes `<tensor>#fp32` and the quantizer writes `<tensor>`.
PRIVATE = "#fp32"


class _Emitter:
    def __init__(self) -> None:
        self.types: dict[str, int] = {}  # tensors that are not float32 (ONNX element type), for partial graphs
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
        if op == "Cast":
            self.types[out] = attrs["to"]
        elif any(i in self.types for i in inputs):  # arithmetic keeps its inputs' type (float64 in QLinearAdd's)
            self.types[out] = next(self.types[i] for i in inputs if i in self.types)
        return out

    def round(self, x: str, rounding: Rounding, stem: str) -> str:
        if rounding is Rounding.HALF_EVEN:
            return self.node("Round", [x], stem)
        # half away from zero: sign(x) * floor(|x| + 0.5)
        mag = self.node("Floor", [self.node("Add", [self.node("Abs", [x], stem), self.const(stem, 0.5)], stem)],
                        stem)
        return self.node("Mul", [self.node("Sign", [x], stem), mag], stem)
