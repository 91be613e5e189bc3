"""Running a fully convolutional net at another input size: a copy of the net with a new input shape.

Every shape of the converted graph is derived from `CaffeNet.inputs` by the layer converters
(convert/converter.py `convert_net`: the input shapes seed `builder.shapes`, each converter computes its tops'
shapes from its bottoms'), and so are the shape-dependent constants: PriorBox boxes, Caffe's pooling overhang,
Reshape targets. Converting the copy therefore gives a graph for the new size, as Caffe's `Net::Reshape` would.

What cannot follow a new height and width is a learned weight sized by it: an InnerProduct that flattens a blob
whose size follows the input (LeNet's ip1 reads 50x4x4 values at 28x28, 50x5x5 at 32x32). Such a net is not fully
convolutional and is refused here, naming the layer. Other geometry a size may not fit (a Concat of an upsampled
blob and its skip connection at a height that is not a multiple of the stride) is reported by the converter,
naming the layer, when the copy is converted.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import ConfigError
from .net import CaffeNet, Layer


def with_input_shape(net: CaffeNet, shape: tuple[int, ...]) -> CaffeNet:
    """A copy of `net` whose single input has `shape` (N, C, H, W). `net` is not changed.

    Refused (ConfigError) for a net of several inputs, a shape that is not 4 positive integers, another channel
    count than the net's, and, when the height or width changes, a net that is not fully convolutional."""
    where = str(net.proto_path or net.name)
    if len(net.inputs) != 1:
        raise ConfigError(f"{where}: an input shape override needs a net with one input; this one has "
                          f"{len(net.inputs)}: {', '.join(net.inputs)}")
    (name, old), = net.inputs.items()
    new = _checked_shape(shape, name, where)
    if len(old) != 4:
        raise ConfigError(f"{where}: input {name!r} has shape {tuple(old)}; an input shape override needs a 4-D "
                          f"(N, C, H, W) input")
    if new[1] != old[1]:
        raise ConfigError(f"{where}: input shape {new} has {new[1]} channels, input {name!r} of the net has "
                          f"{old[1]} (shape {tuple(old)}); only the batch, height and width can change")
    if new[2:] != tuple(old[2:]):
        _refuse_size_bound_weights(net, name, where, tuple(old), new)
    # Containers copied, so that changing the copy never changes `net`; the frozen layers are shared.
    return dataclasses.replace(net, inputs={name: new}, layers=list(net.layers), blob_of=dict(net.blob_of),
                               dropped=list(net.dropped))


def _checked_shape(shape, name: str, where: str) -> tuple[int, ...]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise ConfigError(f"{where}: input shape {shape!r} for {name!r} is not a sequence of 4 integers "
                          f"(N, C, H, W)") from None
    if len(dims) != 4 or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims):
        raise ConfigError(f"{where}: input shape {shape!r} for {name!r} must be 4 integers (N, C, H, W)")
    for axis, d in zip("NCHW", dims):
        if d <= 0:
            raise ConfigError(f"{where}: input shape {tuple(int(x) for x in dims)} for {name!r}: {axis} is {int(d)}; "
                              f"every dimension must be positive")
    return tuple(int(d) for d in dims)


def _refuse_size_bound_weights(net: CaffeNet, input_name: str, where: str, old: tuple[int, ...],
                               new: tuple[int, ...]) -> None:
    """Follow which values change size with the input's height and width; refuse a learned layer reading one."""
    follows = {input_name}  # values whose shape follows the input's H and W
    for layer in net.layers:
        reads = [b for b in layer.bottoms if b in follows]
        if not reads:
            continue
        if layer.type == "InnerProduct":
            raise ConfigError(
                f"{where}: the net is not fully convolutional: {layer.describe()} flattens blob "
                f"{net.blob_of.get(reads[0], reads[0])!r}, whose size follows the input's height and width, so its "
                f"weights fit only the original input {old} (asked for {new})")
        if not _fixes_its_size(layer):
            follows.update(layer.tops)


def _fixes_its_size(layer: Layer) -> bool:
    """Layers whose output shape does not depend on their input's height and width."""
    if layer.type == "Pooling":
        return bool(layer.param.pooling_param.global_pooling)
    if layer.type == "Interp":  # resized to an explicit height and width (no factor, no reference bottom)
        p = layer.param.interp_param
        return (len(layer.bottoms) == 1 and p.HasField("height") and p.HasField("width")
                and not p.HasField("zoom_factor") and not p.HasField("shrink_factor"))
    return False
