"""Softmax (along one axis), ArgMax and Reduction, as in Caffe's layers of the same names."""

from __future__ import annotations

import numpy as np

from ...errors import ModelError
from ..builder import LayerContext, Shape
from ..registry import converter
from ._common import canonical_axis, enum_name


@converter("Softmax")
def softmax(ctx: LayerContext) -> list[Shape]:
    ctx.expect_bottoms(1)
    ctx.expect_tops(1)
    shape = ctx.shapes[0]
    axis = canonical_axis(ctx, ctx.param.softmax_param.axis, len(shape))
    ctx.node("Softmax", [ctx.inputs[0]], ctx.outputs, axis=axis)  # opset >= 13: one axis, like Caffe
    return [shape]


@converter("ArgMax")
def argmax(ctx: LayerContext) -> list[Shape]:
    """Indices (as float) of the top_k values; with out_max_val the values too (or only them, given an axis).

    Without an axis Caffe ranks over everything but the batch and writes (N, 1 or 2, top_k, 1...). Ties: Caffe
    sorts (value, index) pairs descending, so equal values come highest index first; ONNX TopK puts the lowest
    index first. Only exact ties differ.
    """
    ctx.expect_bottoms(1)
    ctx.expect_tops(1)
    p = ctx.param.argmax_param
    shape = ctx.shapes[0]
    k = int(p.top_k)
    if p.HasField("axis"):
        axis = canonical_axis(ctx, p.axis, len(shape))
        if k > shape[axis]:
            raise ModelError(f"{ctx.layer.describe()}: top_k {k} exceeds axis {axis} of size {shape[axis]}")
        values, indices = ctx.node("TopK", [ctx.inputs[0], ctx.int64s("k", [k])], 2, axis=axis)
        out_shape = tuple(k if i == axis else d for i, d in enumerate(shape))
        if p.out_max_val:
            ctx.identity(values, ctx.outputs[0])
        else:
            ctx.node("Cast", [indices], ctx.outputs, to=1)
        return [out_shape]
    flat = ctx.node("Flatten", [ctx.inputs[0]], axis=1)[0]
    count = int(np.prod(shape[1:]))
    if k > count:
        raise ModelError(f"{ctx.layer.describe()}: top_k {k} exceeds the {count} values per sample")
    values, indices = ctx.node("TopK", [flat, ctx.int64s("k", [k])], 2, axis=1)
    index_f = ctx.node("Cast", [indices], to=1)[0]
    rank = max(len(shape), 3)
    tail = [1] * (rank - 3)
    if p.out_max_val:
        stacked = ctx.node("Concat", [ctx.node("Unsqueeze", [index_f, ctx.int64s("ax", [1])])[0],
                                      ctx.node("Unsqueeze", [values, ctx.int64s("ax2", [1])])[0]], axis=1)[0]
        ctx.node("Reshape", [stacked, ctx.int64s("shape", [0, 2, k] + tail)], ctx.outputs)
        return [(shape[0], 2, k, *tail)]
    ctx.node("Reshape", [index_f, ctx.int64s("shape", [0, 1, k] + tail)], ctx.outputs)
    return [(shape[0], 1, k, *tail)]


@converter("Reduction")
def reduction(ctx: LayerContext) -> list[Shape]:
    """Reduce every axis from `axis` on (SUM, ASUM, SUMSQ, MEAN), times coeff. Output shape: shape[:axis]."""
    ctx.expect_bottoms(1)
    ctx.expect_tops(1)
    p = ctx.param.reduction_param
    shape = ctx.shapes[0]
    axis = canonical_axis(ctx, p.axis, len(shape))
    op = enum_name(p, "operation")
    x = ctx.inputs[0]
    if op == "ASUM":
        x = ctx.node("Abs", [x])[0]
    elif op == "SUMSQ":
        x = ctx.node("Mul", [x, x])[0]
    onnx_op = "ReduceMean" if op == "MEAN" else "ReduceSum"
    axes = list(range(axis, len(shape)))
    if onnx_op == "ReduceSum":  # ReduceSum takes axes as an input from opset 13
        reduced = ctx.node(onnx_op, [x, ctx.int64s("axes", axes)], keepdims=0)[0]
    else:
        reduced = ctx.node(onnx_op, [x], axes=axes, keepdims=0)[0]
    if p.coeff != 1.0:
        ctx.node("Mul", [reduced, ctx.const("coeff", p.coeff)], ctx.outputs)
    else:
        ctx.identity(reduced, ctx.outputs[0])
    return [tuple(shape[:axis])]
