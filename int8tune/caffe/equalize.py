"""Cross-layer equalization: rescaling channels between two convolutions so int8 loses less, fp32 unchanged.

Data-free equalization of DFQ (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", ICCV 2019, section 4.1). For a convolution P whose output goes through a positively homogeneous
activation f (ReLU, leaky ReLU, PReLU: f(s*x) = s*f(x) for s > 0) into convolutions Q (and nothing else),
scaling P's output channel c by s_c and dividing the input channel c of every Q by s_c computes the same
function. With s_c = sqrt(r2_c / r1_c) (r1_c: max |w| of P's channel c after BatchNorm/Scale folding, the
weights int8 quantizes; r2_c: max |w| over Q's weights reading channel c) both sides end with the range
sqrt(r1_c * r2_c). In depthwise-separable nets a few channels otherwise own the whole per-tensor activation
range and the rest round to a handful of levels (measured on yoloface_500k_v2: docs/equalization.md).

Scales are bounded to [1/MAX_SCALE, MAX_SCALE] so a near-dead channel is not blown up. Pairs are equalized once
each, in network order; a depthwise convolution between two pairs sees both its scalings.

The scaling is applied to the net as written (unfolded), so the equalized caffemodel runs with the original
prototxt: P's weights and bias are multiplied by s; a BatchNorm or Scale after P keeps computing the same affine
on the scaled values once its mean (BatchNorm) or bias (Scale) is multiplied by s too; Q's input-channel weights
are divided by s.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .fold import fold_batchnorm_scale
from .net import CaffeNet, Layer

MAX_SCALE = 16.0
CONV_TYPES = frozenset({"Convolution", "DepthwiseConvolution", "ConvolutionDepthwise"})
HOMOGENEOUS = frozenset({"ReLU", "PReLU"})  # f(s*x) = s*f(x) for s > 0 (ReLU with any negative_slope)


@dataclass(frozen=True)
class EqualizedPair:
    producer: str  # layer P
    activation: str  # the ReLU/PReLU between
    consumers: tuple[str, ...]  # layers Q
    scale: np.ndarray  # s per channel of P's output

    def describe(self) -> str:
        return (f"{self.producer} -> {self.activation} -> {', '.join(self.consumers)}: scale median "
                f"{float(np.median(self.scale)):.3g} "
                f"(range {float(self.scale.min()):.3g}-{float(self.scale.max()):.3g})")


@dataclass
class Equalization:
    net: CaffeNet  # the equalized net, unfolded like the input
    pairs: list[EqualizedPair] = field(default_factory=list)
    changed: dict[str, tuple[np.ndarray, ...]] = field(default_factory=dict)  # layer -> its new blobs


def _group(layer: Layer) -> int:
    return int(layer.param.convolution_param.group) or 1


def _reads_channel_rows(q: Layer, channels: int) -> np.ndarray | None:
    """For a consumer Q of a `channels`-channel value: None when every output row reads every input channel
    (group 1: the input-channel axis scales), else the input channel each output row reads (depthwise, any
    channel multiplier). Other grouped layouts raise ValueError: their pairs are left alone."""
    g = _group(q)
    if g == 1:
        return None
    w = q.blobs[0]
    if g == channels and w.ndim >= 2 and w.shape[1] == 1 and w.shape[0] % channels == 0:
        return np.arange(w.shape[0]) // (w.shape[0] // channels)
    raise ValueError("grouped")


def _pairs(folded: CaffeNet) -> list[tuple[Layer, Layer, list[Layer]]]:
    consumers = folded.consumers()
    outputs = set(folded.outputs)
    found = []
    for p in folded.layers:
        if p.type not in CONV_TYPES or len(p.blobs) < 1 or len(p.tops) != 1 or p.tops[0] in outputs:
            continue
        readers = consumers.get(p.tops[0], [])
        if len(readers) != 1 or readers[0].type not in HOMOGENEOUS or readers[0].bottoms != p.tops[0:1]:
            continue
        act = readers[0]
        a = act.tops[0]
        qs = consumers.get(a, [])
        if a in outputs or not qs or any(q.type not in CONV_TYPES or q.bottoms != (a,) or not q.blobs for q in qs):
            continue
        channels = p.blobs[0].shape[0]
        try:
            for q in qs:
                _reads_channel_rows(q, channels)
        except ValueError:
            continue
        found.append((p, act, qs))
    return found


def equalizable_pairs(net: CaffeNet) -> int:
    """How many pairs `equalize_net` would rescale (for a hint when --equalize is off)."""
    return len(_pairs(fold_batchnorm_scale(net).net))


def _input_range(q: Layer, w: np.ndarray, channels: int) -> np.ndarray:
    rows = _reads_channel_rows(q, channels)
    if rows is None:
        return np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != 1))
    per_row = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    out = np.zeros(channels)
    np.maximum.at(out, rows, per_row)
    return out


def _divide_inputs(q: Layer, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    rows = _reads_channel_rows(q, s.size)
    if rows is None:
        return w / s.reshape((1, -1) + (1,) * (w.ndim - 2))
    return w / s[rows].reshape((-1,) + (1,) * (w.ndim - 1))


def equalize_net(net: CaffeNet) -> Equalization:
    """The net with every Conv -> ReLU/PReLU -> Conv(s) pair equalized (see the module docstring)."""
    fold = fold_batchnorm_scale(net)
    work = {l.name: l.blobs[0].astype(np.float64) for l in fold.net.layers if l.type in CONV_TYPES and l.blobs}
    out_scale: dict[str, np.ndarray] = {}  # P -> product of the scales of its output channels
    in_scale: dict[str, np.ndarray] = {}  # Q -> product of the scales of its input channels
    pairs: list[EqualizedPair] = []
    for p, act, qs in _pairs(fold.net):
        w1 = work[p.name]
        channels = w1.shape[0]
        r1 = np.abs(w1.reshape(channels, -1)).max(axis=1)
        r2 = np.max([_input_range(q, work[q.name], channels) for q in qs], axis=0)
        s = np.ones(channels)
        live = (r1 > 0) & (r2 > 0)
        s[live] = np.clip(np.sqrt(r2[live] / r1[live]), 1.0 / MAX_SCALE, MAX_SCALE)
        work[p.name] = w1 * s.reshape((-1,) + (1,) * (w1.ndim - 1))
        out_scale[p.name] = out_scale.get(p.name, np.ones(channels)) * s
        for q in qs:
            work[q.name] = _divide_inputs(q, work[q.name], s)
            in_scale[q.name] = in_scale.get(q.name, np.ones(channels)) * s
        pairs.append(EqualizedPair(p.name, act.name, tuple(q.name for q in qs), s))
    changed = _apply(net, fold.folded, out_scale, in_scale)
    layers = [replace(l, blobs=changed[l.name]) if l.name in changed else l for l in net.layers]
    return Equalization(replace(net, layers=layers), pairs, changed)


def _apply(net: CaffeNet, folded: dict[str, list[str]], out_scale: dict[str, np.ndarray],
           in_scale: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, ...]]:
    by_name = {l.name: l for l in net.layers}
    blobs = {name: [b.astype(np.float64) for b in by_name[name].blobs]
             for name in set(out_scale) | set(in_scale) | {a for p in out_scale for a in folded.get(p, [])}}
    for name, s in out_scale.items():
        w = blobs[name]
        w[0] = w[0] * s.reshape((-1,) + (1,) * (w[0].ndim - 1))
        if len(w) > 1 and by_name[name].param.convolution_param.bias_term:
            w[1] = w[1] * s.reshape(w[1].shape)
        for affine in folded.get(name, []):  # same affine on s*x: BatchNorm mean, Scale bias scale with x
            layer, b = by_name[affine], blobs[affine]
            if layer.type == "BatchNorm":
                b[0] = b[0] * s.reshape(b[0].shape)
            elif layer.param.scale_param.bias_term and len(b) > 1:
                b[1] = b[1] * s.reshape(b[1].shape)
    for name, s in in_scale.items():
        blobs[name][0] = _divide_inputs(by_name[name], blobs[name][0], s)
    return {name: tuple(b.astype(np.float32) for b in bs) for name, bs in blobs.items()}


def write_equalized_caffemodel(original: Path, equalization: Equalization, out: Path) -> Path:
    """The original caffemodel with the changed layers' blobs replaced (runs with the original prototxt)."""
    from .unfold import write_caffemodel

    return write_caffemodel(original, equalization.changed, out)
