"""Small helpers shared by the layer converters (parameter decoding, broadcasting shapes)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ...errors import ModelError
from ..builder import LayerContext, Shape


def spatial(ctx: LayerContext, repeated: Sequence[int], h_field: str, w_field: str, default: int | None,
            n_spatial: int, what: str, message) -> list[int]:
    """Caffe's `kernel_size`/`pad`/`stride`/`dilation` convention: a repeated value (one for all spatial axes or
    one per axis) or the explicit `_h`/`_w` pair, never both."""
    has_hw = message.HasField(h_field) or message.HasField(w_field)
    values = [int(v) for v in repeated]
    if has_hw:
        if values:
            raise ModelError(f"{ctx.layer.describe()}: {what} given both as {what} and as {h_field}/{w_field}")
        if n_spatial != 2:
            raise ModelError(f"{ctx.layer.describe()}: {h_field}/{w_field} only apply to 2-D spatial inputs")
        if not (message.HasField(h_field) and message.HasField(w_field)):
            if default is None:
                raise ModelError(f"{ctx.layer.describe()}: both {h_field} and {w_field} are needed")
        return [int(getattr(message, h_field)), int(getattr(message, w_field))]
    if not values:
        if default is None:
            raise ModelError(f"{ctx.layer.describe()}: {what} is required")
        return [default] * n_spatial
    if len(values) == 1:
        return values * n_spatial
    if len(values) != n_spatial:
        raise ModelError(f"{ctx.layer.describe()}: {what} has {len(values)} values for {n_spatial} spatial axes")
    return values


def channel_shape(rank: int, channels: int, axis: int = 1) -> Shape:
    """Shape that broadcasts a per-channel vector along `axis` of a rank-`rank` tensor."""
    return (channels,) + (1,) * (rank - axis - 1)


def canonical_axis(ctx: LayerContext, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ModelError(f"{ctx.layer.describe()}: axis {axis} is out of range for a {rank}-D input")
    return axis % rank


def batch_free_shape(shape: Shape) -> list[int]:
    """A Reshape target that copies the batch dimension (0) instead of fixing it."""
    return [0] + [int(d) for d in shape[1:]]


def as_f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def enum_name(message, field: str) -> str:
    """The symbolic name of an enum field's value (e.g. PoolingParameter.pool -> "MAX")."""
    descriptor = message.DESCRIPTOR.fields_by_name[field]
    value = getattr(message, field)
    return descriptor.enum_type.values_by_number[value].name
