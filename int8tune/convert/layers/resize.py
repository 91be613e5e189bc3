"""Upsample (darknet2caffe: nearest neighbour by an integer factor) and Interp (DeepLab/PSPNet: bilinear with
aligned corners)."""

from __future__ import annotations

from ...errors import ModelError
from ..builder import LayerContext, Shape
from ..registry import converter


@converter("Upsample")
def upsample(ctx: LayerContext) -> list[Shape]:
    """out[y, x] = in[y // s_h, x // s_w]: ONNX Resize, nearest, asymmetric coordinates, floor rounding."""
    ctx.expect_tops(1)
    if len(ctx.inputs) != 1:
        raise ctx.fail("Upsample with a second bottom (SegNet's max-unpooling by mask) is not supported")
    p = ctx.param.upsample_param
    shape = ctx.shapes[0]
    if len(shape) != 4:
        raise ModelError(f"{ctx.layer.describe()}: Upsample needs a 4-D input, found {shape}")
    fields = p.DESCRIPTOR.fields_by_name
    if "scale_h" in fields and (p.HasField("scale_h") or p.HasField("scale_w")):
        sh, sw = int(p.scale_h), int(p.scale_w)
    else:
        sh = sw = int(p.scale)
    for extra in ("upsample_h", "upsample_w", "pad_out_h", "pad_out_w"):
        if extra in fields and p.HasField(extra) and getattr(p, extra):
            raise ctx.fail(f"upsample_param.{extra} is not supported (only integer scale factors)")
    if sh < 1 or sw < 1:
        raise ModelError(f"{ctx.layer.describe()}: upsample scale must be a positive integer, found {sh}x{sw}")
    scales = ctx.const("scales", [1.0, 1.0, float(sh), float(sw)])
    ctx.node("Resize", [ctx.inputs[0], "", scales], ctx.outputs, mode="nearest",
             coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    return [(shape[0], shape[1], shape[2] * sh, shape[3] * sw)]


@converter("Interp")
def interp(ctx: LayerContext) -> list[Shape]:
    """Output size from (in Caffe's order of precedence) shrink+zoom factors, zoom, shrink, height/width, or
    the second bottom; bilinear with corners aligned: src = dst * (in - 1) / (out - 1)."""
    ctx.expect_bottoms(1, 2)
    ctx.expect_tops(1)
    p = ctx.param.interp_param
    shape = ctx.shapes[0]
    if len(shape) != 4:
        raise ModelError(f"{ctx.layer.describe()}: Interp needs a 4-D input, found {shape}")
    if p.pad_beg != 0 or p.pad_end != 0:
        raise ctx.fail("interp_param pad_beg/pad_end other than 0 are not supported")
    h, w = shape[2], shape[3]
    for factor in ("shrink_factor", "zoom_factor"):
        if len(ctx.inputs) == 1 and p.HasField(factor) and getattr(p, factor) < 1:  # Caffe: CHECK_GE(factor, 1)
            raise ModelError(f"{ctx.layer.describe()}: interp_param.{factor} must be at least 1, found "
                             f"{getattr(p, factor)}")
    if len(ctx.inputs) == 2:
        oh, ow = ctx.shapes[1][2], ctx.shapes[1][3]
    elif p.HasField("shrink_factor") and p.HasField("zoom_factor"):
        oh, ow = (h - 1) // p.shrink_factor + 1, (w - 1) // p.shrink_factor + 1
        oh, ow = oh + (oh - 1) * (p.zoom_factor - 1), ow + (ow - 1) * (p.zoom_factor - 1)
    elif p.HasField("zoom_factor"):
        oh, ow = h + (h - 1) * (p.zoom_factor - 1), w + (w - 1) * (p.zoom_factor - 1)
    elif p.HasField("shrink_factor"):
        oh, ow = (h - 1) // p.shrink_factor + 1, (w - 1) // p.shrink_factor + 1
    elif p.HasField("height") and p.HasField("width"):
        oh, ow = int(p.height), int(p.width)
    else:
        raise ModelError(f"{ctx.layer.describe()}: Interp needs zoom_factor, shrink_factor, height and width, or "
                         f"a second bottom")
    # Sizes = (N, C) of the input at run time + (oh, ow), so the graph keeps a free batch.
    n_c = ctx.node("Slice", [ctx.node("Shape", [ctx.inputs[0]])[0], ctx.int64s("s0", [0]), ctx.int64s("s1", [2])])[0]
    batch_free = ctx.node("Concat", [n_c, ctx.int64s("hw", [oh, ow])], axis=0)[0]
    ctx.node("Resize", [ctx.inputs[0], "", "", batch_free], ctx.outputs, mode="linear",
             coordinate_transformation_mode="align_corners")
    return [(shape[0], shape[1], oh, ow)]
