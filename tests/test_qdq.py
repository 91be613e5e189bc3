"""QDQ export: onnxruntime runs every int8 layer as an int8 kernel, and the outputs match the simulation."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from int8tune.caffe.loader import load_net
from int8tune.convert.converter import convert_net
from int8tune.quant.qdq import count_int8_kernels, export_qdq
from int8tune.quant.simulate import build_int8_graph
from int8tune.quant.spec import QuantSpec, Rounding
from int8tune.quant.table import BlobEntry, CalibrationTable, LayerEntry
from int8tune.runtime import Engine
from netbuilder import input_header, layer, write_net

RNG = np.random.default_rng(3)
PROTOTXT = (input_header((1, 3, 12, 12))
            + layer("conv1", "Convolution", "data", "conv1", "convolution_param { num_output: 8 kernel_size: 3 pad: 1 }")
            + layer("relu1", "ReLU", "conv1", "conv1")
            + layer("conv2", "Convolution", "conv1", "conv2", "convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 8 }")
            + layer("relu2", "ReLU", "conv2", "conv2")
            + layer("pool", "Pooling", "conv2", "pool", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
            + layer("fc", "InnerProduct", "pool", "fc", "inner_product_param { num_output: 10 }"))
WEIGHTS = {"conv1": [RNG.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, RNG.standard_normal(8).astype(np.float32) * 0.1],
           "conv2": [RNG.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.5, RNG.standard_normal(8).astype(np.float32) * 0.1],
           "fc": [RNG.standard_normal((10, 288)).astype(np.float32) * 0.1, RNG.standard_normal(10).astype(np.float32)]}


def table_for(converted, unsigned, rounding):
    spec = QuantSpec(unsigned=unsigned, rounding=rounding)
    engine = Engine(converted)
    x = RNG.standard_normal((8, 3, 12, 12)).astype(np.float32)
    values = engine.run(x, ["data", "conv1", "conv2", "pool", "fc"])
    table = CalibrationTable("t", spec)
    for v in ("data", "conv1", "conv2", "pool", "fc"):
        t = float(np.abs(values[v]).max()) * 0.9
        table.blobs[v] = BlobEntry(v, v, t, unsigned=unsigned and v not in ("data", "fc"), calibrator="test")
    for name, inp in (("conv1", "data"), ("conv2", "conv1"), ("fc", "pool")):
        w = WEIGHTS[name][0]
        table.layers[name] = LayerEntry(name, "InnerProduct" if name == "fc" else "Convolution", inp,
                                        weight_thresholds=np.abs(w).reshape(w.shape[0], -1).max(1))
    return table


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    proto, model = write_net(tmp_path_factory.mktemp("qdq"), PROTOTXT, WEIGHTS)
    return convert_net(load_net(proto, model))


@pytest.mark.parametrize("unsigned", [False, True])
def test_every_int8_layer_runs_as_an_int8_kernel(converted, unsigned):
    table = table_for(converted, unsigned, Rounding.HALF_EVEN)
    model, report = export_qdq(converted, table)
    k, ops = count_int8_kernels(model)
    assert k == 3, f"expected 3 int8 kernels, optimised graph has {dict(ops)}"
    assert report.int8_layers == ["conv1", "conv2", "fc"]
    assert report.fp32_in_runtime == []


@pytest.mark.parametrize("unsigned", [False, True])
def test_qdq_outputs_match_the_simulation_within_rounding(converted, unsigned):
    """Same thresholds, half-to-even rounding (ONNX's): the exported model and the simulation agree to within
    one output quantization step of the final layer, on average far less."""
    table = table_for(converted, unsigned, Rounding.HALF_EVEN)
    model, report = export_qdq(converted, table)
    # conv2's output reaches fc's quantized input through ReLU and max pooling, which commute with the quantizer,
    # so it borrows that grid (no extra rounding); only fc's output (the net output) is requantized.
    assert report.requantized == ["fc"]
    graph = build_int8_graph(converted, table)
    x = RNG.standard_normal((4, 3, 12, 12)).astype(np.float32)
    sim = Engine(graph.converted).run(x, ["fc"], extra_feeds=graph.feeds(table))["fc"]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    qdq = sess.run(["fc"], {"data": x})[0]
    step = table.blobs["fc"].threshold / 127
    diff = np.abs(qdq - sim)
    assert diff.max() <= 1.01 * step, (diff.max(), step)
    fp32 = Engine(converted).run(x, ["fc"])["fc"]
    assert np.abs(fp32 - sim).max() > diff.mean()


@pytest.mark.parametrize("unsigned", [False, True])
def test_exported_graphs_pass_the_onnx_checker(converted, unsigned):
    """Other tools validate what they are given (PPQ, onnx-simplifier): the fp32 graph and the QDQ export must
    pass onnx.checker, graph outputs included (an output value_info without a shape fails it)."""
    onnx.checker.check_model(converted.model)
    model, _ = export_qdq(converted, table_for(converted, unsigned, Rounding.HALF_EVEN))
    onnx.checker.check_model(model)
