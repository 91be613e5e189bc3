"""Partial evaluation (frontier once, suffix per candidate) gives what a full int8 run gives.

Equal bit for bit, with simulation sessions as the tuner runs them (runtime.session_options: at
ORT_ENABLE_EXTENDED every cut of a table's graph computes the same numbers, though the prefix and suffix sessions
have the other blobs' thresholds frozen in as constants; the bias correction's carried prefix relies on it too)."""

from __future__ import annotations

import numpy as np
import pytest
from netbuilder import write_net
from test_simulate import PROTOTXT, WEIGHTS, make_table

from int8tune.caffe.loader import load_net
from int8tune.convert.converter import convert_net
from int8tune.quant.simulate import build_int8_graph
from int8tune.quant.spec import QuantSpec
from int8tune.runtime import Engine
from int8tune.tune.partial import PartialEvaluator, dependents


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    proto, model = write_net(tmp_path_factory.mktemp("partial"), PROTOTXT, WEIGHTS)
    converted = convert_net(load_net(proto, model))
    table = make_table(QuantSpec())
    graph = build_int8_graph(converted, table)
    rng = np.random.default_rng(5)
    batches = [rng.standard_normal((2, 3, 6, 6)).astype(np.float32) for _ in range(3)]
    return graph, Engine(graph.converted, simulation=True), batches, table


@pytest.mark.parametrize("value,outputs", [("pool1", ["fc"]), ("data", ["fc", "conv1"]), ("pool1", ["fc", "conv1"])])
def test_partial_equals_full_run(setup, value, outputs):
    graph, engine, batches, table = setup
    partial = PartialEvaluator(graph, engine, batches, value, outputs, table, threads=1)
    for multiplier in (0.5, 0.9, 1.3):
        candidate = table.with_threshold(value, table.blobs[value].threshold * multiplier)
        got = partial.evaluate(candidate)
        for batch, result in zip(batches, got):
            full = engine.run(batch, outputs, extra_feeds=graph.feeds(candidate))
            for o in outputs:
                np.testing.assert_array_equal(result[o], full[o])


def test_suffix_of_the_last_layer_excludes_the_first_conv(setup):
    graph, *_ = setup
    names = {n.name for n in dependents(graph.converted.model, graph.feed_inputs["pool1"])}
    assert "conv1" not in names and any(n.startswith("fc") for n in names)


@pytest.mark.slow  # a real detector end to end: .ci/run runs it (pytest -m slow)
def test_optimised_simulation_equals_the_unoptimised_graph_on_a_real_detector(assets):
    """Every way of running a table's simulation gives the same numbers: whole graph unoptimised, frozen and
    optimised, partial. (At ORT_ENABLE_ALL the NCHWc kernels' other summation order flips quantizer roundings and
    the outputs drift by 2 % of their range on this model: simulation sessions run at ORT_ENABLE_EXTENDED.)"""
    from dataclasses import replace

    from int8tune.pipeline.workspace import load_workspace
    from int8tune.quant.calibrate import build_table, collect_statistics, plan_quantization, planned_values
    from int8tune.quant.calibrators import CalibratorOptions

    d = assets / "models" / "yolov3_nano_voc"
    ws = load_workspace(d / "MobileNetV2-YOLOv3-Nano-voc.prototxt", d / "MobileNetV2-YOLOv3-Nano-voc.caffemodel")
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 320, 320), dtype=np.float32)
    plan = plan_quantization(ws.fold.net, QuantSpec())
    stats = collect_statistics(Engine(ws.converted), planned_values(plan), lambda: iter([x]), 2048, False,
                               progress=False)
    table = build_table(ws.fold.net, ws.converted, plan, stats, QuantSpec(), "kl", "minmax", CalibratorOptions())
    graph = build_int8_graph(ws.converted, table)
    outputs = ["layer69-conv", "layer79-conv"]
    plain = Engine(graph.converted, optimize=False, simulation=True).run_tensors(x, outputs,
                                                                                extra_feeds=graph.feeds(table))
    frozen = Engine(replace(graph.converted, model=graph.frozen(table)), simulation=True).run_tensors(x, outputs)
    partial = PartialEvaluator(graph, Engine(graph.converted, simulation=True), [x], "layer40-conv", outputs, table,
                               threads=2).evaluate(table)[0]
    for o in outputs:
        scale = np.abs(plain[o]).max()
        assert np.abs(frozen[o] - plain[o]).max() <= 1e-4 * scale
        assert np.abs(partial[o] - plain[o]).max() <= 1e-4 * scale
