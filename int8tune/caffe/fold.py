"""Folding BatchNorm and Scale into the convolution before them, as int8 engines do before quantizing.

ncnn (ncnnoptimize fuse_convolution_batchnorm / fuse_convolution_scale), TensorRT and TNN all merge a per-channel
affine that directly follows a Convolution / InnerProduct into its weights and bias, then quantize the merged
weights. The int8 model must therefore quantize W' = W * a (per output channel) with bias b' = b * a + c, where
y = a * x + c is the BatchNorm (a = 1/sqrt(var*f + eps), c = -mean*f*a) followed by Scale (a *= s, c = c*s + t).

A BatchNorm/Scale is folded only when it reads the convolution's output value, nothing else reads that value,
BatchNorm uses global statistics, and Scale has a single bottom and acts on the channel axis. The folded net
computes the same function (to fp32 rounding); the folded layers disappear and the convolution writes the
last value of the chain. `FoldResult.folded` records which layers went where, for reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .net import CaffeNet, Layer
from .schema import caffe_pb2

FOLD_TARGETS = frozenset({"Convolution", "InnerProduct", "DepthwiseConvolution", "ConvolutionDepthwise"})


@dataclass
class FoldResult:
    net: CaffeNet
    folded: dict[str, list[str]] = field(default_factory=dict)  # conv layer -> BN/Scale layers merged into it


def _affine_of(layer: Layer, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(a, c) with y = a*x + c per channel for a foldable BatchNorm/Scale, else None."""
    if layer.type == "BatchNorm":
        p = layer.param.batch_norm_param
        if p.HasField("use_global_stats") and not p.use_global_stats:
            return None
        if len(layer.blobs) < 3 or layer.blobs[0].size != channels:
            return None
        mean, var = layer.blobs[0].reshape(-1).astype(np.float64), layer.blobs[1].reshape(-1).astype(np.float64)
        f = float(layer.blobs[2].reshape(-1)[0])
        factor = 0.0 if f == 0 else 1.0 / f
        a = 1.0 / np.sqrt(var * factor + float(p.eps))
        return a, -mean * factor * a
    if layer.type == "Scale":
        p = layer.param.scale_param
        if len(layer.bottoms) != 1 or p.axis not in (1, -3) or p.num_axes != 1 or not layer.blobs:
            return None
        s = layer.blobs[0].reshape(-1).astype(np.float64)
        if s.size != channels:
            return None
        t = (layer.blobs[1].reshape(-1).astype(np.float64) if p.bias_term and len(layer.blobs) > 1
             else np.zeros(channels))
        return s, t
    return None


def chain_affine(chain: list[Layer], channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, c) of a chain of foldable BatchNorm/Scale layers, y = a*x + c per channel, in the float64 arithmetic
    and order of the fold (caffe/unfold.py inverts it and must meet the same numbers)."""
    a_total = np.ones(channels)
    c_total = np.zeros(channels)
    for layer in chain:
        affine = _affine_of(layer, channels)
        if affine is None:
            raise ValueError(f"{layer.describe()} is not a foldable affine")
        a, c = affine
        a_total, c_total = a_total * a, c_total * a + c
    return a_total, c_total


def affine_of(layer: Layer, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(a, c) with y = a*x + c per channel for a foldable BatchNorm/Scale, else None."""
    return _affine_of(layer, channels)


def fold_batchnorm_scale(net: CaffeNet) -> FoldResult:
    consumers = net.consumers()
    layers = list(net.layers)
    folded: dict[str, list[str]] = {}
    out: list[Layer] = []
    skip: set[str] = set()
    for layer in layers:
        if layer.name in skip:
            continue
        if not _foldable_target(layer):
            out.append(layer)
            continue
        channels = _num_output(layer)
        top = layer.tops[0]
        chain: list[Layer] = []
        while True:
            readers = consumers.get(top, [])
            if len(readers) != 1 or top in net.outputs:
                break
            nxt = readers[0]
            if nxt.type not in ("BatchNorm", "Scale") or nxt.bottoms != (top,):
                break
            if _affine_of(nxt, channels) is None:
                break
            chain.append(nxt)
            top = nxt.tops[0]
        if not chain:
            out.append(layer)
            continue
        a_total, c_total = chain_affine(chain, channels)
        out.append(_merged(layer, a_total, c_total, top))
        folded[layer.name] = [l.name for l in chain]
        skip.update(l.name for l in chain)
    new_net = replace(net, layers=out)
    return FoldResult(new_net, folded)


def _num_output(layer: Layer) -> int:
    sub = layer.param.inner_product_param if layer.type == "InnerProduct" else layer.param.convolution_param
    return int(sub.num_output)


def _foldable_target(layer: Layer) -> bool:
    if layer.type not in FOLD_TARGETS or not layer.blobs or len(layer.tops) != 1:
        return False
    if layer.type == "InnerProduct" and layer.param.inner_product_param.transpose:
        return False  # weights are (K, N): scaling would run along the other axis; rare, left unfolded
    return layer.blobs[0].size % _num_output(layer) == 0


def _merged(layer: Layer, a: np.ndarray, c: np.ndarray, top: str) -> Layer:
    weight = layer.blobs[0].astype(np.float64)
    # Output channels lead in Caffe's layouts (Convolution (M, C/g, kh, kw), InnerProduct (N, K), legacy 4-D
    # blobs included once flattened per output).
    new_weight = (weight.reshape(a.size, -1) * a[:, None]).reshape(weight.shape).astype(np.float32)
    param = caffe_pb2.LayerParameter()
    param.CopyFrom(layer.param)
    sub = param.inner_product_param if layer.type == "InnerProduct" else param.convolution_param
    old_bias = layer.blobs[1].reshape(-1).astype(np.float64) if sub.bias_term and len(layer.blobs) > 1 \
        else np.zeros(a.size)
    sub.bias_term = True
    new_bias = (old_bias * a + c).astype(np.float32)
    return replace(layer, tops=(top,), param=param, blobs=(new_weight, new_bias),
                   user_tops=(layer.user_tops[0],))
