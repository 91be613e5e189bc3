"""census: what onnxruntime's optimised graph runs, on tiny hand-built QDQ graphs (onnxruntime 1.32, CPU)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from int8tune.quant.census import BETWEEN, FLOAT_CONV_REASON, GRAPH_OUTPUT, INT8_KINDS, Census, census, render_census

SHAPE = [1, 4, 8, 8]
RNG = np.random.default_rng(0)


def _model(nodes, inits, inputs=("x",), outputs=("y",), opset=13) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "census_test",
        [helper.make_tensor_value_info(i, TensorProto.FLOAT, SHAPE) for i in inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _qparams(name: str, scale: float, zero_point: int = 128) -> list[onnx.TensorProto]:
    return [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
            numpy_helper.from_array(np.array(zero_point, np.uint8), f"{name}_z")]


def _qdq(value: str, name: str) -> list[onnx.NodeProto]:
    """value -> QuantizeLinear -> DequantizeLinear -> f"{name}_dq" with the uint8 parameters `name`_s/_z."""
    return [helper.make_node("QuantizeLinear", [value, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
            helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"])]


def _int8_weight(name: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    w = RNG.integers(-127, 128, size=(4, 4, 3, 3)).astype(np.int8)
    inits = [numpy_helper.from_array(w, f"{name}_w"),
             numpy_helper.from_array(np.full(4, 0.01, np.float32), f"{name}_ws"),
             numpy_helper.from_array(np.zeros(4, np.int8), f"{name}_wz")]
    return [helper.make_node("DequantizeLinear", [f"{name}_w", f"{name}_ws", f"{name}_wz"], [f"{name}_wdq"],
                             axis=0)], inits


def _qdq_conv(tail: list[onnx.NodeProto] | None = None, quantized_output: bool = True) -> onnx.ModelProto:
    """x -> Q/DQ -> Conv (int8 weights through a DQ) -> Q/DQ -> y (or -> tail -> y; or Conv -> y)."""
    nodes, inits = _qdq("x", "in"), _qparams("in", 0.05) + _qparams("out", 0.1)
    w_nodes, w_inits = _int8_weight("c")
    nodes, inits = nodes + w_nodes, inits + w_inits
    nodes.append(helper.make_node("Conv", ["in_dq", "c_wdq"], ["conv" if quantized_output else "y"],
                                  pads=[1, 1, 1, 1]))
    if not quantized_output:
        return _model(nodes, inits)
    nodes += _qdq("conv", "out")
    if tail:
        nodes += tail
    else:
        nodes.append(helper.make_node("Identity", ["out_dq"], ["y"]))
    return _model(nodes, inits)


def test_qdq_conv_becomes_qlinearconv():
    c = census(_qdq_conv())
    assert isinstance(c, Census)
    assert set(c.int8) == set(INT8_KINDS)
    assert c.int8["conv"] == 1 and sum(c.int8.values()) == 1
    assert c.ops.get("QLinearConv") == 1 and "Conv" not in c.ops
    assert c.float_islands == []
    assert (c.quantize, c.dequantize) == (1, 1)  # the input's Q and the output's DQ remain
    lines = render_census(c)
    assert lines[0] == "int8 kernels: 1 conv"
    assert lines[1].startswith("float: none")


def test_no_optimisation_leaves_a_float_conv_island():
    """The same graph without graph optimisation: onnxruntime runs the float Conv on dequantized data."""
    c = census(_qdq_conv(), level="disable")
    assert c.int8["conv"] == 0
    assert [(i.op, i.reason) for i in c.float_islands] == [("Conv", FLOAT_CONV_REASON)]
    assert c.dequantize == 3  # input, weights, output


def test_conv_without_an_output_quantizer_is_a_float_conv():
    """No QuantizeLinear after the Conv: onnxruntime has no QLinearConv for it and runs it on dequantized data."""
    c = census(_qdq_conv(quantized_output=False))
    assert c.int8["conv"] == 0
    assert [(i.op, i.reason) for i in c.float_islands] == [("Conv", FLOAT_CONV_REASON)]
    assert "Conv (float conv: no int8 kernel)" in render_census(c)[1]


def test_float_op_after_the_last_dequantize_is_a_graph_output_island():
    c = census(_qdq_conv(tail=[helper.make_node("Softmax", ["out_dq"], ["y"], axis=1)]))
    assert c.int8["conv"] == 1
    assert [(i.op, i.reason) for i in c.float_islands] == [("Softmax", GRAPH_OUTPUT)]
    assert "Softmax (graph output)" in render_census(c)[1]


def _relu_between(zero_point: int) -> onnx.ModelProto:
    nodes = _qdq("x", "in") + [helper.make_node("Relu", ["in_dq"], ["relu"])] + _qdq("relu", "out")
    nodes.append(helper.make_node("Identity", ["out_dq"], ["y"]))
    return _model(nodes, _qparams("in", 0.05, zero_point) + _qparams("out", 0.05, zero_point))


def test_relu_between_dq_and_q_is_a_float_island():
    """uint8 zero point 128: the Relu clips inside the quantized range, so onnxruntime cannot drop it."""
    c = census(_relu_between(128))
    assert [(i.op, i.reason) for i in c.float_islands] == [("Relu", BETWEEN)]
    assert c.float_islands[0].node  # named (node name or its output)
    assert sum(c.int8.values()) == 0
    assert "Relu between DQ and Q" in render_census(c)[1]


def test_relu_at_the_bottom_of_the_range_is_folded_away():
    """uint8 zero point 0: Relu is a no-op on the quantized values, onnxruntime removes it: no island."""
    c = census(_relu_between(0))
    assert "Relu" not in c.ops
    assert c.float_islands == []


def test_qdq_concat_becomes_qlinearconcat():
    nodes = _qdq("x", "a") + _qdq("x2", "b")
    nodes.append(helper.make_node("Concat", ["a_dq", "b_dq"], ["cat"], axis=1))
    nodes += _qdq("cat", "out")
    nodes.append(helper.make_node("Identity", ["out_dq"], ["y"]))
    model = _model(nodes, _qparams("a", 0.05) + _qparams("b", 0.07) + _qparams("out", 0.1), inputs=("x", "x2"))
    c = census(model)
    assert c.int8["concat"] == 1
    assert c.ops.get("QLinearConcat") == 1
    assert not [i for i in c.float_islands if i.op == "Concat"]
    # without the QDQ rewrites the same Concat runs in float between DQ and Q
    plain = census(model, level="basic")
    assert plain.int8["concat"] == 0
    assert [(i.op, i.reason) for i in plain.float_islands] == [("Concat", BETWEEN)]


def _maxpool(out_scale: float) -> onnx.ModelProto:
    nodes = _qdq("x", "in")
    nodes.append(helper.make_node("MaxPool", ["in_dq"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]))
    nodes += _qdq("pool", "out")
    nodes.append(helper.make_node("Identity", ["out_dq"], ["y"]))
    return _model(nodes, _qparams("in", 0.05) + _qparams("out", out_scale))


@pytest.mark.parametrize("level", ["all", "extended"])
def test_maxpool_with_equal_scales_runs_on_int8(level):
    c = census(_maxpool(0.05), level=level)
    assert c.int8["pool"] == 1
    assert c.float_islands == []
    assert c.ops.get("MaxPool", 0) + c.ops.get("NhwcMaxPool", 0) == 1


def test_maxpool_with_different_scales_is_a_float_island():
    c = census(_maxpool(0.1))
    assert c.int8["pool"] == 0
    assert [(i.op, i.reason) for i in c.float_islands] == [("MaxPool", BETWEEN)]
    assert "MaxPool between DQ and Q" in render_census(c)[1]


def test_float_model_has_no_islands():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], axis=1)]
    c = census(_model(nodes, []))
    assert c.float_islands == [] and sum(c.int8.values()) == 0 and c.ops == {"Relu": 1, "Softmax": 1}
    assert render_census(c)[0] == "int8 kernels: none"


def test_x64_exact_keeps_the_int8_conv():
    c = census(_qdq_conv(), x64_exact=True)
    assert c.int8["conv"] == 1 and c.float_islands == []


# -- the float convolutions/matmuls named, with why (render_census "in float:" lines) ----------------------------

def _named_conv(data: str = "in_dq", quantize_input: bool = True, tail: str = "quantize") -> onnx.ModelProto:
    """Conv "conv1" with int8 weights (through a DQ); its input dequantized or the raw graph input; its output
    quantized (tail "quantize"), the graph output ("output") or fed to a Softmax "sm" ("softmax")."""
    nodes, inits = (_qdq("x", "in") if quantize_input else []), _qparams("in", 0.05) + _qparams("out", 0.1)
    w_nodes, w_inits = _int8_weight("c")
    nodes, inits = nodes + w_nodes, inits + w_inits
    out = "y" if tail == "output" else "conv"
    nodes.append(helper.make_node("Conv", [data, "c_wdq"], [out], pads=[1, 1, 1, 1], name="conv1"))
    if tail == "quantize":
        nodes += _qdq("conv", "out") + [helper.make_node("Identity", ["out_dq"], ["y"])]
    elif tail == "softmax":
        nodes.append(helper.make_node("Softmax", ["conv"], ["y"], axis=1, name="sm"))
    return _model(nodes, inits if quantize_input else inits[2:])


def _in_float(c: Census) -> list[str]:
    return [line for line in render_census(c, width=400) if line.startswith("  in float: ")]


def test_int8_conv_is_not_listed_in_float():
    lines = render_census(census(_named_conv()))
    assert lines[0] == "int8 kernels: 1 conv"
    assert not [line for line in lines if "in float" in line]


def test_float_conv_without_an_output_quantizer_is_named():
    c = census(_named_conv(tail="output"))
    assert c.float_islands[0].detail == "no QuantizeLinear on its output: a graph output"
    assert _in_float(c) == ["  in float: conv1 (no QuantizeLinear on its output: a graph output)"]
    lines = render_census(c)
    assert lines[0] == "int8 kernels: none" and lines[1].startswith("float: Conv")  # first lines as before


def test_float_conv_feeding_a_float_op_is_named():
    c = census(_named_conv(tail="softmax"))
    assert _in_float(c) == ["  in float: conv1 (no QuantizeLinear on its output: feeds Softmax 'sm')"]


def test_float_conv_on_the_raw_graph_input_is_named():
    """Weights through a DQ and a quantized output, but the input never quantized: no int8 kernel."""
    c = census(_named_conv(data="x", quantize_input=False))
    assert [(i.op, i.reason) for i in c.float_islands] == [("Conv", FLOAT_CONV_REASON)]
    assert _in_float(c) == ["  in float: conv1 (no QuantizeLinear on its input: reads the graph input 'x')"]


def test_unfused_conv_between_dq_and_q_says_onnxruntime_did_not_fuse_it():
    c = census(_named_conv(), level="basic")  # the QDQ rewrites run from 'extended' on
    (line,) = _in_float(c)
    assert line.startswith("  in float: conv1 (not fused by onnxruntime: a Conv between DequantizeLinear and "
                           "QuantizeLinear in the optimised graph")


def test_float_matmul_is_named():
    nodes = _qdq("x", "in") + [helper.make_node("Reshape", ["in_dq", "shape"], ["flat"]),
                               helper.make_node("MatMul", ["flat", "w"], ["y"], name="fc")]
    inits = _qparams("in", 0.05) + [numpy_helper.from_array(np.array([1, 256], np.int64), "shape"),
                                    numpy_helper.from_array(RNG.standard_normal((256, 3)).astype(np.float32), "w")]
    c = census(_model(nodes, inits))
    assert _in_float(c) == ["  in float: fc (no QuantizeLinear on its output: a graph output)"]


def test_at_most_ten_float_kernels_are_named():
    from int8tune.quant.census import FloatIsland

    islands = [FloatIsland(f"conv{i}", "Conv", FLOAT_CONV_REASON, "no QuantizeLinear on its output: a graph output")
               for i in range(13)]
    islands.append(FloatIsland("sm", "Softmax", GRAPH_OUTPUT))
    c = Census(ops={"Conv": 13, "Softmax": 1}, int8=dict.fromkeys(INT8_KINDS, 0), float_islands=islands)
    lines = render_census(c)
    assert lines[0] == "int8 kernels: none"
    assert lines[1].startswith("float: 13 Conv (float conv: no int8 kernel), Softmax (graph output)")
    named = [line for line in lines if line.startswith("  in float: ")]
    assert named[0] == "  in float: conv0 (no QuantizeLinear on its output: a graph output)"
    assert len(named) == 10 and "conv10" not in "\n".join(named)
    assert "  ... and 3 more" in lines
    assert lines[-1].startswith("QuantizeLinear 0, DequantizeLinear 0")
