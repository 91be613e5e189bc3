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
    # Eltwise SUM -> the BN/Scale layers after it merged into the convolutions that feed it (fold_through_sums)
    through_sums: dict[str, list[str]] = field(default_factory=dict)
    # convolution -> the per-output-channel factor a sum's BN/Scale multiplied its weights by: engines that do
    # not fold through sums (ncnn, TensorRT, Intel Caffe) need the weight thresholds of the unscaled weights
    sum_scales: dict[str, np.ndarray] = field(default_factory=dict)
    # convolution -> what that fold added to its (already scaled) bias: b_f = a * b + offset (caffe/unfold.py)
    sum_offsets: dict[str, np.ndarray] = field(default_factory=dict)


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


def _affine_chain(net: CaffeNet, consumers: dict[str, list[Layer]], top: str, channels: int
                  ) -> tuple[list[Layer], str]:
    """The foldable BatchNorm/Scale layers that read `top` one after the other (each the only reader of the value
    before it, none a net output), and the value the last one writes."""
    chain: list[Layer] = []
    while True:
        readers = consumers.get(top, [])
        if len(readers) != 1 or top in net.outputs:
            break
        nxt = readers[0]
        if nxt.type not in ("BatchNorm", "Scale") or nxt.bottoms != (top,) or _affine_of(nxt, channels) is None:
            break
        chain.append(nxt)
        top = nxt.tops[0]
    return chain, top


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
        chain, top = _affine_chain(net, consumers, layer.tops[0], channels)
        if not chain:
            out.append(layer)
            continue
        a_total, c_total = chain_affine(chain, channels)
        out.append(_merged(layer, a_total, c_total, top))
        folded[layer.name] = [l.name for l in chain]
        skip.update(l.name for l in chain)
    new_net = replace(net, layers=out)
    return FoldResult(new_net, folded)


def fold_through_sums(result: FoldResult) -> FoldResult:
    """Merge a BatchNorm/Scale chain that follows an Eltwise SUM into the convolutions that feed the sum.

    Pre-activation ResNets (res10's SSD face detector) run sum -> BatchNorm -> Scale -> ReLU: left as they are, the
    BatchNorm and Scale run in float between a dequantize and a quantize in onnxruntime. As y = a*(k1*x1 + k2*x2)
    + c = k1*(a*x1 + c/k1) + k2*(a*x2), the chain folds into the producers x1, x2 when each is a convolution
    whose output only the sum reads; the sum then writes the chain's last value and stays an int8 Add (its ReLU
    folded into its output quantizer). The net computes the same function to fp32 rounding. Run after
    fold_batchnorm_scale (a convolution's own BatchNorm is merged first)."""
    net = result.net
    consumers = net.consumers()
    producer = net.producer()
    replaced: dict[str, Layer] = {}
    drop: set[str] = set()
    through: dict[str, list[str]] = {}
    scales: dict[str, np.ndarray] = dict(result.sum_scales)
    offsets: dict[str, np.ndarray] = dict(result.sum_offsets)
    new_sums: dict[str, Layer] = {}
    for layer in net.layers:
        if layer.type != "Eltwise" or len(layer.tops) != 1 or len(set(layer.bottoms)) != len(layer.bottoms):
            continue
        p = layer.param.eltwise_param
        if p.operation != caffe_pb2.EltwiseParameter.SUM:
            continue
        coeffs = list(p.coeff) or [1.0] * len(layer.bottoms)
        if len(coeffs) != len(layer.bottoms) or coeffs[0] == 0:
            continue
        feeders = [producer.get(b) for b in layer.bottoms]
        if not all(f is not None and _foldable_target(f) and f.name not in replaced and len(f.tops) == 1
                   and consumers.get(b, []) == [layer] and b not in net.outputs
                   for f, b in zip(feeders, layer.bottoms)):
            continue
        channels = _num_output(feeders[0])
        if any(_num_output(f) != channels for f in feeders):
            continue
        chain, top = _affine_chain(net, consumers, layer.tops[0], channels)
        a_total, c_total = chain_affine(chain, channels) if chain else (np.ones(channels), np.zeros(channels))
        if not chain or not np.all(np.isfinite(a_total) & (a_total != 0)) or not np.all(np.isfinite(c_total)):
            continue  # a zero scale would make the engines' unfolded weight thresholds infinite
        for k, f in enumerate(feeders):
            offset = c_total / coeffs[0] if k == 0 else np.zeros(channels)
            replaced[f.name] = _merged(f, a_total, offset, f.tops[0])
            offsets[f.name] = offsets.get(f.name, np.zeros(channels)) * a_total + offset
            scales[f.name] = scales.get(f.name, np.ones(channels)) * a_total
        user_top = chain[-1].user_tops[0] if chain[-1].user_tops else layer.user_tops[0]
        new_sums[layer.name] = replace(layer, tops=(top,), user_tops=(user_top,))
        through[layer.name] = [l.name for l in chain]
        drop.update(l.name for l in chain)
    if not through:
        return result
    layers = [new_sums.get(l.name, replaced.get(l.name, l)) for l in net.layers if l.name not in drop]
    return FoldResult(replace(net, layers=layers), result.folded, {**result.through_sums, **through}, scales,
                      offsets)


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
