"""QDQ export: onnxruntime runs every int8 layer as an int8 kernel, and the file computes what the simulation does."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from netbuilder import input_header, layer, write_net

from int8tune.caffe.loader import load_net
from int8tune.convert.converter import convert_net
from int8tune.hostcpu import describe_host, host_int8_path
from int8tune.quant.census import census
from int8tune.quant.qdq import export_qdq
from int8tune.quant.saturation import pair_safe_thresholds
from int8tune.quant.simulate import build_int8_graph
from int8tune.quant.spec import QuantSpec, Rounding, Target
from int8tune.quant.table import BlobEntry, CalibrationTable, LayerEntry
from int8tune.runtime import Engine, with_outputs

RNG = np.random.default_rng(3)
PROTOTXT = (input_header((1, 3, 12, 12))
            + layer("conv1", "Convolution", "data", "conv1",
                    "convolution_param { num_output: 8 kernel_size: 3 pad: 1 }")
            + layer("relu1", "ReLU", "conv1", "conv1")
            + layer("conv2", "Convolution", "conv1", "conv2",
                    "convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 8 }")
            + layer("relu2", "ReLU", "conv2", "conv2")
            + layer("pool", "Pooling", "conv2", "pool", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
            + layer("fc", "InnerProduct", "pool", "fc", "inner_product_param { num_output: 10 }"))
WEIGHTS = {"conv1": [RNG.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
                     RNG.standard_normal(8).astype(np.float32) * 0.1],
           "conv2": [RNG.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.5,
                     RNG.standard_normal(8).astype(np.float32) * 0.1],
           "fc": [RNG.standard_normal((10, 288)).astype(np.float32) * 0.1, RNG.standard_normal(10).astype(np.float32)]}


def table_for(converted, unsigned, rounding, target=Target.ONNXRUNTIME):
    spec = QuantSpec(unsigned=unsigned, rounding=rounding, target=target)
    engine = Engine(converted)
    x = RNG.standard_normal((8, 3, 12, 12)).astype(np.float32)
    values = engine.run(x, ["data", "conv1", "conv2", "pool", "fc"])
    table = CalibrationTable("t", spec)
    for v in ("data", "conv1", "conv2", "pool", "fc"):
        t = float(np.abs(values[v]).max()) * 0.9
        table.blobs[v] = BlobEntry(v, v, t, unsigned=unsigned and v not in ("data", "fc"), calibrator="test")
    for name, inp in (("conv1", "data"), ("conv2", "conv1"), ("fc", "pool")):
        w = WEIGHTS[name][0].reshape(WEIGHTS[name][0].shape[0], -1)
        t_w = np.abs(w).max(1)
        if target.pair_safe_weights and name != "conv2":  # conv2 is depthwise: onnxruntime's kernel is exact
            t_w = pair_safe_thresholds(w, t_w)
        table.layers[name] = LayerEntry(name, "InnerProduct" if name == "fc" else "Convolution", inp,
                                        weight_thresholds=t_w)
    return table


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    proto, model = write_net(tmp_path_factory.mktemp("qdq"), PROTOTXT, WEIGHTS)
    return convert_net(load_net(proto, model))


@pytest.mark.parametrize("unsigned", [False, True])
def test_every_int8_layer_runs_as_an_int8_kernel(converted, unsigned):
    table = table_for(converted, unsigned, Rounding.HALF_EVEN)
    model, report = export_qdq(converted, table)
    c = census(model)
    ops = c.ops
    assert c.int8["conv"] + c.int8["matmul"] == 3, f"expected 3 int8 conv/matmul kernels, optimised graph has {ops}"
    assert report.int8_layers == ["conv1", "conv2", "fc"]
    assert report.fp32_in_runtime == {}
    if unsigned:  # ReLUs folded into the uint8 output quantizers, max pooling on uint8: no float op in between
        assert ops.get("Relu", 0) == 0 and ops.get("QuantizeLinear", 0) == 1, dict(ops)


def exposed_points(converted, table):
    graph = build_int8_graph(converted, table)
    # every blob quantized for all its readers (carried points on a layer's internal tensors are not blobs)
    return graph, [p.tensor for p in graph.placement.points if p.is_output and p.tensor in converted.net.blob_of]


@pytest.mark.parametrize("target", [Target.ONNXRUNTIME, Target.ONNXRUNTIME_VNNI])
@pytest.mark.parametrize("unsigned", [False, True])
def test_deployed_export_computes_exactly_what_the_simulation_computes(converted, unsigned, target):
    """One model: the exported file in a default onnxruntime session (integer kernels, as a user runs it) gives
    the simulation's numbers bit for bit at every quantized blob, the net output included."""
    if target is Target.ONNXRUNTIME_VNNI and not host_int8_path().exact:
        pytest.skip(f"{describe_host()}: 8-bit weights saturate here (tests/test_saturation.py pins by how much)")
    table = table_for(converted, unsigned, Rounding.HALF_EVEN, target)
    graph, points = exposed_points(converted, table)
    # every int8 layer writes int8, on the threshold this hand-made table gives its output (a calibrated table has
    # none for conv2, which then shares pool's: tests/test_deployed.py covers that on real nets)
    assert graph.placement.output_grid == {"conv1": "conv1", "conv2": "conv2", "fc": "fc"}, graph.placement.output_grid
    assert "fc" in points
    x = RNG.standard_normal((4, 3, 12, 12)).astype(np.float32) * 2
    sim = Engine(graph.converted, simulation=True).run(x, points, extra_feeds=graph.feeds(table))
    model, _ = export_qdq(converted, table)
    sess = ort.InferenceSession(with_outputs(model, points).SerializeToString(), providers=["CPUExecutionProvider"])
    deployed = dict(zip(points, sess.run(points, {"data": x})))
    for p in points:
        np.testing.assert_array_equal(deployed[p], sim[p], err_msg=p)
    fp32 = Engine(converted).run(x, ["fc"])["fc"]
    assert np.abs(fp32 - sim["fc"]).max() > 0, "the int8 model must differ from fp32"


@pytest.mark.parametrize("unsigned", [False, True])
def test_exported_graphs_pass_the_onnx_checker(converted, unsigned):
    """Other tools validate what they are given (PPQ, onnx-simplifier): the fp32 graph and the QDQ export must
    pass onnx.checker, graph outputs included (an output value_info without a shape fails it)."""
    onnx.checker.check_model(converted.model)
    model, _ = export_qdq(converted, table_for(converted, unsigned, Rounding.HALF_EVEN))
    onnx.checker.check_model(model)
