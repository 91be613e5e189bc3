"""Convolution and Deconvolution (Caffe's ConvolutionParameter).

Output size (Caffe's BaseConvolutionLayer): conv  out = (in + 2*pad - (dilation*(k-1)+1)) // stride + 1;
deconv out = stride*(in-1) + dilation*(k-1) + 1 - 2*pad. Weights: conv (M, C/group, kh, kw), deconv
(C, M/group, kh, kw), which are also ONNX's Conv and ConvTranspose layouts.
"""

from __future__ import annotations

from ...errors import ModelError
from ..builder import LayerContext, Shape
from ..registry import converter
from ._common import spatial


def _geometry(ctx: LayerContext):
    p = ctx.param.convolution_param
    ctx.expect_bottoms(1)
    ctx.expect_tops(1)
    shape = ctx.shapes[0]
    if p.axis != 1:
        raise ctx.fail(f"convolution_param.axis {p.axis} is not supported (only the channel axis 1)")
    n_spatial = len(shape) - 2
    if n_spatial < 1:
        raise ModelError(f"{ctx.layer.describe()}: input {ctx.inputs[0]!r} has shape {shape}; convolution needs "
                         f"N, C and at least one spatial axis")
    kernel = spatial(ctx, p.kernel_size, "kernel_h", "kernel_w", None, n_spatial, "kernel_size", p)
    pad = spatial(ctx, p.pad, "pad_h", "pad_w", 0, n_spatial, "pad", p)
    stride = spatial(ctx, p.stride, "stride_h", "stride_w", 1, n_spatial, "stride", p)
    dilation = [int(d) for d in p.dilation] or [1]
    if len(dilation) == 1:
        dilation = dilation * n_spatial
    if len(dilation) != n_spatial:
        raise ModelError(f"{ctx.layer.describe()}: dilation has {len(dilation)} values for {n_spatial} spatial axes")
    for what, values in (("kernel_size", kernel), ("stride", stride), ("dilation", dilation)):
        if any(v <= 0 for v in values):  # Caffe's BaseConvolutionLayer::LayerSetUp: CHECK_GT(..., 0)
            raise ModelError(f"{ctx.layer.describe()}: {what} {values} must be positive in every spatial axis")
    group = int(p.group)
    channels = shape[1]
    if p.num_output <= 0:
        raise ModelError(f"{ctx.layer.describe()}: num_output must be positive, found {p.num_output}")
    if group <= 0 or channels % group or p.num_output % group:
        raise ModelError(f"{ctx.layer.describe()}: group {group} must divide the {channels} input channels and "
                         f"num_output {p.num_output}")
    return p, shape, kernel, pad, stride, dilation, group


def _bias(ctx: LayerContext, p, num_output: int):
    if not p.bias_term:
        return None
    return ctx.weight(1, (num_output,), "bias")


@converter("Convolution", "DepthwiseConvolution", "ConvolutionDepthwise")
def convolution(ctx: LayerContext) -> list[Shape]:
    p, shape, kernel, pad, stride, dilation, group = _geometry(ctx)
    if ctx.layer.type != "Convolution":  # the depthwise forks: one group per input channel
        group = shape[1]
    m = int(p.num_output)
    weight = ctx.weight(0, (m, shape[1] // group, *kernel), "weights")
    bias = _bias(ctx, p, m)
    out = [(size + 2 * pd - (d * (k - 1) + 1)) // s + 1
           for size, pd, k, s, d in zip(shape[2:], pad, kernel, stride, dilation)]
    w_name = ctx.const("weight", weight)
    inputs = [ctx.inputs[0], w_name]
    if bias is not None:
        inputs.append(ctx.const("bias", bias))
    ctx.node("Conv", inputs, ctx.outputs, main=True, kernel_shape=kernel, pads=pad + pad, strides=stride,
             dilations=dilation, group=group)
    ctx.record.weight = w_name
    ctx.record.bias = inputs[2] if bias is not None else None
    return [(shape[0], m, *out)]


@converter("Deconvolution")
def deconvolution(ctx: LayerContext) -> list[Shape]:
    p, shape, kernel, pad, stride, dilation, group = _geometry(ctx)
    m = int(p.num_output)
    weight = ctx.weight(0, (shape[1], m // group, *kernel), "weights")
    bias = _bias(ctx, p, m)
    out = [s * (size - 1) + d * (k - 1) + 1 - 2 * pd
           for size, pd, k, s, d in zip(shape[2:], pad, kernel, stride, dilation)]
    w_name = ctx.const("weight", weight)
    inputs = [ctx.inputs[0], w_name]
    if bias is not None:
        inputs.append(ctx.const("bias", bias))
    ctx.node("ConvTranspose", inputs, ctx.outputs, main=True, kernel_shape=kernel, pads=pad + pad,
             strides=stride, dilations=dilation, group=group)
    ctx.record.weight = w_name
    ctx.record.weight_axis = 1  # ConvTranspose weights are (C_in, M/group, k...)
    ctx.record.bias = inputs[2] if bias is not None else None
    return [(shape[0], m, *out)]
