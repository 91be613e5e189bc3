"""InnerProduct: y = x_flat . W^T + b, where x is flattened from `axis` on (Caffe's InnerProductLayer).

Weights are (num_output, K), or (K, num_output) with `transpose: true`. Axis 1 (the usual case) becomes
Flatten + Gemm, which onnxruntime and int8 engines run as one fully connected kernel.
"""

from __future__ import annotations

import numpy as np

from ...errors import ModelError
from ..builder import LayerContext, Shape
from ..registry import converter
from ._common import canonical_axis


@converter("InnerProduct")
def inner_product(ctx: LayerContext) -> list[Shape]:
    ctx.expect_bottoms(1)
    ctx.expect_tops(1)
    p = ctx.param.inner_product_param
    shape = ctx.shapes[0]
    axis = canonical_axis(ctx, p.axis, len(shape))
    if axis == 0:
        raise ctx.fail("axis 0 would flatten the batch; not supported")
    k = int(np.prod(shape[axis:]))
    n = int(p.num_output)
    if n <= 0:
        raise ModelError(f"{ctx.layer.describe()}: num_output must be positive, found {n}")
    if p.transpose:
        weight = ctx.weight(0, (k, n), "weights").T  # store (N, K) so Gemm always uses transB=1
    else:
        weight = ctx.weight(0, (n, k), "weights")
    bias = ctx.const("bias", ctx.weight(1, (n,), "bias")) if p.bias_term else None
    out_shape = (*shape[:axis], n)
    if axis == 1:
        flat = ctx.inputs[0]
        if len(shape) != 2:
            flat = ctx.node("Flatten", [ctx.inputs[0]], axis=1)[0]
        w_name = ctx.const("weight", np.ascontiguousarray(weight))
        ctx.node("Gemm", [flat, w_name] + ([bias] if bias else []), ctx.outputs, main=True, transB=1)
        ctx.record.weight_axis = 0
    else:
        # Leading axes beyond the batch stay; MatMul broadcasts over them. Weights stored (K, N).
        lead = [0] + [int(d) for d in shape[1:axis]]
        flat = ctx.node("Reshape", [ctx.inputs[0], ctx.int64s("shape", lead + [k])])[0]
        w_name = ctx.const("weight", np.ascontiguousarray(weight.T))
        mm = ctx.node("MatMul", [flat, w_name], ctx.outputs if bias is None else 1, main=True)[0]
        if bias is not None:
            ctx.node("Add", [mm, bias], ctx.outputs)
        ctx.record.weight_axis = 1
    ctx.record.weight = w_name
    ctx.record.bias = bias
    return [out_shape]
