"""Pooling, with Caffe's own output size and border rules (PoolingLayer::Reshape / Forward_cpu).

Output size (round_mode CEIL, Caffe's default):
    out = ceil((in + 2*pad - k) / stride) + 1, then out -= 1 if pad > 0 and (out-1)*stride >= in + pad
(FLOOR uses floor). The last window may run past `in + pad` ("overhang"); Caffe clips it there.

- MAX ignores everything outside the input, so the window set is exactly that of a MaxPool whose end padding
  is `pad + overhang` (ONNX never picks a pad cell for a max). No ceil_mode is needed.
- AVE divides by the window clipped to [-pad, in + pad): padding counts, the overhang does not. Where there is
  no overhang this is ONNX AveragePool with count_include_pad=1. Where there is, the pooled mean over the full
  k*k zero-padded window is rescaled by k*k / (Caffe's divisor), a constant map computed here from the formula.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import ModelError
from ..builder import LayerContext, Shape
from ..registry import converter
from ._common import enum_name


def caffe_pool_output(size: int, kernel: int, pad: int, stride: int, ceil: bool) -> int:
    span = size + 2 * pad - kernel
    out = (math.ceil(span / stride) if ceil else span // stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1  # the last window must start inside the input or its left padding
    return out


def caffe_ave_divisors(size: int, kernel: int, pad: int, stride: int, out: int) -> np.ndarray:
    """Per output position, the number of cells Caffe divides by along one axis."""
    starts = np.arange(out) * stride - pad
    ends = np.minimum(starts + kernel, size + pad)
    return (ends - starts).astype(np.float64)


def _params(ctx: LayerContext):
    p = ctx.param.pooling_param
    shape = ctx.shapes[0]
    if len(shape) != 4:
        raise ModelError(f"{ctx.layer.describe()}: pooling needs a 4-D input, found shape {shape}")
    if p.global_pooling:
        return p, shape, list(shape[2:]), [0, 0], [1, 1]
    if p.HasField("kernel_size") and (p.HasField("kernel_h") or p.HasField("kernel_w")):
        raise ModelError(f"{ctx.layer.describe()}: kernel_size given both as kernel_size and kernel_h/kernel_w")
    if p.HasField("kernel_size"):
        kernel = [p.kernel_size] * 2
    elif p.HasField("kernel_h") and p.HasField("kernel_w"):
        kernel = [p.kernel_h, p.kernel_w]
    else:
        raise ModelError(f"{ctx.layer.describe()}: pooling needs kernel_size or kernel_h and kernel_w "
                         f"(or global_pooling: true)")
    pad = [p.pad_h, p.pad_w] if (p.HasField("pad_h") or p.HasField("pad_w")) else [p.pad] * 2
    stride = [p.stride_h, p.stride_w] if (p.HasField("stride_h") or p.HasField("stride_w")) else [p.stride] * 2
    for k, pd, s in zip(kernel, pad, stride):
        if k <= 0 or s <= 0 or pd < 0 or pd >= k:
            raise ModelError(f"{ctx.layer.describe()}: kernel {kernel}, pad {pad}, stride {stride} are invalid "
                             f"(Caffe requires kernel > 0, stride > 0 and pad < kernel)")
    return p, shape, [int(k) for k in kernel], [int(x) for x in pad], [int(s) for s in stride]


@converter("Pooling")
def pooling(ctx: LayerContext) -> list[Shape]:
    ctx.expect_bottoms(1)
    ctx.expect_tops(1, 2)
    if len(ctx.outputs) == 2:
        raise ctx.fail("a second top (the max-pooling mask) is not supported")
    p, shape, kernel, pad, stride = _params(ctx)
    method = enum_name(p, "pool")
    if method not in ("MAX", "AVE"):
        raise ctx.fail(f"pool method {method} is not supported (MAX and AVE are)")
    if p.global_pooling:
        op = "GlobalMaxPool" if method == "MAX" else "GlobalAveragePool"
        ctx.node(op, [ctx.inputs[0]], ctx.outputs)
        return [(shape[0], shape[1], 1, 1)]

    # round_mode arrived in later BVLC Caffe; CEIL is what every older model was trained with.
    ceil = "round_mode" not in p.DESCRIPTOR.fields_by_name or enum_name(p, "round_mode") == "CEIL"
    out = [caffe_pool_output(n, k, pd, s, ceil) for n, k, pd, s in zip(shape[2:], kernel, pad, stride)]
    # Cells the last window reaches beyond in + pad (never negative; can be with FLOOR).
    overhang = [max(0, (o - 1) * s + k - (n + 2 * pd)) for o, s, k, n, pd in zip(out, stride, kernel, shape[2:], pad)]
    if method == "MAX":
        pads = [pad[0], pad[1], pad[0] + overhang[0], pad[1] + overhang[1]]
        ctx.node("MaxPool", [ctx.inputs[0]], ctx.outputs, kernel_shape=kernel, strides=stride, pads=pads)
        return [(shape[0], shape[1], *out)]

    if not any(overhang):
        ctx.node("AveragePool", [ctx.inputs[0]], ctx.outputs, kernel_shape=kernel, strides=stride,
                 pads=pad + pad, count_include_pad=1)
        return [(shape[0], shape[1], *out)]
    pads = [pad[0], pad[1], pad[0] + overhang[0], pad[1] + overhang[1]]
    mean = ctx.node("AveragePool", [ctx.inputs[0]], 1, kernel_shape=kernel, strides=stride, pads=pads,
                    count_include_pad=1)[0]
    div = np.outer(caffe_ave_divisors(shape[2], kernel[0], pad[0], stride[0], out[0]),
                   caffe_ave_divisors(shape[3], kernel[1], pad[1], stride[1], out[1]))
    rescale = (kernel[0] * kernel[1]) / div
    ctx.node("Mul", [mean, ctx.const("caffe_divisor", rescale.reshape(1, 1, *out))], ctx.outputs)
    return [(shape[0], shape[1], *out)]
