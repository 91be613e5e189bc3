"""Weights and biases changed on the folded net, carried back into the net as written, and written as a caffemodel.

The weight levers (quant/adaround.py, quant/bias_correction.py) work on what int8 quantizes: a convolution with
the BatchNorm/Scale after it merged in (caffe/fold.py: W_f = W * a, b_f = b * a + c per output channel). The
caffemodel they write must run with the original prototxt, so each change goes back to the layer that holds it:

- weights: W = W_f / a, then each float32 element moved by a few ulps where needed so that the fold computes
  W_f again bit for bit (float32(W * a) in float64, as fold.py does); an element no float32 reaches keeps the
  nearest one (its folded value is then off by one ulp, which no int8 level can see);
- biases: the convolution's own bias when it has one, else the bias of the last Scale of the chain, else the
  BatchNorm's mean: the one term of b_f that the change can live in. A layer with none of them (no bias term, a
  Scale without bias, no BatchNorm) cannot carry a bias change (`bias_carrier` says so beforehand).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import ModelError
from .fold import FoldResult, affine_of, chain_affine
from .net import CaffeNet, Layer


def _conv_bias(layer: Layer) -> bool:
    sub = layer.param.inner_product_param if layer.type == "InnerProduct" else layer.param.convolution_param
    return bool(sub.bias_term) and len(layer.blobs) > 1


def bias_carrier(net: CaffeNet, fold: FoldResult, layer: str) -> str | None:
    """The layer whose blobs a change of `layer`'s folded bias goes into, or None when there is none."""
    by_name = {l.name: l for l in net.layers}
    if _conv_bias(by_name[layer]):
        return layer
    chain = [by_name[n] for n in fold.folded.get(layer, [])]
    for l in reversed(chain):
        if l.type == "Scale" and l.param.scale_param.bias_term and len(l.blobs) > 1:
            return l.name
    for l in reversed(chain):
        if l.type == "BatchNorm" and float(l.blobs[2].reshape(-1)[0]) != 0:
            return l.name
    return None


def _unfold_weight(target: np.ndarray, current: np.ndarray, a: np.ndarray) -> np.ndarray:
    """float32 W with float32(float64(W) * a) == target (per output channel a), as near as float32 allows."""
    shape = current.shape
    t = target.astype(np.float32).reshape(a.size, -1)
    a2 = a[:, None]
    live = np.broadcast_to(a2 != 0, t.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(live, t.astype(np.float64) / a2, current.reshape(a.size, -1)).astype(np.float32)
    for _ in range(3):  # a few ulps either way (the fold rounds W * a once)
        got = (w.astype(np.float64) * a2).astype(np.float32)
        off = live & (got != t)
        if not off.any():
            break
        towards = np.where(got < t, np.float32(np.inf), np.float32(-np.inf)) * np.sign(a2).astype(np.float32)
        moved = np.nextafter(w, towards).astype(np.float32)
        better = np.abs((moved.astype(np.float64) * a2).astype(np.float32).astype(np.float64) - t) \
            < np.abs(got.astype(np.float64) - t)
        w = np.where(off & better, moved, w)
    return w.reshape(shape)


def unfold_changes(net: CaffeNet, fold: FoldResult, weights: dict[str, np.ndarray] | None = None,
                   biases: dict[str, np.ndarray] | None = None) -> dict[str, tuple[np.ndarray, ...]]:
    """The new blobs of every layer of `net` (as written) that the folded `weights` (Caffe layout of the folded
    layer) and `biases` ((M,)) change, by layer name."""
    weights, biases = weights or {}, biases or {}
    by_name = {l.name: l for l in net.layers}
    folded = {l.name: l for l in fold.net.layers}
    blobs: dict[str, list[np.ndarray]] = {}

    def blobs_of(name: str) -> list[np.ndarray]:
        if name not in blobs:
            blobs[name] = [np.array(b, copy=True) for b in by_name[name].blobs]
        return blobs[name]

    for name in set(weights) | set(biases):
        layer = by_name.get(name)
        if layer is None or name not in folded:
            raise ModelError(f"layer {name!r} is not in {net.proto_path or net.name}: cannot write its weights")
        sub = layer.param.inner_product_param if layer.type == "InnerProduct" else layer.param.convolution_param
        channels = int(sub.num_output)
        chain = [by_name[n] for n in fold.folded.get(name, [])]
        a, c = chain_affine(chain, channels) if chain else (np.ones(channels), np.zeros(channels))
        # a BatchNorm/Scale after a sum this convolution feeds was folded in on top (fold_through_sums)
        a_sum = fold.sum_scales.get(name)
        if a_sum is not None:
            a, c = a * a_sum, c * a_sum + fold.sum_offsets.get(name, np.zeros(channels))
        scaled = bool(chain) or a_sum is not None
        if name in weights:
            target = np.asarray(weights[name], dtype=np.float32).reshape(layer.blobs[0].shape)
            blobs_of(name)[0] = _unfold_weight(target, layer.blobs[0], a) if scaled else target
        if name in biases:
            _unfold_bias(name, np.asarray(biases[name], dtype=np.float64).reshape(-1), chain, a, c, net, fold,
                         blobs_of, by_name, a_sum)
    return {name: tuple(np.asarray(b, dtype=np.float32) for b in bs) for name, bs in blobs.items()}


def _unfold_bias(name: str, target: np.ndarray, chain: list[Layer], a: np.ndarray, c: np.ndarray, net: CaffeNet,
                 fold: FoldResult, blobs_of, by_name, a_sum: np.ndarray | None = None) -> None:
    carrier = bias_carrier(net, fold, name)
    if carrier is None:
        raise ModelError(f"{by_name[name].describe()}: no bias term, no Scale bias and no BatchNorm after it: a "
                         f"bias change has nowhere to go")
    layer = by_name[name]
    if carrier == name:
        b = blobs_of(name)
        with np.errstate(divide="ignore", invalid="ignore"):
            new = np.where(a != 0, (target - c) / a, b[1].reshape(-1).astype(np.float64))
        b[1] = new.astype(np.float32).reshape(b[1].shape)
        return
    # y = a_after * (a_j x_j + c_j) + rest: moving c_j by d moves the folded bias by d * a_after
    k = [l.name for l in chain].index(carrier)
    after = np.ones(a.size) if a_sum is None else np.asarray(a_sum, dtype=np.float64)
    for l in chain[k + 1:]:
        after = after * affine_of(l, a.size)[0]
    current = np.asarray(layer.blobs[1], dtype=np.float64).reshape(-1) * a + c if _conv_bias(layer) else c
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(after != 0, (target - current) / after, 0.0)
    b = blobs_of(carrier)
    if by_name[carrier].type == "Scale":
        b[1] = (b[1].reshape(-1).astype(np.float64) + d).astype(np.float32).reshape(b[1].shape)
        return
    # BatchNorm: c = -mean * factor * a_bn, mean = blobs[0], factor = 1 / blobs[2]
    a_bn = affine_of(by_name[carrier], a.size)[0]
    factor = 1.0 / float(b[2].reshape(-1)[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        move = np.where(a_bn != 0, -d / (factor * a_bn), 0.0)
    b[0] = (b[0].reshape(-1).astype(np.float64) + move).astype(np.float32).reshape(b[0].shape)


def with_blobs(net: CaffeNet, changed: dict[str, tuple[np.ndarray, ...]]) -> CaffeNet:
    """`net` with the blobs of the layers in `changed` replaced."""
    return replace(net, layers=[replace(l, blobs=changed[l.name]) if l.name in changed else l for l in net.layers])


def write_caffemodel(original: Path, changed: dict[str, tuple[np.ndarray, ...]], out: Path) -> Path:
    """The original caffemodel with the blobs of the layers in `changed` replaced (runs with the original
    prototxt), written atomically."""
    from ..outputs import atomic_write_bytes
    from .loader import read_caffemodel
    from .upgrade import upgrade_v1_net

    param = read_caffemodel(original)
    if param.layers and not param.layer:
        param = upgrade_v1_net(param, str(original))
    by_name = {lp.name: lp for lp in param.layer}
    for name, new in changed.items():
        lp = by_name.get(name)
        if lp is None or len(lp.blobs) != len(new):
            raise ModelError(f"{original}: layer {name!r} has {0 if lp is None else len(lp.blobs)} blob(s), the "
                             f"changed net {len(new)}; cannot write the caffemodel")
        for blob, array in zip(lp.blobs, new):
            blob.ClearField("double_data")
            blob.ClearField("data")
            blob.data.extend(np.asarray(array, dtype=np.float32).ravel().tolist())
    return atomic_write_bytes(out, param.SerializeToString())
