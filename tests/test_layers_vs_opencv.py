"""Each layer converter on a tiny synthetic net, against OpenCV's independent Caffe implementation.

Every blob of every case must agree within 1e-5 of its range (the `check` command's relative difference).
Where OpenCV departs from Caffe (it ignores LRN's k and InnerProduct's transpose, and has no Bias layer) the
settings are tested against numpy references of Caffe's formulas in test_layers_reference.py instead.
Cases include the awkward settings: grouped/dilated/asymmetric convolutions, Caffe's ceil-mode pooling with
an overhanging last window (MAX and AVE divisors), in-place chains, per-axis Scale, Eltwise coefficients.
"""

from __future__ import annotations

import numpy as np
import pytest
from netbuilder import input_header, layer, write_net

from int8tune.caffe.loader import load_net
from int8tune.check import compare_with_opencv
from int8tune.convert.converter import convert_net
from int8tune.runtime import Engine

RNG = np.random.default_rng(0)


def r(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def conv_case(body, in_shape, w_shape, bias=True, type_="Convolution"):
    weights = [r(*w_shape, scale=0.3)] + ([r(w_shape[0] if type_ == "Convolution" else w_shape[1] * _group(body))]
                                          if bias else [])
    return (input_header(in_shape) + layer("c", type_, "data", "c", body), {"c": weights}, in_shape)


def _group(body):
    import re
    m = re.search(r"group: (\d+)", body)
    return int(m.group(1)) if m else 1


CASES = {
    "conv_basic": conv_case("convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 }",
                            (2, 3, 9, 9), (4, 3, 3, 3)),
    "conv_hw": conv_case("convolution_param { num_output: 4 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 stride_h: 1 "
                         "stride_w: 2 bias_term: false }", (1, 3, 8, 7), (4, 3, 3, 1), bias=False),
    "conv_group_dilation": conv_case("convolution_param { num_output: 6 kernel_size: 3 pad: 2 dilation: 2 group: 3 }",
                                     (1, 6, 10, 10), (6, 2, 3, 3)),
    "conv_depthwise": conv_case("convolution_param { num_output: 5 kernel_size: 3 pad: 1 group: 5 }",
                                (1, 5, 6, 6), (5, 1, 3, 3)),
    "deconv": conv_case("convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 }",
                        (1, 3, 5, 5), (3, 4, 4, 4), type_="Deconvolution"),
    "deconv_group": conv_case("convolution_param { num_output: 4 kernel_size: 3 stride: 2 group: 2 bias_term: false }",
                              (1, 4, 5, 5), (4, 2, 3, 3), bias=False, type_="Deconvolution"),
    "inner_product": (input_header((2, 3, 4, 4)) + layer("fc", "InnerProduct", "data", "fc",
                      "inner_product_param { num_output: 7 }"), {"fc": [r(7, 48), r(7)]}, (2, 3, 4, 4)),
    "pool_max_ceil_overhang": (input_header((1, 2, 6, 6)) + layer("p", "Pooling", "data", "p",
                               "pooling_param { pool: MAX kernel_size: 3 stride: 2 }"), {}, (1, 2, 6, 6)),
    "pool_max_pad_ceil": (input_header((1, 2, 7, 7)) + layer("p", "Pooling", "data", "p",
                          "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }"), {}, (1, 2, 7, 7)),
    "pool_ave_pad_overhang": (input_header((1, 2, 8, 8)) + layer("p", "Pooling", "data", "p",
                              "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }"), {}, (1, 2, 8, 8)),
    "pool_ave_overhang": (input_header((1, 2, 6, 6)) + layer("p", "Pooling", "data", "p",
                          "pooling_param { pool: AVE kernel_size: 3 stride: 2 }"), {}, (1, 2, 6, 6)),
    "pool_ave_plain": (input_header((1, 2, 7, 7)) + layer("p", "Pooling", "data", "p",
                       "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }"), {}, (1, 2, 7, 7)),
    "pool_global": (input_header((2, 3, 5, 4)) + layer("p", "Pooling", "data", "p",
                    "pooling_param { pool: AVE global_pooling: true }") + layer("q", "Pooling", "data", "q",
                    "pooling_param { pool: MAX global_pooling: true }"), {}, (2, 3, 5, 4)),
    "activations": (input_header((1, 3, 4, 4))
                    + layer("relu", "ReLU", "data", "a", "relu_param { negative_slope: 0.1 }")
                    + layer("sig", "Sigmoid", "data", "b") + layer("tanh", "TanH", "data", "c")
                    + layer("elu", "ELU", "data", "d", "elu_param { alpha: 0.7 }")
                    + layer("abs", "AbsVal", "data", "e") + layer("bnll", "BNLL", "data", "f")
                    + layer("pow", "Power", "e", "g", "power_param { power: 2 scale: 0.5 shift: 1 }")
                    + layer("exp", "Exp", "data", "h", "exp_param { base: 2 scale: 0.5 shift: 0.1 }"),
                    {}, (1, 3, 4, 4)),
    "prelu": (input_header((1, 3, 4, 4)) + layer("pr", "PReLU", "data", "a")
              + layer("prs", "PReLU", "data", "b", "prelu_param { channel_shared: true }"),
              {"pr": [r(3)], "prs": [r(1)]}, (1, 3, 4, 4)),
    "bn_scale_inplace_chain": (input_header((2, 4, 3, 3)) + layer("conv", "Convolution", "data", "x",
                               "convolution_param { num_output: 4 kernel_size: 1 }")
                               + layer("bn", "BatchNorm", "x", "x", "batch_norm_param { eps: 0.001 }")
                               + layer("sc", "Scale", "x", "x", "scale_param { bias_term: true }")
                               + layer("relu", "ReLU", "x", "x"),
                               {"conv": [r(4, 4, 1, 1), r(4)],
                                "bn": [r(4), np.abs(r(4)) + 0.5, np.array([2.5], np.float32)],
                                "sc": [r(4), r(4)]}, (2, 4, 3, 3)),
    "bn_factor_zero": (input_header((1, 3, 2, 2)) + layer("bn", "BatchNorm", "data", "y"),
                       {"bn": [r(3), np.abs(r(3)) + 0.5, np.array([0.0], np.float32)]}, (1, 3, 2, 2)),
    "scale_axes": (input_header((2, 3, 4, 5)) + layer("s", "Scale", "data", "y", "scale_param { axis: 2 num_axes: 2 }"),
                   {"s": [r(4, 5)]}, (2, 3, 4, 5)),
    "eltwise": (input_header((1, 3, 4, 4)) + layer("t", "TanH", "data", "t")
                + layer("sum", "Eltwise", ["data", "t"], "s", "eltwise_param { operation: SUM coeff: 0.5 coeff: -2 }")
                + layer("prod", "Eltwise", ["data", "t", "s"], "p", "eltwise_param { operation: PROD }")
                + layer("max", "Eltwise", ["data", "t"], "m", "eltwise_param { operation: MAX }"),
                {}, (1, 3, 4, 4)),
    "concat_flatten_reshape_softmax": (input_header((2, 3, 4, 4)) + layer("t", "TanH", "data", "t")
                                       + layer("cat", "Concat", ["data", "t"], "c")
                                       + layer("perm", "Permute", "c", "pm",
                                               "permute_param { order: 0 order: 2 order: 3 order: 1 }")
                                       + layer("flat", "Flatten", "pm", "f")
                                       + layer("resh", "Reshape", "f", "rs",
                                               "reshape_param { shape { dim: 0 dim: -1 dim: 6 } }")
                                       + layer("sm", "Softmax", "rs", "sm", "softmax_param { axis: 2 }"),
                                       {}, (2, 3, 4, 4)),
    "lrn": (input_header((1, 6, 5, 5)) + layer("across", "LRN", "data", "a",
            "lrn_param { local_size: 5 alpha: 0.001 beta: 0.75 }")
            + layer("within", "LRN", "data", "w",
                    "lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 norm_region: WITHIN_CHANNEL }"),
            {}, (1, 6, 5, 5)),
    "crop": (input_header((1, 3, 8, 8)) + layer("p", "Pooling", "data", "small",
             "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
             + layer("crop", "Crop", ["data", "small"], "cr", "crop_param { axis: 2 offset: 1 offset: 3 }"),
             {}, (1, 3, 8, 8)),
    "shuffle_channel": (input_header((1, 6, 3, 3)) + layer("sh", "ShuffleChannel", "data", "s",
                        "shuffle_channel_param { group: 3 }"), {}, (1, 6, 3, 3)),
    "upsample": (input_header((1, 2, 3, 4)) + layer("up", "Upsample", "data", "u", "upsample_param { scale: 2 }"),
                 {}, (1, 2, 3, 4)),
    "interp": (input_header((1, 2, 4, 5)) + layer("ip", "Interp", "data", "i", "interp_param { height: 7 width: 9 }"),
               {}, (1, 2, 4, 5)),
    "mvn": (input_header((2, 3, 4, 4)) + layer("mvn", "MVN", "data", "m"), {}, (2, 3, 4, 4)),
    "dropout_split": (input_header((1, 3, 2, 2)) + layer("drop", "Dropout", "data", "d")
                      + layer("split", "Split", "d", ["s1", "s2"])
                      + layer("sum", "Eltwise", ["s1", "s2"], "out"), {}, (1, 3, 2, 2)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_matches_opencv(tmp_path, case):
    prototxt, weights, in_shape = CASES[case]
    proto, model = write_net(tmp_path, prototxt, weights, name=case)
    net = load_net(proto, model)
    engine = Engine(convert_net(net), expose_all=True)
    x = r(*in_shape)
    report = compare_with_opencv(engine, proto, model, [(x, ["random"])], tolerance=1e-5)
    assert report.compared, "nothing was compared"
    bad = [(d.value, d.rel, d.note) for d in report.failures]
    assert not bad, f"{case}: blobs above tolerance: {bad}"
    for d in report.compared:
        assert d.shape, f"{d.value} was never compared"


def test_batch_is_free(tmp_path):
    """The prototxt declares batch 2; the graph runs any batch and gives per-image results."""
    prototxt, weights, in_shape = CASES["concat_flatten_reshape_softmax"]
    proto, model = write_net(tmp_path, prototxt, weights)
    engine = Engine(convert_net(load_net(proto, model)))
    x = r(5, *in_shape[1:])
    full = engine.run(x)["sm"]
    single = engine.run(x[3:4])["sm"]
    assert full.shape[0] == 5
    np.testing.assert_allclose(full[3:4], single, rtol=1e-6, atol=1e-7)
