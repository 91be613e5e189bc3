"""Layer settings checked against numpy transcriptions of Caffe's formulas (where OpenCV is no reference:
it lacks the layer or departs from Caffe)."""

from __future__ import annotations

import numpy as np
import pytest
from netbuilder import input_header, layer, write_net

from int8tune.caffe.loader import load_net
from int8tune.convert.converter import convert_net
from int8tune.convert.layers.pooling import caffe_ave_divisors, caffe_pool_output
from int8tune.convert.layers.shape import caffe_reshape
from int8tune.errors import ModelError, UnsupportedLayerError
from int8tune.runtime import Engine

RNG = np.random.default_rng(1)


def r(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def run(tmp_path, prototxt, weights, x, outputs):
    proto, model = write_net(tmp_path, prototxt, weights)
    return Engine(convert_net(load_net(proto, model))).run(x, outputs)


def test_inner_product_transpose(tmp_path):
    w = r(10, 3)
    x = r(2, 10)
    out = run(tmp_path, input_header((2, 10)) + layer("fc", "InnerProduct", "data", "fc",
              "inner_product_param { num_output: 3 transpose: true bias_term: false }"), {"fc": [w]}, x, ["fc"])
    np.testing.assert_allclose(out["fc"], x @ w, rtol=1e-5, atol=1e-6)


def test_inner_product_axis_2(tmp_path):
    w, b = r(4, 6), r(4)
    x = r(2, 3, 2, 3)
    out = run(tmp_path, input_header((2, 3, 2, 3)) + layer("fc", "InnerProduct", "data", "fc",
              "inner_product_param { num_output: 4 axis: 2 }"), {"fc": [w, b]}, x, ["fc"])
    np.testing.assert_allclose(out["fc"], x.reshape(2, 3, 6) @ w.T + b, rtol=1e-5, atol=1e-6)


def test_bias_layer_and_scale_with_second_bottom(tmp_path):
    """Bias with a learned vector; Scale of a 4-D blob by a (N, C) blob at axis 0 (yoloface's SE block)."""
    x = r(1, 3, 2, 2)
    b, sb = r(3), r(3)
    prototxt = (input_header((1, 3, 2, 2)) + layer("b", "Bias", "data", "y")
                + layer("pool", "Pooling", "data", "g", "pooling_param { pool: AVE global_pooling: true }")
                + layer("flat", "Flatten", "g", "gf")
                + layer("se", "Scale", ["data", "gf"], "z", "scale_param { axis: 0 bias_term: true }"))
    out = run(tmp_path, prototxt, {"b": [b], "se": [sb.reshape(1, 3)]}, x, ["y", "z"])
    np.testing.assert_allclose(out["y"], x + b.reshape(1, 3, 1, 1), rtol=1e-6)
    gate = x.mean(axis=(2, 3))
    np.testing.assert_allclose(out["z"], x * gate[:, :, None, None] + sb.reshape(1, 3, 1, 1), rtol=1e-5, atol=1e-6)


def test_lrn_across_channels_with_k(tmp_path):
    x = r(1, 6, 3, 3)
    n, alpha, beta, k = 5, 1e-2, 0.75, 2.0
    out = run(tmp_path, input_header((1, 6, 3, 3)) + layer("lrn", "LRN", "data", "y",
              f"lrn_param {{ local_size: {n} alpha: {alpha} beta: {beta} k: {k} }}"), {}, x, ["y"])
    sq = np.pad(x ** 2, ((0, 0), (2, 2), (0, 0), (0, 0)))
    window = sum(sq[:, i:i + 6] for i in range(n))
    np.testing.assert_allclose(out["y"], x * (k + alpha / n * window) ** -beta, rtol=1e-5)


def test_argmax_and_reduction(tmp_path):
    x = r(2, 3, 2, 2)
    prototxt = (input_header((2, 3, 2, 2))
                + layer("am", "ArgMax", "data", "am", "argmax_param { top_k: 2 out_max_val: true }")
                + layer("am1", "ArgMax", "data", "am1", "argmax_param { axis: 1 }")
                + layer("rs", "Reduction", "data", "rs", "reduction_param { operation: SUMSQ axis: 1 coeff: 0.5 }")
                + layer("ra", "Reduction", "data", "ra", "reduction_param { operation: ASUM axis: 2 }")
                + layer("rm", "Reduction", "data", "rm", "reduction_param { operation: MEAN axis: 1 }"))
    out = run(tmp_path, prototxt, {}, x, ["am", "am1", "rs", "ra", "rm"])
    flat = x.reshape(2, -1)
    order = np.argsort(-flat, axis=1)[:, :2]
    assert out["am"].shape == (2, 2, 2, 1)
    np.testing.assert_array_equal(out["am"][:, 0, :, 0], order.astype(np.float32))
    np.testing.assert_allclose(out["am"][:, 1, :, 0], np.take_along_axis(flat, order, 1), rtol=1e-6)
    np.testing.assert_array_equal(out["am1"], x.argmax(axis=1, keepdims=True).astype(np.float32))
    np.testing.assert_allclose(out["rs"], 0.5 * (x ** 2).reshape(2, -1).sum(1), rtol=1e-5)
    np.testing.assert_allclose(out["ra"], np.abs(x).reshape(2, 3, -1).sum(2), rtol=1e-5)
    np.testing.assert_allclose(out["rm"], x.reshape(2, -1).mean(1), rtol=1e-5)


def test_slice_points_and_even_split(tmp_path):
    x = r(1, 6, 2, 2)
    prototxt = (input_header((1, 6, 2, 2))
                + layer("s", "Slice", "data", ["a", "b", "c"], "slice_param { axis: 1 slice_point: 1 slice_point: 4 }")
                + layer("e", "Slice", "data", ["d", "f"], "slice_param { axis: 3 }"))
    out = run(tmp_path, prototxt, {}, x, ["a", "b", "c", "d", "f"])
    np.testing.assert_array_equal(out["a"], x[:, :1])
    np.testing.assert_array_equal(out["b"], x[:, 1:4])
    np.testing.assert_array_equal(out["c"], x[:, 4:])
    np.testing.assert_array_equal(out["d"], x[..., :1])
    np.testing.assert_array_equal(out["f"], x[..., 1:])


def test_more_activations(tmp_path):
    x = r(1, 2, 3, 3)
    prototxt = (input_header((1, 2, 3, 3)) + layer("abs", "AbsVal", "data", "pos")
                + layer("log", "Log", "pos", "lg", "log_param { base: 2 scale: 2 shift: 1 }")
                + layer("th", "Threshold", "data", "th", "threshold_param { threshold: 0.2 }")
                + layer("sw", "Swish", "data", "sw", "swish_param { beta: 1.5 }")
                + layer("clip", "Clip", "data", "cl", "clip_param { min: -0.5 max: 0.25 }")
                + layer("r6", "ReLU6", "data", "r6")
                + layer("exp", "Exp", "data", "ex"))
    out = run(tmp_path, prototxt, {}, x * 4, ["lg", "th", "sw", "cl", "r6", "ex"])
    x = x * 4
    np.testing.assert_allclose(out["lg"], np.log2(1 + 2 * np.abs(x)), rtol=1e-5)
    np.testing.assert_array_equal(out["th"], (x > 0.2).astype(np.float32))
    np.testing.assert_allclose(out["sw"], x / (1 + np.exp(-1.5 * x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["cl"], np.clip(x, -0.5, 0.25))
    np.testing.assert_array_equal(out["r6"], np.clip(x, 0, 6))
    np.testing.assert_allclose(out["ex"], np.exp(x), rtol=1e-5)


def test_upsample_nearest(tmp_path):
    x = r(1, 2, 2, 3)
    out = run(tmp_path,
              input_header((1, 2, 2, 3)) + layer("up", "Upsample", "data", "u", "upsample_param { scale: 3 }"),
              {}, x, ["u"])
    np.testing.assert_array_equal(out["u"], x.repeat(3, axis=2).repeat(3, axis=3))


@pytest.mark.parametrize("size,kernel,pad,stride,expected", [
    (6, 3, 0, 2, 3),  # ceil: the last window overhangs by one cell
    (7, 3, 1, 2, 4),
    (5, 2, 1, 2, 3),  # ceil gives 4, but that window would start in the right padding: Caffe drops it
    (55, 3, 0, 2, 27),  # SqueezeNet's pool3 size
])
def test_caffe_pool_output(size, kernel, pad, stride, expected):
    assert caffe_pool_output(size, kernel, pad, stride, ceil=True) == expected


def test_caffe_ave_divisors_exclude_the_overhang_but_count_padding():
    assert caffe_pool_output(8, 3, 1, 2, ceil=True) == 5
    # last window [7, 10) clipped at 9
    np.testing.assert_array_equal(caffe_ave_divisors(8, 3, 1, 2, 5), [3, 3, 3, 3, 2])
    np.testing.assert_array_equal(caffe_ave_divisors(6, 3, 0, 2, 3), [3, 3, 2])


def test_caffe_reshape_rules():
    assert caffe_reshape((2, 3, 4, 5), [0, -1], 0, -1, "t") == (2, 60)
    assert caffe_reshape((2, 3, 4, 5), [2, 2], 2, 1, "t") == (2, 3, 2, 2, 5)
    assert caffe_reshape((2, 3, 4), [-1, 6], 1, -1, "t") == (2, 2, 6)
    with pytest.raises(ModelError, match="changes the count"):
        caffe_reshape((2, 3), [4], 1, -1, "t")


def test_unknown_layer_type_lists_supported_types(tmp_path):
    proto, model = write_net(tmp_path, input_header((1, 2)) + layer("odd", "MysteryOp", "data", "y"), {})
    with pytest.raises(UnsupportedLayerError, match=r"'odd'.*MysteryOp.*supported types: .*Convolution"):
        convert_net(load_net(proto, model))


def test_wrong_weight_shape_names_the_layer(tmp_path):
    proto, model = write_net(tmp_path, input_header((1, 3, 4, 4)) + layer("c1", "Convolution", "data", "y",
                             "convolution_param { num_output: 2 kernel_size: 3 }"), {"c1": [r(2, 3, 2, 2), r(2)]})
    with pytest.raises(ModelError, match=r"'c1'.*\(2, 3, 2, 2\), expected \(2, 3, 3, 3\)"):
        convert_net(load_net(proto, model))
