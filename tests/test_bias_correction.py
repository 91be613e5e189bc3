"""Bias correction runs the int8 graph once from the input side (the corrected prefix carried from layer to layer)
and gives bit for bit the biases, shifts and residuals of a prefix session per layer (the O(L^2) reference), on a
chain and on a net with branches (Concat, Eltwise sum, a blob read by three layers), in each bias mode."""

from __future__ import annotations

import numpy as np
import pytest
from netbuilder import input_header, layer, write_net
from test_weight_levers import PROTOTXT as CHAIN
from test_weight_levers import _weights as chain_weights

from int8tune.config import QuantConfig
from int8tune.pipeline.calibration import calibrate
from int8tune.pipeline.images import Images
from int8tune.pipeline.workspace import load_workspace
from int8tune.quant import bias_correction
from int8tune.quant.bias_correction import CorrectedLayer, _correct_biases, correct_biases

RNG = np.random.default_rng(23)
BRANCHY = (input_header((1, 3, 10, 10))
           + layer("conv1", "Convolution", "data", "conv1", "convolution_param { num_output: 8 kernel_size: 3 pad: 1 }")
           + layer("relu1", "ReLU", "conv1", "conv1")
           # conv1 is read by three layers: two branches and the shortcut of the sum
           + layer("left", "Convolution", "conv1", "left", "convolution_param { num_output: 6 kernel_size: 1 }")
           + layer("relu_l", "ReLU", "left", "left")
           + layer("right", "Convolution", "conv1", "right",
                   "convolution_param { num_output: 6 kernel_size: 3 pad: 1 }")
           + layer("cat", "Concat", ["left", "right"], "cat")
           + layer("mix", "Convolution", "cat", "mix", "convolution_param { num_output: 8 kernel_size: 1 }")
           + layer("sum", "Eltwise", ["mix", "conv1"], "sum", "eltwise_param { operation: SUM }")
           + layer("relu_s", "ReLU", "sum", "sum")
           + layer("dw", "Convolution", "sum", "dw",
                   "convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 8 }")
           + layer("pool", "Pooling", "dw", "pool", "pooling_param { pool: AVE kernel_size: 2 stride: 2 }")
           + layer("fc", "InnerProduct", "pool", "fc", "inner_product_param { num_output: 5 }"))


def _branchy_weights():
    def w(*s):
        return RNG.standard_normal(s).astype(np.float32)
    return {"conv1": [w(8, 3, 3, 3) * 0.3, w(8) * 0.1], "left": [w(6, 8, 1, 1) * 0.3, w(6) * 0.1],
            "right": [w(6, 8, 3, 3) * 0.2, w(6) * 0.1], "mix": [w(8, 12, 1, 1) * 0.3, w(8) * 0.1],
            "dw": [w(8, 1, 3, 3) * 0.3, w(8) * 0.1], "fc": [w(5, 200) * 0.1, w(5) * 0.1]}


NETS = {"chain": (CHAIN, chain_weights, (3, 12, 12)), "branchy": (BRANCHY, _branchy_weights, (3, 10, 10))}


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    return {name: write_net(tmp_path_factory.mktemp(name), proto, weights()) for name, (proto, weights, _) in
            NETS.items()}


@pytest.mark.parametrize("config", [{}, {"bias": "fp32"}, {"granularity": "per_channel"}],
                         ids=["int32", "fp32 bias", "per-channel activations"])
@pytest.mark.parametrize("net", list(NETS))
def test_the_carried_prefix_corrects_bit_for_bit_as_a_prefix_per_layer(nets, net, config, monkeypatch):
    ws = load_workspace(*nets[net])
    x = RNG.uniform(0, 2, (7, *NETS[net][2])).astype(np.float32)
    images = Images("7 random images", 7, _batches=[x[:5], x[5:]])  # chunks of 4, 1 and 2 images
    # one calibrator, few bins: the table's statistics take no time (the KL search of 2048 bins would)
    table = calibrate(ws, images, QuantConfig(method="mse", bins=512, **config), measure=None, threads=1).table
    runs: dict[str, int] = {}
    segment = bias_correction._segment

    def counted(graph, table, nodes, *args):
        for n in nodes:
            runs[n.output[0]] = runs.get(n.output[0], 0) + 1
        return segment(graph, table, nodes, *args)

    monkeypatch.setattr(bias_correction, "_segment", counted)
    biases, results = correct_biases(ws.converted, ws.fp32, table, images.batches, threads=1)
    monkeypatch.undo()
    want, expected = _correct_biases(ws.converted, ws.fp32, table, images.batches, 1, None, carried=False)
    assert list(biases) == list(want) and len(biases) >= 4
    for name in want:
        assert biases[name].dtype == want[name].dtype == np.float32
        assert np.array_equal(biases[name], want[name]), name
    assert [type(r) for r in results] == [type(r) for r in expected]
    for got, ref in zip(results, expected):
        assert got.layer == ref.layer
        if isinstance(ref, CorrectedLayer):
            assert np.array_equal(got.shift, ref.shift) and np.array_equal(got.residual, ref.residual)
            assert (got.step is None) == (ref.step is None)
            assert ref.step is None or np.array_equal(got.step, ref.step)
        else:
            assert got == ref
    assert any(np.abs(r.shift).max() > 0 for r in results if isinstance(r, CorrectedLayer))  # it did something
    # O(L): a node runs once, and once more after a correction upstream of it made its output stale
    assert runs and max(runs.values()) <= 2
