"""Layers that move data without arithmetic: Concat, Slice, Flatten, Reshape, Permute, Crop, ShuffleChannel, Tile.

Where the batch axis is kept, the ONNX graph copies it (Reshape target 0), so the graph runs at any batch size.
"""

from __future__ import annotations

import numpy as np

from ...errors import ModelError
from ..builder import LayerContext, Shape
from ..registry import converter
from ._common import canonical_axis


@converter("Concat")
def concat(ctx: LayerContext) -> list[Shape]:
    ctx.expect_tops(1)
    p = ctx.param.concat_param
    shape = ctx.shapes[0]
    axis = canonical_axis(ctx, p.concat_dim if p.HasField("concat_dim") else p.axis, len(shape))
    for name, other in zip(ctx.inputs, ctx.shapes):
        if len(other) != len(shape) or any(a != b for i, (a, b) in enumerate(zip(other, shape)) if i != axis):
            raise ModelError(f"{ctx.layer.describe()}: bottom {name!r} has shape {other}, which differs from "
                             f"{shape} outside the concat axis {axis}")
    if len(ctx.inputs) == 1:
        ctx.identity(ctx.inputs[0], ctx.outputs[0])
        return [shape]
    ctx.node("Concat", list(ctx.inputs), ctx.outputs, axis=axis)
    out = list(shape)
    out[axis] = sum(s[axis] for s in ctx.shapes)
    return [tuple(out)]


@converter("Slice")
def slice_(ctx: LayerContext) -> list[Shape]:
    ctx.expect_bottoms(1)
    p = ctx.param.slice_param
    shape = ctx.shapes[0]
    axis = canonical_axis(ctx, p.slice_dim if p.HasField("slice_dim") else p.axis, len(shape))
    size, n = shape[axis], len(ctx.outputs)
    points = [int(x) for x in p.slice_point]
    if points:
        if len(points) != n - 1 or points != sorted(points) or points[0] <= 0 or points[-1] >= size:
            raise ModelError(f"{ctx.layer.describe()}: slice_point {points} must be {n - 1} increasing values "
                             f"inside (0, {size}) for {n} tops")
        bounds = [0] + points + [size]
    else:
        if size % n:
            raise ModelError(f"{ctx.layer.describe()}: axis {axis} of size {size} does not split evenly into "
                             f"{n} tops; give slice_point")
        bounds = [i * size // n for i in range(n + 1)]
    sizes = [b - a for a, b in zip(bounds, bounds[1:])]
    if n == 1:
        ctx.identity(ctx.inputs[0], ctx.outputs[0])
    else:
        ctx.node("Split", [ctx.inputs[0], ctx.int64s("split", sizes)], ctx.outputs, axis=axis)
    return [tuple(s if i == axis else d for i, d in enumerate(shape)) for s in sizes]


@converter("Flatten")
def flatten(ctx: LayerContext) -> list[Shape]:
    ctx.expect_bottoms(1)
    ctx.expect_tops(1)
    p = ctx.param.flatten_param
    shape = ctx.shapes[0]
    axis = canonical_axis(ctx, p.axis, len(shape))
    end = canonical_axis(ctx, p.end_axis, len(shape))
    if end < axis:
        raise ModelError(f"{ctx.layer.describe()}: end_axis {p.end_axis} comes before axis {p.axis}")
    out = tuple(shape[:axis]) + (int(np.prod(shape[axis:end + 1])),) + tuple(shape[end + 1:])
    if axis == 0:
        ctx.node("Reshape", [ctx.inputs[0], ctx.int64s("shape", [-1] + list(out[1:]))], ctx.outputs)
    else:
        ctx.node("Reshape", [ctx.inputs[0], ctx.int64s("shape", [0] + list(out[1:]))], ctx.outputs)
    return [out]


def caffe_reshape(shape: Shape, dims: list[int], axis: int, num_axes: int, where: str) -> Shape:
    """Caffe's ReshapeLayer: replace axes [axis, axis+num_axes) by `dims`, 0 copying, one -1 inferred."""
    rank = len(shape)
    start = axis if axis >= 0 else rank + axis + 1
    end = rank if num_axes == -1 else start + num_axes
    if not 0 <= start <= rank or end > rank:
        raise ModelError(f"{where}: axis {axis} / num_axes {num_axes} do not fit a {rank}-D input")
    middle: list[int] = []
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= rank:
                raise ModelError(f"{where}: dim {i} is 0 (copy) but the input has no axis {start + i}")
            middle.append(shape[start + i])
        else:
            middle.append(d)
    out = list(shape[:start]) + middle + list(shape[end:])
    if out.count(-1) > 1:
        raise ModelError(f"{where}: more than one -1 in reshape dims {dims}")
    total = int(np.prod(shape))
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        if known == 0 or total % known:
            raise ModelError(f"{where}: cannot infer the -1 in {dims}: {total} values over {known}")
        out[out.index(-1)] = total // known
    if int(np.prod(out)) != total:
        raise ModelError(f"{where}: reshape of {shape} ({total} values) to {tuple(out)} changes the count")
    return tuple(out)


@converter("Reshape")
def reshape(ctx: LayerContext) -> list[Shape]:
    ctx.expect_bottoms(1)
    ctx.expect_tops(1)
    p = ctx.param.reshape_param
    shape = ctx.shapes[0]
    out = caffe_reshape(shape, [int(d) for d in p.shape.dim], p.axis, p.num_axes, ctx.layer.describe())
    target = list(out)
    keeps_batch = out and out[0] == shape[0] and int(np.prod(out[1:])) == int(np.prod(shape[1:]))
    if keeps_batch:
        target[0] = 0  # copy the batch, whatever it is at run time
    ctx.node("Reshape", [ctx.inputs[0], ctx.int64s("shape", target)], ctx.outputs)
    return [out]


@converter("Permute")
def permute(ctx: LayerContext) -> list[Shape]:
    """SSD's Permute: `order` lists the new axis order; axes it leaves out follow in their original order."""
    ctx.expect_bottoms(1)
    ctx.expect_tops(1)
    shape = ctx.shapes[0]
    order = [canonical_axis(ctx, int(o), len(shape)) for o in ctx.param.permute_param.order]
    if len(set(order)) != len(order):
        raise ModelError(f"{ctx.layer.describe()}: permute order {order} repeats an axis")
    order += [i for i in range(len(shape)) if i not in order]
    if order == list(range(len(shape))):
        ctx.identity(ctx.inputs[0], ctx.outputs[0])
    else:
        ctx.node("Transpose", [ctx.inputs[0]], ctx.outputs, perm=order)
    return [tuple(shape[i] for i in order)]


@converter("Crop")
def crop(ctx: LayerContext) -> list[Shape]:
    """Crop bottom 0 to the shape of bottom 1 from `axis` on, starting at `offset` (one value for all axes or
    one per cropped axis)."""
    ctx.expect_bottoms(2)
    ctx.expect_tops(1)
    p = ctx.param.crop_param
    shape, ref = ctx.shapes
    axis = canonical_axis(ctx, p.axis, len(shape))
    offsets = [int(o) for o in p.offset]
    n_axes = len(shape) - axis
    if len(offsets) not in (0, 1, n_axes):
        raise ModelError(f"{ctx.layer.describe()}: {len(offsets)} offsets for {n_axes} cropped axes")
    if len(offsets) <= 1:
        offsets = (offsets or [0]) * n_axes
    starts, ends, axes = [], [], []
    out = list(shape)
    for i, off in zip(range(axis, len(shape)), offsets):
        if off + ref[i] > shape[i]:
            raise ModelError(f"{ctx.layer.describe()}: crop of axis {i} at offset {off} to size {ref[i]} runs past "
                             f"the input size {shape[i]}")
        out[i] = ref[i]
        if off or ref[i] != shape[i]:
            starts.append(off)
            ends.append(off + ref[i])
            axes.append(i)
    if axes:
        ctx.node("Slice", [ctx.inputs[0], ctx.int64s("starts", starts), ctx.int64s("ends", ends),
                           ctx.int64s("axes", axes)], ctx.outputs)
    else:
        ctx.identity(ctx.inputs[0], ctx.outputs[0])
    return [tuple(out)]


@converter("ShuffleChannel")
def shuffle_channel(ctx: LayerContext) -> list[Shape]:
    """ShuffleNet's channel shuffle: view C as (group, C/group), swap the two, flatten back."""
    ctx.expect_bottoms(1)
    ctx.expect_tops(1)
    shape = ctx.shapes[0]
    group = int(ctx.param.shuffle_channel_param.group)
    if len(shape) != 4 or group <= 0 or shape[1] % group:
        raise ModelError(f"{ctx.layer.describe()}: group {group} must divide the channels of a 4-D input, "
                         f"input shape {shape}")
    n, c, h, w = shape
    grouped = ctx.node("Reshape", [ctx.inputs[0], ctx.int64s("grouped", [0, group, c // group, h, w])])[0]
    swapped = ctx.node("Transpose", [grouped], perm=[0, 2, 1, 3, 4])[0]
    ctx.node("Reshape", [swapped, ctx.int64s("shape", [0, c, h, w])], ctx.outputs)
    return [shape]


@converter("Tile")
def tile(ctx: LayerContext) -> list[Shape]:
    ctx.expect_bottoms(1)
    ctx.expect_tops(1)
    p = ctx.param.tile_param
    shape = ctx.shapes[0]
    axis = canonical_axis(ctx, p.axis, len(shape))
    reps = [1] * len(shape)
    reps[axis] = int(p.tiles)
    ctx.node("Tile", [ctx.inputs[0], ctx.int64s("repeats", reps)], ctx.outputs)
    return [tuple(d * r for d, r in zip(shape, reps))]
