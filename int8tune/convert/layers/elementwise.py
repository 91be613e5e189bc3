"""Eltwise: SUM (with optional per-input coefficients), PROD, MAX over bottoms of one shape (Caffe's EltwiseLayer)."""

from __future__ import annotations

from ...errors import ModelError
from ..builder import LayerContext, Shape
from ..registry import converter
from ._common import enum_name


@converter("Eltwise")
def eltwise(ctx: LayerContext) -> list[Shape]:
    ctx.expect_tops(1)
    if len(ctx.inputs) < 2:
        raise ModelError(f"{ctx.layer.describe()}: Eltwise needs at least 2 bottoms, found {len(ctx.inputs)}")
    shape = ctx.shapes[0]
    for name, other in zip(ctx.inputs[1:], ctx.shapes[1:]):
        if tuple(other) != tuple(shape):
            raise ModelError(f"{ctx.layer.describe()}: bottom {name!r} has shape {other}, the first bottom "
                             f"{shape}; Eltwise needs equal shapes")
    p = ctx.param.eltwise_param
    op = enum_name(p, "operation")
    coeffs = [float(c) for c in p.coeff]
    if coeffs and (op != "SUM" or len(coeffs) != len(ctx.inputs)):
        raise ModelError(f"{ctx.layer.describe()}: coeff needs operation SUM and one value per bottom "
                         f"({len(ctx.inputs)}), found {len(coeffs)} for {op}")
    if op == "SUM":
        terms = list(ctx.inputs)
        if coeffs and any(c != 1.0 for c in coeffs):
            terms = [t if c == 1.0 else ctx.node("Mul", [t, ctx.const(f"coeff{i}", c)])[0]
                     for i, (t, c) in enumerate(zip(terms, coeffs))]
        # A chain of binary Adds rather than one Sum: onnxruntime turns DQ, DQ -> Add -> Q into an int8 QLinearAdd
        # and has no int8 form of Sum (left to right, so the float result is the same).
        acc = terms[0]
        for i, t in enumerate(terms[1:]):
            acc = ctx.node("Add", [acc, t], ctx.outputs if i == len(terms) - 2 else 1)[0]
    elif op == "PROD":
        acc = ctx.inputs[0]
        for i, t in enumerate(ctx.inputs[1:]):
            last = i == len(ctx.inputs) - 2
            acc = ctx.node("Mul", [acc, t], ctx.outputs if last else 1)[0]
    elif op == "MAX":
        ctx.node("Max", list(ctx.inputs), ctx.outputs)
    else:
        raise ctx.fail(f"Eltwise operation {op} is not supported")
    return [shape]
