"""The int8 simulation in onnxruntime equals a plain numpy transcription of the same integer arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
from netbuilder import input_header, layer, write_net

from int8tune.caffe.loader import load_net
from int8tune.convert.converter import convert_net
from int8tune.quant.simulate import build_int8_graph
from int8tune.quant.spec import BiasMode, Granularity, QuantSpec, Rounding, Target
from int8tune.quant.table import BlobEntry, CalibrationTable, LayerEntry
from int8tune.runtime import Engine

RNG = np.random.default_rng(7)
PROTOTXT = (input_header((2, 3, 6, 6))
            + layer("conv1", "Convolution", "data", "conv1",
                    "convolution_param { num_output: 4 kernel_size: 3 pad: 1 }")
            + layer("relu1", "ReLU", "conv1", "conv1")
            + layer("pool1", "Pooling", "conv1", "pool1", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
            + layer("fc", "InnerProduct", "pool1", "fc", "inner_product_param { num_output: 5 }"))
WEIGHTS = {"conv1": [RNG.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3,
                     RNG.standard_normal(4).astype(np.float32) * 0.1],
           "fc": [RNG.standard_normal((5, 36)).astype(np.float32) * 0.2, RNG.standard_normal(5).astype(np.float32)]}


def rnd(x, rounding):
    x = np.asarray(x)
    return np.round(x) if rounding is Rounding.HALF_EVEN else np.sign(x) * np.floor(np.abs(x) + 0.5)


def quant(x, t, rounding, levels=127, lo=-127):
    s = np.float32(t) / np.float32(levels)
    return np.clip(rnd(x.astype(np.float32) / s, rounding), lo, levels), np.float64(s)


def conv_int(xq, wq, pad):
    xp = np.pad(xq, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, wq.shape[2:], axis=(2, 3))  # N C H W kh kw
    return np.einsum("nchwij,mcij->nmhw", win.astype(np.int64), wq.astype(np.int64))


def reference(x, table, spec):
    """Numpy: int8 inputs and weights, int64 accumulation, int32 bias at s_in*s_w, then conv1's output quantized on
    pool1's grid (the output point: ReLU and max pooling commute with it). With an onnxruntime target and
    half-to-even rounding that is onnxruntime's requantization: float32(sum) * ((s_in * s_w) / s_out), rounded;
    otherwise the rescaled sum quantized. Signed levels go down to -128 for onnxruntime, -127 for the others."""
    w1, b1 = WEIGHTS["conv1"]
    w2, b2 = WEIGHTS["fc"]
    t_w1 = table.layers["conv1"].weight_thresholds
    t_w2 = table.layers["fc"].weight_thresholds
    xq, sx = quant(x, table.blobs["data"].threshold, spec.rounding, lo=spec.qmin)
    wq = np.stack([quant(w1[m], t_w1[m], spec.rounding)[0] for m in range(4)])
    sw = np.array([quant(w1[m], t_w1[m], spec.rounding)[1] for m in range(4)])
    sb = (np.float32(sx) * sw.astype(np.float32)).astype(np.float32)
    bq = rnd(b1.astype(np.float64) / sb.astype(np.float64), spec.rounding)
    acc = conv_int(xq, wq, 1) + bq[None, :, None, None]
    entry = table.blobs["pool1"]
    levels, lo = (255, 0) if entry.unsigned else (127, spec.qmin)
    sy = np.float32(np.float32(entry.threshold) / np.float32(levels))
    if spec.target.onnxruntime and spec.rounding is Rounding.HALF_EVEN:
        mult = (sb / sy).astype(np.float32)
        q = np.clip(np.round(acc.astype(np.float32) * mult[None, :, None, None]), lo, levels)
    else:
        q = np.clip(rnd((acc * sb[None, :, None, None]).astype(np.float32) / sy, spec.rounding), lo, levels)
    yq = np.maximum(q, 0).reshape(2, 4, 3, 2, 3, 2).max(axis=(3, 5)).reshape(2, 36)
    w2q = np.stack([quant(w2[m], t_w2[m], spec.rounding)[0] for m in range(5)])
    s2 = np.array([quant(w2[m], t_w2[m], spec.rounding)[1] for m in range(5)])
    sb2 = (np.float32(sy) * s2.astype(np.float32)).astype(np.float32)
    b2q = rnd(b2.astype(np.float64) / sb2.astype(np.float64), spec.rounding)
    return (yq.astype(np.int64) @ w2q.T.astype(np.int64) + b2q) * sb2


def make_table(spec, t_data=2.0, t_pool=1.5, unsigned_pool=False):
    table = CalibrationTable("t", spec)
    table.blobs["data"] = BlobEntry("data", "data", t_data, calibrator="manual")
    table.blobs["pool1"] = BlobEntry("pool1", "pool1", t_pool, unsigned=unsigned_pool, calibrator="manual")
    w1 = np.abs(WEIGHTS["conv1"][0]).reshape(4, -1).max(1) * 0.8  # clip the largest weights a little
    w2 = np.abs(WEIGHTS["fc"][0]).max(1) * 0.9
    table.layers["conv1"] = LayerEntry("conv1", "Convolution", "data", weight_thresholds=w1)
    table.layers["fc"] = LayerEntry("fc", "InnerProduct", "pool1", weight_thresholds=w2)
    return table


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    proto, model = write_net(tmp_path_factory.mktemp("sim"), PROTOTXT, WEIGHTS)
    return convert_net(load_net(proto, model))


@pytest.mark.parametrize("target", [Target.ONNXRUNTIME, Target.TENSORRT])
@pytest.mark.parametrize("rounding", list(Rounding))
@pytest.mark.parametrize("unsigned", [False, True])
def test_simulation_equals_numpy_reference(converted, rounding, unsigned, target):
    spec = QuantSpec(rounding=rounding, granularity=Granularity.MIX, unsigned=unsigned, target=target)
    table = make_table(spec, unsigned_pool=unsigned)
    graph = build_int8_graph(converted, table)
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    ours = Engine(graph.converted).run(x, ["fc"], extra_feeds=graph.feeds(table))["fc"]
    ref = reference(x, table, spec)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    fp32 = Engine(converted).run(x, ["fc"])["fc"]
    assert np.abs(fp32 - ours).max() > 1e-4, "the int8 graph must differ from fp32"


def test_new_threshold_is_a_feed_not_a_session(converted):
    spec = QuantSpec()
    table = make_table(spec)
    graph = build_int8_graph(converted, table)
    engine = Engine(graph.converted)
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    first = engine.run(x, ["fc"], extra_feeds=graph.feeds(table))["fc"]
    tighter = table.with_threshold("data", 0.5)
    second = engine.run(x, ["fc"], extra_feeds=graph.feeds(tighter))["fc"]
    assert len(engine._sessions) == 1
    assert not np.allclose(first, second)
    np.testing.assert_allclose(second, reference(x, tighter, spec), rtol=1e-5, atol=1e-5 * np.abs(second).max())


def test_fp32_bias_and_rounding_modes_differ_on_ties(converted):
    x = np.full((2, 3, 6, 6), 0.5 * 2.0 / 127, dtype=np.float32)  # exactly half a step: a rounding tie
    outs = {}
    for rounding in Rounding:
        spec = QuantSpec(rounding=rounding, bias=BiasMode.FP32)
        table = make_table(spec)
        graph = build_int8_graph(converted, table)
        outs[rounding] = Engine(graph.converted).run(x, ["conv1@conv1"], extra_feeds=graph.feeds(table))["conv1@conv1"]
    assert not np.allclose(outs[Rounding.HALF_AWAY], outs[Rounding.HALF_EVEN])


@pytest.mark.parametrize("rounding", list(Rounding))
def test_per_channel_activation_thresholds(converted, rounding):
    """Granularity per_channel: each input channel of conv1 has its own threshold (bias then stays fp32)."""
    spec = QuantSpec(rounding=rounding, granularity=Granularity.PER_CHANNEL)
    table = make_table(spec)
    t = np.array([0.5, 1.0, 2.0], dtype=np.float64)
    table.blobs["data"].channel_thresholds = t
    graph = build_int8_graph(converted, table)
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    ours = Engine(graph.converted).run(x, ["conv1@conv1"], extra_feeds=graph.feeds(table))["conv1@conv1"]
    xq = np.stack([quant(x[:, c], t[c], rounding, lo=spec.qmin)[0] * quant(x[:, c], t[c], rounding)[1]
                   for c in range(3)], axis=1)
    w, b = WEIGHTS["conv1"]
    t_w = table.layers["conv1"].weight_thresholds
    wq = np.stack([quant(w[m], t_w[m], rounding)[0] * quant(w[m], t_w[m], rounding)[1] for m in range(4)])
    xp = np.pad(xq, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))
    ref = np.einsum("nchwij,mcij->nmhw", win, wq) + b[None, :, None, None]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
