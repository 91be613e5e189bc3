"""BatchNorm, Scale, Bias, LRN and MVN, as Caffe computes them.

BatchNorm (Caffe's BatchNormLayer, which has no affine part; a Scale layer usually follows):
    factor = 0 if blobs[2][0] == 0 else 1 / blobs[2][0]   (the moving-average normaliser)
    y = (x - mean*factor) / sqrt(var*factor + eps)
With `use_global_stats: false` written explicitly, Caffe normalises with the statistics of the current batch
even at test time; that is reproduced (and logged), not silently changed.
Scale/Bias: y = x * s (+ b), s (and b) of shape input.shape[axis : axis+num_axes], broadcast over the rest;
s comes from the second bottom when there are two.
LRN: ACROSS_CHANNELS y = x / (k + alpha/n * sum_window x^2)^beta (ONNX LRN);
     WITHIN_CHANNEL y = x / (1 + alpha * avgpool_{n x n, pad (n-1)/2}(x^2))^beta (padding counted).
"""

from __future__ import annotations

import numpy as np

from ...errors import ModelError
from ...log import logger
from ..builder import LayerContext, Shape
from ..registry import converter
from ._common import canonical_axis, enum_name


@converter("BatchNorm")
def batch_norm(ctx: LayerContext) -> list[Shape]:
    ctx.expect_bottoms(1)
    ctx.expect_tops(1)
    shape = ctx.shapes[0]
    if len(shape) < 2:
        raise ModelError(f"{ctx.layer.describe()}: BatchNorm needs a channel axis; input shape is {shape}")
    channels = shape[1]
    p = ctx.param.batch_norm_param
    eps = float(p.eps)
    x, y = ctx.inputs[0], ctx.outputs[0]
    if p.HasField("use_global_stats") and not p.use_global_stats:
        logger.warning("%s: use_global_stats is false, so (as in Caffe) it normalises with the statistics of "
                       "each batch, also at test time", ctx.layer.describe())
        axes = [0] + list(range(2, len(shape)))
        mean = ctx.node("ReduceMean", [x], axes=axes, keepdims=1)[0]
        centred = ctx.node("Sub", [x, mean])[0]
        var = ctx.node("ReduceMean", [ctx.node("Mul", [centred, centred])[0]], axes=axes, keepdims=1)[0]
        std = ctx.node("Sqrt", [ctx.node("Add", [var, ctx.const("eps", eps)])[0]])[0]
        ctx.node("Div", [centred, std], [y])
        return [shape]
    mean = ctx.weight(0, (channels,), "mean").astype(np.float64)
    var = ctx.weight(1, (channels,), "variance").astype(np.float64)
    factor_blob = ctx.weight(2, None, "moving-average factor").reshape(-1)
    if factor_blob.size != 1:
        raise ModelError(f"{ctx.layer.describe()}: blob 2 (moving-average factor) should hold 1 value, "
                         f"holds {factor_blob.size}")
    factor = 0.0 if factor_blob[0] == 0 else 1.0 / float(factor_blob[0])
    # ONNX BatchNormalization computes exactly Caffe's (x - mean) / sqrt(var + eps) (with scale 1, bias 0),
    # and onnxruntime folds it into a preceding convolution when nothing needs the convolution's own output.
    ctx.node("BatchNormalization", [x, ctx.const("scale", np.ones(channels)), ctx.const("bias", np.zeros(channels)),
                                    ctx.const("mean", mean * factor), ctx.const("var", var * factor)], [y],
             epsilon=eps)
    return [shape]


def _param_shape(ctx: LayerContext, shape: Shape, axis: int, num_axes: int) -> tuple[int, tuple[int, ...]]:
    axis = canonical_axis(ctx, axis, len(shape))
    end = len(shape) if num_axes == -1 else axis + num_axes
    if num_axes < -1 or end > len(shape):
        raise ModelError(f"{ctx.layer.describe()}: num_axes {num_axes} from axis {axis} exceeds the input rank "
                         f"{len(shape)}")
    return axis, tuple(shape[axis:end])


def _broadcastable(values: np.ndarray, rank: int, axis: int) -> np.ndarray:
    trailing = rank - axis - values.ndim
    return values.reshape(values.shape + (1,) * trailing)


def _scale_or_bias(ctx: LayerContext, op: str, p, learned_index: int) -> str:
    """The multiplier (op Mul) or addend (op Add) applied by a Scale/Bias layer; returns the result tensor."""
    shape = ctx.shapes[0]
    x = ctx.inputs[0]
    if len(ctx.inputs) == 2:
        other_shape = ctx.shapes[1]
        axis = canonical_axis(ctx, p.axis, len(shape))
        if tuple(shape[axis:axis + len(other_shape)]) != tuple(other_shape):
            raise ModelError(f"{ctx.layer.describe()}: second bottom has shape {other_shape}, which does not match "
                             f"the input shape {shape} from axis {axis}")
        trailing = len(shape) - axis - len(other_shape)
        factor = ctx.inputs[1]
        if trailing:
            if axis == 0:
                target = [0] + list(other_shape[1:]) + [1] * trailing
            else:
                target = list(other_shape) + [1] * trailing
            factor = ctx.node("Reshape", [factor, ctx.int64s("shape", target)])[0]
        return ctx.node(op, [x, factor])[0]
    axis, pshape = _param_shape(ctx, shape, p.axis, p.num_axes)
    values = ctx.weight(learned_index, pshape, "scale" if op == "Mul" else "bias")
    return ctx.node(op, [x, ctx.const(op.lower(), _broadcastable(values, len(shape), axis))])[0]


@converter("Scale")
def scale(ctx: LayerContext) -> list[Shape]:
    ctx.expect_bottoms(1, 2)
    ctx.expect_tops(1)
    p = ctx.param.scale_param
    shape = ctx.shapes[0]
    scaled = _scale_or_bias(ctx, "Mul", p, 0)
    if not p.bias_term:
        ctx.identity(scaled, ctx.outputs[0])
        return [shape]
    bias_index = 1 if len(ctx.inputs) == 1 else 0
    if len(ctx.inputs) == 2:
        axis = canonical_axis(ctx, p.axis, len(shape))
        pshape = tuple(ctx.shapes[1])
    else:
        axis, pshape = _param_shape(ctx, shape, p.axis, p.num_axes)
    bias = ctx.weight(bias_index, pshape, "bias")
    ctx.node("Add", [scaled, ctx.const("bias", _broadcastable(bias, len(shape), axis))], ctx.outputs)
    return [shape]


@converter("Bias")
def bias(ctx: LayerContext) -> list[Shape]:
    ctx.expect_bottoms(1, 2)
    ctx.expect_tops(1)
    out = _scale_or_bias(ctx, "Add", ctx.param.bias_param, 0)
    ctx.identity(out, ctx.outputs[0])
    return [ctx.shapes[0]]


@converter("LRN")
def lrn(ctx: LayerContext) -> list[Shape]:
    ctx.expect_bottoms(1)
    ctx.expect_tops(1)
    p = ctx.param.lrn_param
    shape = ctx.shapes[0]
    size = int(p.local_size)
    if size <= 0 or size % 2 == 0:
        raise ModelError(f"{ctx.layer.describe()}: local_size must be a positive odd number, found {size}")
    region = enum_name(p, "norm_region")
    if region == "ACROSS_CHANNELS":
        ctx.node("LRN", [ctx.inputs[0]], ctx.outputs, size=size, alpha=float(p.alpha), beta=float(p.beta),
                 bias=float(p.k))
        return [shape]
    pad = (size - 1) // 2
    square = ctx.node("Mul", [ctx.inputs[0], ctx.inputs[0]])[0]
    pooled = ctx.node("AveragePool", [square], kernel_shape=[size, size], pads=[pad] * 4, strides=[1, 1],
                      count_include_pad=1)[0]
    base = ctx.node("Add", [ctx.node("Mul", [pooled, ctx.const("alpha", p.alpha)])[0], ctx.const("one", 1.0)])[0]
    denom = ctx.node("Pow", [base, ctx.const("beta", p.beta)])[0]
    ctx.node("Div", [ctx.inputs[0], denom], ctx.outputs)
    return [shape]


@converter("MVN")
def mvn(ctx: LayerContext) -> list[Shape]:
    """Mean-variance normalisation per sample (and per channel unless across_channels); eps added to std."""
    ctx.expect_bottoms(1)
    ctx.expect_tops(1)
    p = ctx.param.mvn_param
    shape = ctx.shapes[0]
    axes = list(range(1 if p.across_channels else 2, len(shape)))
    x = ctx.inputs[0]
    mean = ctx.node("ReduceMean", [x], axes=axes, keepdims=1)[0]
    centred = ctx.node("Sub", [x, mean])[0]
    if not p.normalize_variance:
        ctx.identity(centred, ctx.outputs[0])
        return [shape]
    var = ctx.node("ReduceMean", [ctx.node("Mul", [centred, centred])[0]], axes=axes, keepdims=1)[0]
    std = ctx.node("Add", [ctx.node("Sqrt", [var])[0], ctx.const("eps", p.eps)])[0]
    ctx.node("Div", [centred, std], ctx.outputs)
    return [shape]
